"""Patient-level site splits: disjoint, stratified, deterministic, written per site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config.experiment import load_config
from shared.data.manifest import load_manifest
from shared.errors import DatasetError, SplitError
from shared.prep.splits import make_splits
from tests.conftest import write_config

pytestmark = pytest.mark.unit


def _patients(manifest_path: Path, part: str) -> set[str]:
    return {s.patient_id for s in load_manifest(manifest_path).part(part)}


def test_split_is_patient_disjoint_and_complete(config_path: Path) -> None:
    cfg = load_config(config_path)
    paths = make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    assert sorted(paths) == ["site_A", "site_B", "site_C", "site_D", "test_nih", "test_rsna"]
    groups = {}
    for site in "ABCD":
        for part in ("train", "val"):
            groups[f"{site}/{part}"] = _patients(paths[f"site_{site}"], part)
            assert groups[f"{site}/{part}"], f"{site}/{part} is empty"
    groups["test_nih"] = _patients(paths["test_nih"], "test")
    groups["test_rsna"] = _patients(paths["test_rsna"], "test")
    names = sorted(groups)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not groups[a] & groups[b], f"patients shared by {a} and {b}"
    # sites A, B hold NIH; C, D RSNA
    assert all(p.startswith("nih:") for s in "AB" for p in groups[f"{s}/train"])
    assert all(p.startswith("rsna:") for s in "CD" for p in groups[f"{s}/train"])
    # each site manifest carries only its own site's images, plus its data root
    raw = json.loads(paths["site_C"].read_text())
    assert raw["name"] == "site_C" and raw["kind"] == "rsna" and set(raw["parts"]) == {"train", "val"}


def test_split_is_deterministic_and_seed_dependent(config_path: Path, tmp_path: Path) -> None:
    cfg = load_config(config_path)
    a = make_splits(cfg.data, cfg.seed, tmp_path / "a")
    b = make_splits(cfg.data, cfg.seed, tmp_path / "b")
    c = make_splits(cfg.data, cfg.seed + 1, tmp_path / "c")
    assert a["site_A"].read_text() == b["site_A"].read_text()
    assert a["site_A"].read_text() != c["site_A"].read_text()


def test_stratified_by_label(config_path: Path) -> None:
    cfg = load_config(config_path)
    paths = make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    for name, path in paths.items():
        for part, samples in load_manifest(path).parts.items():
            rate = sum(s.label for s in samples) / len(samples)
            assert 0.1 < rate < 0.7, f"{name}/{part} positive rate {rate:.2f}"


def test_balancing_undersamples_training_negatives(tmp_path: Path, synth_dir: Path) -> None:
    p = write_config(
        tmp_path / "c.yaml", synth_dir, tmp_path / "run", **{"data.split.balance_positive_fraction": 0.6}
    )
    cfg = load_config(p)
    paths = make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    train = load_manifest(paths["site_A"]).part("train")
    assert sum(s.label for s in train) / len(train) == pytest.approx(0.6, abs=0.08)
    test = load_manifest(paths["test_nih"]).part("test")
    assert sum(s.label for s in test) / len(test) < 0.55  # the test set keeps its prevalence


def test_empty_site_is_an_error_naming_it(tmp_path: Path, synth_dir: Path) -> None:
    p = write_config(tmp_path / "c.yaml", synth_dir, tmp_path / "run", **{"data.split.max_patients": 10})
    cfg = load_config(p)
    with pytest.raises(SplitError, match=r"site [A-D] \((nih|rsna)\) part"):
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)


def test_missing_manifest_and_malformed_manifest(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="manifest not found"):
        load_manifest(tmp_path / "site_A.json")
    (tmp_path / "bad.json").write_text('{"version": 1}')
    with pytest.raises(DatasetError, match="malformed manifest"):
        load_manifest(tmp_path / "bad.json")
