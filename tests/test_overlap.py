"""Cross-dataset duplicates: the detector against planted twins, the exact hash across bit
depths, the hash cache, the split's policy, and `data check`'s report."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config.experiment import load_config
from shared.data.manifest import load_manifest
from shared.data.records import DatasetIndex, Sample
from shared.prep import overlap
from shared.prep.leakage import find_links, keep_twins_apart
from shared.prep.nih import read_nih
from shared.prep.rsna import read_rsna
from shared.prep.sources import read_dataset
from shared.prep.splits import make_splits, split_patients
from tests.conftest import planted_pairs as planted
from tests.conftest import write_config


@pytest.mark.unit
def test_detector_recall_and_precision_on_planted_twins(planted_dir: Path, tmp_path: Path) -> None:
    truth = planted(planted_dir)
    assert len(truth) == 50
    start = time.monotonic()
    nih, rsna = read_nih(planted_dir / "nih"), read_rsna(planted_dir / "rsna")
    a = overlap.hash_dataset(nih, tmp_path / "nih.npz")
    b = overlap.hash_dataset(rsna, tmp_path / "rsna.npz")
    found = {(t.a_id, t.b_id) for t in overlap.cross_dataset_twins([a, b])}
    took = time.monotonic() - start
    tp = len(found & truth)
    recall, precision = tp / len(truth), tp / max(1, len(found))
    bits, corr = overlap.distances(a, b, slice(0, len(a.ids)))
    is_twin = np.zeros(bits.shape, dtype=bool)
    rows, cols = {k: i for i, k in enumerate(a.ids)}, {k: j for j, k in enumerate(b.ids)}
    for name, pid in truth:
        is_twin[rows[name], cols[pid]] = True
    measured = (
        f"recall {recall:.3f}, precision {precision:.3f} ({tp} of {len(truth)} planted, {len(found)} found) "
        f"in {took:.1f} s for {len(a.ids) + len(b.ids)} images; pHash bits twins <= {bits[is_twin].max()}, "
        f"non-twins >= {bits[~is_twin].min()}; 1 - rho twins <= {1 - corr[is_twin].min():.4f}, "
        f"non-twins >= {1 - corr[~is_twin].max():.4f}"
    )
    assert recall >= 0.95 and precision >= 0.95, measured
    assert took < 20, "the demo-sized twin takes well under a second here: " + measured
    # the thresholds separate the two distributions on this twin, with the margins the
    # module's docstring states
    assert 1 - corr[is_twin].min() < 0.005 < 0.015 < 1 - corr[~is_twin].max(), measured
    assert bits[is_twin].max() <= overlap.PHASH_MAX_BITS, measured
    assert (bits[~is_twin] <= overlap.PHASH_MAX_BITS).sum() > 100, "a pHash alone collides: " + measured
    print(measured)


@pytest.mark.unit
def test_sixteen_bit_and_rgba_copies_hash_exactly_equal(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for d in ("a/images", "b/images"):
        (tmp_path / d).mkdir(parents=True)
    samples_a, samples_b = [], []
    for i in range(6):
        u8 = (rng.random((96, 96)) * 255).astype(np.uint8)
        Image.fromarray(u8, "L").save(tmp_path / "a/images" / f"{i}.png")
        copy = (
            Image.fromarray(u8.astype(np.uint16) * 257) if i % 2 else Image.fromarray(u8, "L").convert("RGBA")
        )
        copy.save(tmp_path / "b/images" / f"{i}.png")
        samples_a.append(Sample(f"a{i}", f"pa{i}", f"images/{i}.png", 0))
        samples_b.append(Sample(f"b{i}", f"pb{i}", f"images/{i}.png", 0))
    assert Image.open(tmp_path / "b/images/1.png").mode == "I;16"
    a = overlap.hash_dataset(DatasetIndex("a", tmp_path / "a", tuple(samples_a)), tmp_path / "ha.npz")
    b = overlap.hash_dataset(DatasetIndex("b", tmp_path / "b", tuple(samples_b)), tmp_path / "hb.npz")
    assert list(a.exact) == list(b.exact)
    twins = overlap.find_twins(a, b)
    assert {(t.a_id, t.b_id, t.method) for t in twins} == {(f"a{i}", f"b{i}", "exact") for i in range(6)}


@pytest.mark.unit
def test_planted_sixteen_bit_nih_images_are_read_and_matched(planted_dir: Path, tmp_path: Path) -> None:
    nih = read_nih(planted_dir / "nih")
    sixteen = {s.image_id for s in nih.samples if Image.open(nih.root / s.relpath).mode == "I;16"}
    truth = planted(planted_dir)
    assert sixteen and sixteen & {n for n, _ in truth}, "the twin stores some planted NIH images as 16-bit"
    a = overlap.hash_dataset(nih, tmp_path / "nih.npz")
    b = overlap.hash_dataset(read_rsna(planted_dir / "rsna"), tmp_path / "rsna.npz")
    found = {(t.a_id, t.b_id) for t in overlap.find_twins(a, b)}
    assert {p for p in truth if p[0] in sixteen} <= found


@pytest.mark.unit
def test_planted_rsna_labels_and_boxes_follow_the_nih_image(planted_dir: Path) -> None:
    nih = {s.image_id: s.label for s in read_nih(planted_dir / "nih").samples}
    rsna = {s.image_id: s.label for s in read_rsna(planted_dir / "rsna").samples}  # checks both CSVs agree
    with (planted_dir / "rsna" / "stage_2_train_labels.csv").open() as fh:
        boxes = [r for r in csv.DictReader(fh) if r["Target"] == "1"]
    for name, pid in planted(planted_dir):
        assert rsna[pid] == nih[name], (name, pid)
        if nih[name]:
            assert any(r["patientId"] == pid and float(r["width"]) > 0 for r in boxes)


@pytest.mark.unit
def test_hashes_are_cached_by_size_and_mtime(tmp_path: Path, synth_dir: Path, caplog) -> None:
    data = tmp_path / "nih"
    shutil.copytree(synth_dir / "nih", data)
    index, cache = read_nih(data), tmp_path / "hashes" / "nih.npz"
    caplog.set_level(logging.INFO, logger="shared.prep.overlap")
    first = overlap.hash_dataset(index, cache)
    assert f"hashing {len(index.samples)} of {len(index.samples)}" in caplog.text
    caplog.clear()
    again = overlap.hash_dataset(index, cache)
    assert "hashing" not in caplog.text and list(again.exact) == list(first.exact)
    victim = data / index.samples[5].relpath
    img = np.asarray(Image.open(victim).convert("L"))
    Image.fromarray(255 - img).save(victim)
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = overlap.hash_dataset(index, cache)
    assert f"hashing 1 of {len(index.samples)}" in caplog.text
    k = changed.ids.index(index.samples[5].image_id)
    assert changed.exact[k] != first.exact[k] and changed.exact[k + 1] == first.exact[k + 1]
    cache.write_bytes(cache.read_bytes()[:300])  # a cut-off cache is rebuilt, not an error
    caplog.clear()
    assert list(overlap.hash_dataset(index, cache).exact) == list(changed.exact)
    assert f"hashing {len(index.samples)} of {len(index.samples)}" in caplog.text


def _placement(splits: Path) -> dict[str, dict[str, str]]:
    """dataset -> image id -> manifest name, over every manifest of a split."""
    where: dict[str, dict[str, str]] = {"nih": {}, "rsna": {}}
    for path in splits.glob("*_*.json"):
        if path.stem.startswith(("site_", "test_", "public_")):
            m = load_manifest(path)
            for samples in m.parts.values():
                where[m.dataset].update({s.image_id: m.name for s in samples})
    return where


def _nih_patients(root: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """NIH image -> patient, and patient -> images."""
    patient = {s.image_id: s.patient_id for s in read_nih(root / "nih").samples}
    images: dict[str, list[str]] = {}
    for image, p in patient.items():
        images.setdefault(p, []).append(image)
    return patient, images


def _side(manifest: str) -> str:
    return manifest.split("_")[0] if manifest else "unused"


@pytest.mark.unit
def test_split_never_tests_on_a_twin_of_training_data(planted_dir: Path, tmp_path: Path) -> None:
    over = {"data.split.public_fraction": 0.15}
    cfg = load_config(write_config(tmp_path / "c.yaml", planted_dir, tmp_path / "on", **over))
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    off = load_config(
        write_config(
            tmp_path / "d.yaml", planted_dir, tmp_path / "off", **over, **{"data.overlap.detect": False}
        )
    )
    make_splits(off.data, off.seed, off.splits_dir)
    on_where, off_where = _placement(cfg.splits_dir), _placement(off.splits_dir)
    nih_patient, images_of = _nih_patients(planted_dir)
    straddled = 0
    for name, pid in planted(planted_dir):
        family = images_of[nih_patient[name]]  # every image of the NIH patient
        off_sides = {_side(off_where["nih"].get(i, "")) for i in family} | {
            _side(off_where["rsna"].get(pid, ""))
        }
        straddled += "site" in off_sides and bool(off_sides & {"test", "public"})
        # the split keeps the RSNA patient and the whole NIH patient on one side
        sides = {_side(on_where["nih"].get(i, "")) for i in family} | {_side(on_where["rsna"].get(pid, ""))}
        assert len(sides - {"unused"}) == 1, (name, pid, sides)
    assert straddled >= 5, "without detection the twin puts twins across a site and a held-out set"
    report = json.loads((cfg.splits_dir / "overlap.json").read_text())
    assert report["links"]["perceptual"] >= 50 and report["dropped"] == {}
    assert sum(report["pinned"].values()) == report["linked_groups"] and set(report["pinned"]) <= {
        "test",
        "public",
        "site",
    }
    assert len(report["pairs"]) == sum(report["placement"].values())
    assert all(not {"site"} < set(k.split("+")) for k in report["placement"]), report["placement"]
    for m in ("test_nih", "test_rsna", "public_nih", "public_rsna"):  # the held-out sets keep their size
        size = {
            w: sum(1 for d in where.values() for v in d.values() if v == m)
            for w, where in (("on", on_where), ("off", off_where))
        }
        assert size["on"] >= 0.75 * size["off"], (m, size)

    def written() -> dict[str, object]:
        out: dict[str, object] = {p.name: p.read_text() for p in cfg.splits_dir.glob("*.json")}
        out["overlap.json"] = {k: v for k, v in report.items() if k != "seconds"}
        return out

    before = written()
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    report = json.loads((cfg.splits_dir / "overlap.json").read_text())
    assert written() == before  # deterministic


@pytest.mark.unit
def test_policy_drops_held_out_twins_of_training_data(planted_dir: Path, tmp_path: Path) -> None:
    """The check after the split, on a split that did not pin the linked patients."""
    cfg = load_config(
        write_config(tmp_path / "c.yaml", planted_dir, tmp_path / "r", **{"data.split.public_fraction": 0.15})
    )
    indices = {n: read_dataset(ds.kind, ds.root) for n, ds in cfg.data.datasets.items()}
    links, _ = find_links(cfg.data, indices, cfg.splits_dir)
    placed = {
        n: split_patients(indices[n].samples, ds.sites, cfg.data.split, cfg.seed, n)
        for n, ds in cfg.data.datasets.items()
    }
    before = {
        (n, g): {s.image_id for v in parts.values() for s in v}
        for n, gs in placed.items()
        for g, parts in gs.items()
    }
    report = keep_twins_apart(placed, indices, links)
    after = {
        (n, g): {s.image_id for v in parts.values() for s in v}
        for n, gs in placed.items()
        for g, parts in gs.items()
    }
    for (n, g), images in before.items():
        gone = len(images - after[n, g])
        assert gone == report["dropped"].get(f"{g}_{n}", {}).get("images", 0) and (
            gone == 0 or g in ("test", "public")
        )
    assert report["dropped"].get("test_nih") and report["dropped"].get("test_rsna"), report["dropped"]
    where = {n: {i: g for (m, g), ims in after.items() if m == n for i in ims} for n in placed}
    nih_patient, images_of = _nih_patients(planted_dir)
    for name, pid in planted(planted_dir):
        sides = {where["nih"].get(i, "unused") for i in images_of[nih_patient[name]]} | {
            where["rsna"].get(pid, "unused")
        }
        trained = sides - {"test", "public", "unused"}
        assert not (trained and sides & {"test", "public"}), (name, pid, sides)
        assert not ({"test"} <= sides and {"public"} <= sides), (name, pid, sides)


@pytest.mark.integration
def test_data_check_prints_the_overlap_summary(planted_dir: Path, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml", planted_dir, tmp_path / "run", **{"data.split.public_fraction": 0.15}
    )
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads((tmp_path / "run" / "splits" / "overlap.json").read_text())
    assert f"cross-dataset overlap: {len(report['pairs'])} twin pairs/links" in res.stdout
    assert "placed by the split: " in res.stdout and "dropped: " in res.stdout
    for manifest, c in report["dropped"].items():
        assert f"{manifest} {c['images']} image(s) of {c['patients']} patient(s)" in res.stdout
    assert str(tmp_path / "run" / "splits" / "overlap.json") in res.stdout
    rows = {line.split()[0] for line in res.stdout.splitlines() if line.startswith("public_")}
    assert rows == {"public_nih", "public_rsna"}
    assert time.monotonic() - start < 120
