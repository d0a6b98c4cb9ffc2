"""The split's other inputs and outputs: the RSNA-to-NIH mapping file, the public split for
the outsider, the split's fingerprint, and their config keys."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from shared.config.experiment import load_config
from shared.data.fingerprint import FINGERPRINT_FILE, combined_digest, manifest_digest, split_fingerprint
from shared.data.manifest import Manifest, load_manifest, public_manifest_path
from shared.errors import ConfigError, DatasetError
from shared.prep.nih import read_nih
from shared.prep.splits import make_splits
from tests.conftest import planted_pairs as planted
from tests.conftest import write_config

pytestmark = pytest.mark.unit


def _patients_by_manifest(splits: Path) -> dict[str, set[str]]:
    out = {}
    for path in sorted(splits.glob("*.json")):
        if path.stem.startswith(("site_", "test_", "public_")):
            m = load_manifest(path)
            out[m.name] = {s.patient_id for v in m.parts.values() for s in v}
    return out


def _mapping_config(tmp_path: Path, data: Path, mapping: Path, name: str = "c") -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        data,
        tmp_path / name,
        **{"data.overlap.detect": False, "data.overlap.mapping_file": str(mapping)},
    )


def test_mapping_file_links_whole_patients(planted_dir: Path, tmp_path: Path) -> None:
    # planted_twins.csv has the mapping's CSV header (patientId, Image Index); detection is
    # off, so every link comes from the file
    cfg = load_config(_mapping_config(tmp_path, planted_dir, planted_dir / "planted_twins.csv"))
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    report = json.loads((cfg.splits_dir / "overlap.json").read_text())
    truth = planted(planted_dir)
    assert report["links"] == {"mapping": len(truth)} and report["mapping_rows"] == len(truth)
    held = _patients_by_manifest(cfg.splits_dir)
    side = {p: m.split("_")[0] for m, patients in held.items() for p in patients}
    nih_patient = {s.image_id: s.patient_id for s in read_nih(planted_dir / "nih").samples}
    multi = 0
    for name, pid in truth:  # the RSNA patient and the whole NIH patient (all its images): one side
        nih = nih_patient[name]
        assert side[nih] == side[f"rsna:{pid}"], (name, pid)
        multi += sum(1 for p in nih_patient.values() if p == nih) > 1
    assert multi >= 1, "some linked NIH patient has several images"
    assert report["dropped"] == {} and sum(report["pinned"].values()) == report["linked_groups"] >= 40
    assert report["pinned"]["test"] >= 3 and report["pinned"]["site"] >= 20, report["pinned"]


def test_mapping_file_in_rsnas_json_format(planted_dir: Path, tmp_path: Path) -> None:
    truth = sorted(planted(planted_dir))
    rows = [{"subset_img_id": pid, "img_id": name, "subset_group": "train"} for name, pid in truth]
    rows.append({"subset_img_id": "not-in-the-labels-csv", "img_id": truth[0][0], "subset_group": "test"})
    mapping = tmp_path / "pneumonia-challenge-dataset-mappings_2018.json"
    mapping.write_text(json.dumps(rows, indent=1))
    cfg = load_config(_mapping_config(tmp_path, planted_dir, mapping))
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    report = json.loads((cfg.splits_dir / "overlap.json").read_text())
    assert report["links"] == {"mapping": len(truth)} and report["mapping_rows_other_rsna_images"] == 1
    # an NIH image that does not exist, and a JSON error: each names the file and its line
    rows[1]["img_id"] = "99999999_000.png"
    mapping.write_text(json.dumps(rows, indent=1))
    with pytest.raises(DatasetError, match=rf"{mapping}:7 \(entry 1\): NIH image '99999999_000.png' is not"):
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    mapping.write_text(json.dumps(rows[:2], indent=1)[:-3] + "\n  oops\n]")
    with pytest.raises(DatasetError, match=rf"{mapping}:\d+: not valid JSON"):
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)


@pytest.mark.parametrize(
    "bad_line, needle",
    [
        ("{pid}", "1 field(s), the header has 3"),
        ("{pid},,x", "needs a non-empty patientId and Image Index"),
        ("{pid},99999999_000.png,x", "NIH image '99999999_000.png' is not in the NIH dataset"),
    ],
)
def test_bad_mapping_line_is_an_error_naming_file_and_line(
    planted_dir: Path, tmp_path: Path, bad_line: str, needle: str
) -> None:
    (name, pid), *_ = sorted(planted(planted_dir))
    mapping = tmp_path / "map.csv"
    with mapping.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows(
            [["patientId", "Image Index", "note"], [pid, name, "ok"], [pid, name.removesuffix(".png"), ""]]
        )
    mapping.write_text(mapping.read_text() + bad_line.format(pid=pid) + "\n")
    cfg = load_config(_mapping_config(tmp_path, planted_dir, mapping))
    with pytest.raises(DatasetError) as e:
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    assert f"{mapping}:4: " in str(e.value) and needle in str(e.value)
    mapping.write_text("rsna,nih\na,b\n")
    with pytest.raises(DatasetError, match="no column patientId or subset_img_id"):
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    mapping.unlink()
    with pytest.raises(DatasetError, match="mapping file not found"):
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)


def test_public_split_is_disjoint_stratified_and_twin_free(planted_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(
        write_config(tmp_path / "c.yaml", planted_dir, tmp_path / "r", **{"data.split.public_fraction": 0.2})
    )
    paths = make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    assert {"public_nih", "public_rsna"} <= set(paths)
    held = _patients_by_manifest(cfg.splits_dir)
    names = sorted(held)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not held[a] & held[b], f"patients shared by {a} and {b}"
    for ds in ("nih", "rsna"):
        m = load_manifest(public_manifest_path(cfg.splits_dir, ds))
        assert set(m.parts) == {"train", "val"} and m.kind == ds
        for part in m.parts.values():
            assert {s.label for s in part} == {0, 1}
        n_pub = len({s.patient_id for v in m.parts.values() for s in v})
        n_all = len({p for v in held.values() for p in v if p.startswith(f"{ds}:")})
        assert 0.1 < n_pub / n_all < 0.25
    # no twin of a site's image in the public split (nor of a test image)
    nih_patient = {s.image_id: s.patient_id for s in read_nih(planted_dir / "nih").samples}
    sites = set().union(*(v for k, v in held.items() if k.startswith("site_")))
    for name, pid in planted(planted_dir):
        pair = {nih_patient[name], f"rsna:{pid}"}
        if pair & sites:
            assert not pair & (held["public_nih"] | held["public_rsna"])
    # without a public fraction the public manifests of an earlier split are removed
    plain = load_config(write_config(tmp_path / "d.yaml", planted_dir, tmp_path / "r"))
    assert not {k for k in make_splits(plain.data, plain.seed, plain.splits_dir) if k.startswith("public_")}
    assert not list(cfg.splits_dir.glob("public_*.json"))


def test_fingerprint_follows_samples_not_data_root(config_path: Path, tmp_path: Path) -> None:
    cfg = load_config(config_path)
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    recorded = json.loads((cfg.splits_dir / FINGERPRINT_FILE).read_text())
    digests = split_fingerprint(cfg.splits_dir)
    assert recorded == {"manifests": digests, "combined": combined_digest(digests)}
    assert sorted(digests) == ["site_A", "site_B", "site_C", "site_D", "test_nih", "test_rsna"]
    site_a = load_manifest(cfg.splits_dir / "site_A.json")
    moved_root = Manifest(site_a.name, site_a.dataset, site_a.kind, tmp_path / "elsewhere", site_a.parts)
    assert manifest_digest(moved_root) == digests["site_A"]
    moved_root.save(cfg.splits_dir / "site_A.json")
    assert split_fingerprint(cfg.splits_dir) == digests
    # one sample moves from train to val: that manifest's digest and the combined one change
    train, val = site_a.parts["train"], site_a.parts["val"]
    moved = Manifest(
        site_a.name,
        site_a.dataset,
        site_a.kind,
        site_a.data_root,
        {"train": train[1:], "val": (train[0], *val)},
    )
    moved.save(cfg.splits_dir / "site_A.json")
    after = split_fingerprint(cfg.splits_dir)
    assert after["site_A"] != digests["site_A"] and combined_digest(after) != combined_digest(digests)
    assert {k: v for k, v in after.items() if k != "site_A"} == {
        k: v for k, v in digests.items() if k != "site_A"
    }
    flipped = dataclasses.replace(train[0], label=1 - train[0].label)
    relabelled = dataclasses.replace(site_a, parts={"train": (flipped, *train[1:]), "val": val})
    assert manifest_digest(relabelled) != digests["site_A"]


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("data.split.public_fraction", 0.5, "data.split.public_fraction: must be in [0, 0.5)"),
        ("data.split.public_fraction", -0.1, "public_fraction"),
        ("data.split.public_fraction", "some", "'data.split.public_fraction' must be a number"),
        ("data.overlap.mapping_file", 3, "'data.overlap.mapping_file' must be a path string"),
        ("data.overlap.detect", "yes", "'data.overlap.detect' must be true or false"),
        ("data.overlap.threshold", 1, "unknown key 'data.overlap.threshold'"),
    ],
)
def test_config_keys_are_validated(tmp_path: Path, key: str, value: object, needle: str) -> None:
    path = write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "r", **{key: value})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert needle in str(e.value) and str(path) in str(e.value)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["split"].update(test_fraction=0.5, public_fraction=0.45)
    raw["data"]["overlap"] = {}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="leaving 10% to the sites"):
        load_config(path)
