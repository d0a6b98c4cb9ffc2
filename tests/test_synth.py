"""The synthetic twin: real layouts, and a pneumonia signal that a small model can learn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.config.experiment import load_config
from shared.config.training import OptimizerConfig
from shared.data.cache import load_cached
from shared.data.manifest import load_manifest
from shared.data.torchdata import make_loader
from shared.ml.models import build_model
from shared.ml.training import evaluate, make_optimizer, train_epochs
from shared.prep.splits import make_splits
from shared.prep.synth.twin import synthesize
from tests.conftest import write_config


@pytest.mark.unit
def test_small_model_learns_the_synthetic_signal(tmp_path: Path) -> None:
    synthesize(tmp_path / "data", patients=400, size=128, seed=1)
    cfg = load_config(
        write_config(tmp_path / "c.yaml", tmp_path / "data", tmp_path / "run", **{"data.image_size": 64})
    )
    paths = make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    train = load_cached(load_manifest(paths["site_A"]), "train", 64, cfg.cache_dir)
    test = load_cached(load_manifest(paths["test_nih"]), "test", 64, cfg.cache_dir)
    torch.manual_seed(0)
    model = build_model("resnet18", 64, 1)
    opt = make_optimizer(model, OptimizerConfig(lr=1e-3))
    device = torch.device("cpu")
    for epoch in range(6):
        train_epochs(model, make_loader(train, 1, 16, True, 0, epoch), opt, 1, device)
    result = evaluate(model, make_loader(test, 1, 64, False, 0, 0), device)
    assert result.auc > 0.8, result


@pytest.mark.integration
def test_cli_synth_then_check_shows_four_sites_and_two_test_sets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run = [sys.executable, "-m", "cli.main"]
    subprocess.run(
        [*run, "data", "synth", "--out", str(data), "--patients", "40", "--size", "96", "--seed", "5"],
        check=True,
        capture_output=True,
    )
    assert (data / "nih" / "Data_Entry_2017_v2020.csv").exists()
    assert list((data / "rsna" / "stage_2_train_images").glob("*.dcm"))
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run")
    out = subprocess.run(
        [*run, "data", "check", "--config", str(cfg)], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith(("site_", "test_"))]
    shards = {r[0] for r in rows}
    assert shards == {"site_A", "site_B", "site_C", "site_D", "test_nih", "test_rsna"}
    for r in rows:
        patients, images, positives, unreadable = map(int, r[2:6])
        assert patients > 0 and images >= patients and 0 < positives < images and unreadable == 0


@pytest.mark.integration
def test_cli_check_reports_unreadable_and_fails(tmp_path: Path, synth_dir: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    victim = sorted((data / "nih" / "images").iterdir())[3]
    victim.write_bytes(b"not a png")
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run")
    res = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert "1 unreadable, listed in" in res.stdout
    assert "skip_unreadable" in res.stderr
    cfg = write_config(tmp_path / "c2.yaml", data, tmp_path / "run", **{"data.skip_unreadable": True})
    res = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    m = load_manifest(tmp_path / "run" / "splits" / "site_A.json")
    assert m.parts


@pytest.mark.integration
def test_cli_bad_config_key_exits_nonzero_naming_key(tmp_path: Path, synth_dir: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", synth_dir, tmp_path / "run", **{"training.epochz": 3})
    res = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert "training.epochz" in res.stderr and str(cfg) in res.stderr
