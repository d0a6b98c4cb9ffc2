"""configs/demo-multi.yaml end to end at tiny size: the twins of CheXpert, MIMIC-CXR-JPG,
PadChest and VinDr-CXR written in their layouts, one per site, a real Flower federation
(one architecture, two rounds, fine-tuning), the FGSM transfer attack; the models learn and
every transfer cell is reported; then the attack suite (PGD, the sites' insider ensembles)
on the same store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.config.experiment import load_config
from shared.store.folder import CheckpointStore

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
MODELS = {"resnet18-global", *(f"resnet18-local-{s}" for s in "ABCD")}


def tiny_multi_config(tmp: Path) -> Path:
    """configs/demo-multi.yaml with its datasets and sites as shipped, shrunk: 100 patients per
    dataset at 64 px, ResNet18, two rounds of 3 local epochs (one round of 5 left the global
    model at validation AUC 0.61: four sites' models trained apart from a random start
    average poorly)."""
    raw = yaml.safe_load((REPO / "configs" / "demo-multi.yaml").read_text())
    raw["output_dir"] = str(tmp / "run")
    raw["data"].update(image_size=64, workers=0)
    raw["data"]["split"].update(public_fraction=0.0, val_fraction=0.25)
    raw["federation"].update(architectures=["resnet18"], rounds=2, round_timeout_s=600)
    raw["training"].update(threads=1, local_epochs=3)
    raw["training"].pop("per_arch")
    raw["synth"].update(patients=100, size=64)
    path = tmp / "demo-multi.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.xdist_group("demo-multi")  # a unit of work of its own (tests/conftest.py)
def test_demo_multi_four_datasets_learn_and_report_transfer(tmp_path: Path) -> None:
    config = tiny_multi_config(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = load_config(config)
    kinds = {ds.kind: ds.sites for ds in cfg.data.datasets.values()}
    assert kinds == {"chexpert": ("A",), "mimic": ("B",), "padchest": ("C",), "vindr": ("D",)}
    assert all((cfg.output_dir / "data" / k).is_dir() for k in kinds)
    entries = {e.name: e for e in CheckpointStore(cfg.store_dir).models()}
    assert set(entries) == MODELS
    auc = {name: e.metrics["val-auc"] for name, e in entries.items()}
    print("validation AUC:", {n: round(a, 3) for n, a in sorted(auc.items())})
    assert auc["resnet18-global"] >= 0.65, auc  # learnt across four different layouts
    results = json.loads((cfg.attack_dir / "results.json").read_text())
    cells = results["cells"]
    print("transfer cells:", [(c["source"], c["target"], c["transferability"]) for c in cells])
    assert {(c["source"], c["target"]) for c in cells} == {(s, t) for s in MODELS for t in MODELS}
    assert sum(c["n_correct_before"] for c in cells) > 0
    report = (cfg.attack_dir / "report.md").read_text()
    assert all(f"test_{k}=" in report for k in kinds)  # attacked on every dataset's test set

    # the suite on the same store: an iterative attack from the site insiders' ensembles
    args = ["--config", str(config), "--out", str(tmp_path / "s"), "--attack", "pgd"]
    suite = subprocess.run(
        [sys.executable, "-m", "cli.main", "attack", *args, "--threat", "insider", "--eps", "4/255"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-3000:]
    md = (tmp_path / "s" / "suite" / "suite.md").read_text()
    assert "[pgd](pgd-insider/results.json) | insider |" in md
    insider = json.loads((tmp_path / "s" / "suite" / "pgd-insider" / "results.json").read_text())
    assert sorted(insider["sources"]) == [f"insider-{s}" for s in "ABCD"]
    assert {c["target"] for c in insider["cells"]} == MODELS
