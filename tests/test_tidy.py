"""The study's tidy tables on a tiny attack folder (the one tests/test_report_records.py
writes): one row per cell and per model, every count, rate and interval as results.json
holds it, undefined figures empty, and the study's summary made from the same records."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pytest

from attack.reports.readback import read_variant
from attack.reports.tidy import ALL_TEST_SETS, CLEAN_COLUMNS, TRANSFER_COLUMNS, write_tidy
from attack.reports.variants import summarize
from attack.stats import wilson
from shared.config.study import StudyConfig, Variant
from tests.test_report_records import CLEAN, INFO, NAMES, _write_attack

pytestmark = pytest.mark.unit

STUDY = StudyConfig((Variant("baseline"), Variant("fedbn")), ("fgsm", "pgd"), ("member",), "pgd")


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def tidy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tidy")
    records = {}
    for seed, name in ((7, "baseline"), (7, "fedbn"), (8, "baseline")):
        _write_attack(root / f"{seed}-{name}", STUDY.attacks)
        records[seed, name] = read_variant(root / f"{seed}-{name}", STUDY.attacks, STUDY.threats)
    write_tidy(root, records)
    return root


def test_one_transfer_row_per_seed_variant_attack_threat_source_and_target(tidy: Path) -> None:
    columns, rows = _rows(tidy / "transfer.csv")
    assert columns == list(TRANSFER_COLUMNS)
    keys = [
        (r["seed"], r["variant"], r["attack"], r["eps"], r["threat"], r["source"], r["target"]) for r in rows
    ]
    assert len(keys) == len(set(keys)) == 3 * 2 * len(NAMES) ** 2
    assert {(r["seed"], r["variant"]) for r in rows} == {("7", "baseline"), ("7", "fedbn"), ("8", "baseline")}
    # the writer's cell 5: resnet18-local-A -> resnet18-local-B, 5 of 17, control 2
    row = next(
        r
        for r in rows
        if (r["seed"], r["variant"], r["attack"], r["source"], r["target"])
        == ("8", "baseline", "pgd", "resnet18-local-A", "resnet18-local-B")
    )
    hand = wilson(5, 17)
    assert (row["n_correct_before"], row["n_misclassified_after"], row["n_control_misclassified"]) == (
        "17",
        "5",
        "2",
    )
    assert float(row["rate"]) == pytest.approx(5 / 17, abs=1e-6)
    assert float(row["rate_low"]) == pytest.approx(hand.low, abs=1e-6)
    assert float(row["rate_high"]) == pytest.approx(hand.high, abs=1e-6)
    assert float(row["control_rate"]) == pytest.approx(2 / 17, abs=1e-6)
    assert (row["eps"], row["eps_255"], row["threat"]) == ("0.02", "5.1", "member")
    assert (row["source_arch"], row["source_kind"], row["target_kind"], row["target_site"]) == (
        "resnet18",
        "local",
        "local",
        "B",
    )
    assert (row["white_box"], row["usable"]) == ("false", "true")


def test_undefined_figures_are_empty_cells(tidy: Path) -> None:
    _, rows = _rows(tidy / "transfer.csv")
    fgsm = [r for r in rows if (r["seed"], r["variant"], r["attack"]) == ("7", "fedbn", "fgsm")]
    empty_row = [r for r in fgsm if r["source"] == "resnet18-local-B"]  # classified none: n = 0
    assert {(r["n_correct_before"], r["rate"], r["rate_low"], r["usable"]) for r in empty_row} == {
        ("0", "", "", "false")
    }
    no_control = fgsm[4]  # the writer's cell 4 counted no control
    assert (no_control["n_control_misclassified"], no_control["control_rate"]) == ("", "")
    assert no_control["rate"] != ""


def test_one_clean_row_per_seed_variant_model_and_test_set(tidy: Path) -> None:
    columns, rows = _rows(tidy / "clean.csv")
    assert columns == list(CLEAN_COLUMNS)
    assert len(rows) == 3 * len(NAMES)
    for row in rows:
        c = CLEAN[row["model"]]
        assert row["test_set"] == ALL_TEST_SETS
        assert (row["arch"], row["kind"], row["site"]) == (
            INFO[row["model"]].arch,
            INFO[row["model"]].kind,
            INFO[row["model"]].site or "",
        )
        assert (int(row["n_positive"]), int(row["n_negative"])) == (c.n_positive, c.n_negative)
        assert float(row["auc"]) == pytest.approx(c.auc.value, abs=1e-6)
        assert float(row["auc_low"]) == pytest.approx(c.auc.low, abs=1e-6)
        assert float(row["sensitivity"]) == pytest.approx(7 / 11, abs=1e-6)
        assert row["specificity"] == row["specificity_low"] == ""  # no negatives: undefined


def test_the_report_is_made_from_the_rows_records(tidy: Path) -> None:
    """study.json's 'onto the architecture' figure is the mean of the tidy table's usable
    rows' rates: the report and the table come from one set of records."""
    records = read_variant(tidy / "7-baseline", STUDY.attacks, STUDY.threats)
    summary = summarize(records, STUDY, 0.02, 7)
    _, rows = _rows(tidy / "transfer.csv")
    for attack in STUDY.attacks:
        mine = [
            float(r["rate"])
            for r in rows
            if (r["seed"], r["variant"], r["attack"]) == ("7", "baseline", attack) and r["usable"] == "true"
        ]
        onto = summary.architectures["resnet18"].transfer[f"{attack}/member"].onto_architecture
        assert onto.n == len(mine)
        assert onto.mean.value is not None and math.isclose(
            onto.mean.value, statistics.fmean(mine), abs_tol=2e-6
        )
