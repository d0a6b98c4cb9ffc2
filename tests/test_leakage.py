"""The overlap detector checked against a reference: suspect linked groups (false perceptual
matches chaining patients) pruned and reported; with the RSNA-to-NIH mapping file, the
detector's pairs scored against it and the pairs it contradicts not used."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from shared.config.experiment import load_config
from shared.data.records import DatasetIndex, Sample
from shared.prep.leakage import Link, agreement, linked_groups, patients_of, summary, vet_groups
from shared.prep.splits import make_splits
from tests.conftest import planted_pairs, write_config

pytestmark = pytest.mark.unit


def _index(name: str, images: dict[str, str]) -> DatasetIndex:
    """image id -> patient id, no files (the links name the images)."""
    return DatasetIndex(name, Path("/nowhere"), tuple(Sample(i, p, f"{i}.png", 0) for i, p in images.items()))


def _p(nih: str, rsna: str, corr: float, bits: int = 3) -> Link:
    return Link("nih", nih, "rsna", rsna, "perceptual", {"bits": bits, "corr": corr})


def _exact(nih: str, rsna: str) -> Link:
    return Link("nih", nih, "rsna", rsna, "exact", {"bits": 0, "corr": 1.0})


INDICES = {
    "nih": _index("nih", {"n1": "P1", "n2": "P2", "n3": "P3", "n4": "P4"}),
    "rsna": _index("rsna", {"r1": "r1", "r2": "r2", "r3": "r3", "r4": "r4"}),
}


def _sizes(links: list[Link]) -> list[int]:
    return sorted(len(g) for g in linked_groups(patients_of(INDICES, links), links))


def test_a_chain_of_perceptual_matches_is_suspect_and_cut_at_its_weak_links(caplog) -> None:
    """n1-r1, n2-r2, n3-r3 are each other's best matches (copies); r1-n2 and r2-n3 are
    weaker look-alikes that chain three twin pairs into one group of six patients."""
    true = [_p("n1", "r1", 0.999), _p("n2", "r2", 0.998), _p("n3", "r3", 0.997)]
    false = [_p("n2", "r1", 0.990), _p("n3", "r2", 0.991)]
    links = true + false
    assert _sizes(links) == [6]
    with caplog.at_level(logging.WARNING, logger="shared.prep.leakage"):
        kept, suspects = vet_groups(links, patients_of(INDICES, links), max_patients=4)
    assert kept == true and _sizes(kept) == [2, 2, 2]
    assert len(suspects) == 1
    s = suspects[0]
    assert s["patients"] == 6 and s["datasets"] == {"nih": 3, "rsna": 3}
    assert s["links"] == {"perceptual": 5} and s["perceptual_links_dropped"] == 2
    assert s["groups_after"] == [2, 2, 2]
    assert [(d["nih"], d["rsna"]) for d in s["dropped"]] == [("n3", "r2"), ("n2", "r1")]  # strongest first
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "a linked group of 6 patients (nih 3, rsna 3) is suspect" in warning
    assert "max_group_patients is 4" in warning and "2 of its perceptual links" in warning


def test_a_group_within_the_limit_is_left_alone() -> None:
    links = [_p("n1", "r1", 0.999), _p("n2", "r1", 0.990)]  # 3 patients: a look-alike, not chained far
    kept, suspects = vet_groups(links, patients_of(INDICES, links), max_patients=4)
    assert kept == links and suspects == []
    kept, suspects = vet_groups(links, patients_of(INDICES, links), max_patients=2)
    assert kept == links[:1] and suspects[0]["patients"] == 3


def test_exact_links_are_kept_and_what_they_hold_together_stays_flagged() -> None:
    """Exact-hash links are never dropped: a group they chain stays one group, reported."""
    links = [
        _exact("n1", "r1"),
        _exact("n2", "r1"),
        _exact("n2", "r2"),
        _exact("n3", "r2"),
        _p("n4", "r2", 0.99),
    ]
    kept, suspects = vet_groups(links, patients_of(INDICES, links), max_patients=4)
    assert kept == links  # the one perceptual link is r2's and n4's best: mutual
    assert suspects[0]["patients"] == 6 and suspects[0]["groups_after"] == [6]
    assert suspects[0]["perceptual_links_dropped"] == 0


def test_agreement_with_the_mapping_pair_by_pair() -> None:
    nih = _index("nih", {"n1": "P1", "n1b": "P1", "n2": "P2", "n3": "P3", "n4": "P4"})
    rsna = _index("rsna", {"r1": "r1", "r2": "r2", "r3": "r3", "r4": "r4"})
    indices = {"nih": nih, "rsna": rsna}
    mapped = [
        Link("nih", n, "rsna", r, "mapping", {"line": str(i)})
        for i, (n, r) in enumerate([("n1", "r1"), ("n2", "r2"), ("n3", "r3")], start=2)
    ]
    detected = [
        _p("n1", "r1", 0.999),  # both
        _p("n1b", "r1", 0.99),  # detector only: another image of the mapped patient P1
        _p("n3", "r2", 0.99),  # detector only: r2 is n2 (P2), not P3: contradicted
        _p("n4", "r4", 0.99),  # detector only: r4 is not in the mapping
    ]  # n2-r2 and n3-r3: mapping only (missed)
    kept, report = agreement(detected, mapped, indices)
    assert [(k.a_id, k.b_id) for k in kept] == [("n1", "r1"), ("n1b", "r1"), ("n4", "r4")]
    assert report["pairs_both"] == 1 and report["pairs_mapping_only"] == 2
    assert report["pairs_detector_only"] == 3
    assert report["detector_only_same_nih_patient"] == 1 and report["detector_only_contradicted"] == 1
    assert report["recall"] == round(1 / 3, 4) and report["precision"] == 0.25
    assert report["mapping_only"] == [{"nih": "n2", "rsna": "r2"}, {"nih": "n3", "rsna": "r3"}]
    assert report["contradicted_not_used"] == [{"nih": "n3", "rsna": "r2"}]


def test_split_reports_the_detector_against_the_mapping_file(planted_dir: Path, tmp_path: Path) -> None:
    """The planted twin's planted_twins.csv is a mapping file (the ground truth): every
    planted pair is found by the detector too, and overlap.json and the summary say so."""
    truth = planted_pairs(planted_dir)
    mapping = tmp_path / "mapping.csv"
    with mapping.open("w", newline="") as fh:  # one planted pair left out: the detector finds it alone
        w = csv.writer(fh)
        w.writerow(["patientId", "Image Index"])
        w.writerows([(r, n) for n, r in sorted(truth)[1:]])
    over = {"data.overlap.mapping_file": str(mapping)}
    cfg = load_config(write_config(tmp_path / "c.yaml", planted_dir, tmp_path / "run", **over))
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    report = json.loads((cfg.splits_dir / "overlap.json").read_text())
    agree = report["mapping_agreement"]
    assert agree["pairs_both"] == len(truth) - 1 and agree["pairs_mapping_only"] == 0
    assert agree["recall"] == 1.0 and agree["detector_only_contradicted"] == 0
    left_out = sorted(truth)[0]
    assert {"nih": left_out[0], "rsna": left_out[1]} in agree["detector_only"]
    assert report["suspect_groups"] == [] and report["max_group_patients"] == 4
    text = summary(report)
    assert (
        f"detector vs the mapping file: {len(truth) - 1} pairs found by both, 0 only in the mapping" in text
    )
