"""The pooled baseline in the reports: its cells are measured like every other, each pooled
model has its own rows (study table, cell view, "pooled" beside global and local, its
summary columns, the tidy tables' kind), and every figure of the federation's models is
the one the same measurement gives without the pooled models."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from attack.measure.clean import CleanPerformance
from attack.measure.core import Cell, Measurement, Settings, SuiteRequest
from attack.reports.provenance import provenance
from attack.reports.readback import read_variant
from attack.reports.records import Ensemble, RunMeta, SuiteMeta, SuiteRow
from attack.reports.replicates import figures
from attack.reports.results import study_json, suite_json
from attack.reports.study import report_md
from attack.reports.suite import suite_md
from attack.reports.tables import (
    Info,
    by_target_group,
    cell_view,
    global_vs_local,
    model_differences,
    over_control,
    rate,
    source_differences,
    study_table,
)
from attack.reports.tidy import write_tidy
from attack.reports.variants import study_md, summarize
from attack.stats import auc_delong, wilson
from shared.config.study import StudyConfig, Variant

pytestmark = pytest.mark.unit

FEDERATION = [
    ("resnet18-global", "resnet18", "global", None),
    ("resnet18-local-A", "resnet18", "local", "A"),
    ("resnet18-local-B", "resnet18", "local", "B"),
    ("densenet121-global", "densenet121", "global", None),
    ("densenet121-local-A", "densenet121", "local", "A"),
    ("densenet121-local-B", "densenet121", "local", "B"),
]
POOLED = [
    ("resnet18-pooled", "resnet18", "pooled", None),
    ("densenet121-pooled", "densenet121", "pooled", None),
]
INFO = {n: Info(n, a, k, s) for n, a, k, s in FEDERATION + POOLED}
STUDY = StudyConfig((Variant("baseline"),), ("fgsm",), ("member",), "fgsm")


def measurement(names: list[str], attack: str = "fgsm") -> Measurement:
    """The member threat over `names`; every cell's counts depend on its (source, target)
    only, so a measurement over fewer models holds the same cells for them."""
    m = Measurement(attack, 0.02, list(names), list(names))
    m.attacked = {n: [f"test_nih/{i}" for i in range(40)] for n in names}
    m.code_digest = {n: "0" * 64 for n in names}
    every = list(INFO)
    for s in names:
        for t in names:
            k = 7 * every.index(s) + 3 * every.index(t)
            m.cells.append(Cell(s, t, 20 + k % 11, (5 * k) % 17, k % 4, s == t))
    m.clean_correct = {n: 30 for n in names}
    return m


FULL = measurement(list(INFO))
FED = measurement([n for n, *_ in FEDERATION])


def test_the_federations_figures_do_not_move_when_pooled_models_are_measured() -> None:
    table, fed_table = study_table(FULL, INFO, 0), study_table(FED, INFO, 0)
    assert list(table) == ["densenet121", "resnet18", "densenet121 (pooled)", "resnet18 (pooled)"]
    for arch in ("densenet121", "resnet18"):
        assert table[arch] == fed_table[arch]
    views, fed_views = cell_view(FULL, INFO, 0), cell_view(FED, INFO, 0)
    assert {a: views[a] for a in fed_views} == fed_views
    groups, test = global_vs_local(FULL, INFO, 0)
    fed_groups, fed_test = global_vs_local(FED, INFO, 0)
    assert set(groups) == {"global", "local", "pooled"} and set(fed_groups) == {"global", "local"}
    assert (groups["global"], groups["local"], test) == (fed_groups["global"], fed_groups["local"], fed_test)
    assert source_differences(FULL, INFO) == source_differences(FED, INFO)
    assert model_differences(FULL, INFO) == model_differences(FED, INFO)
    targets, fed_targets = by_target_group(FULL, INFO, 0), by_target_group(FED, INFO, 0)
    assert {k: targets[k] for k in fed_targets} == fed_targets
    assert set(targets) - set(fed_targets) == {"densenet121 (pooled)", "resnet18 (pooled)", "pooled targets"}


def _mean_rate(cells: list[Cell]) -> float:
    return statistics.fmean(rate(c).value for c in cells)


def test_a_pooled_row_counts_its_cells_with_the_federations_models_only() -> None:
    """By hand: as a source, its mean over the federation's targets; as a target, the mean
    over the federation's sources; pooled-to-pooled cells count nowhere."""
    fed = {n for n, *_ in FEDERATION}
    row = study_table(FULL, INFO, 0)["resnet18 (pooled)"]
    out = [c for c in FULL.cells if c.source == "resnet18-pooled" and c.target in fed]
    onto = [c for c in FULL.cells if c.target == "resnet18-pooled" and c.source in fed]
    assert len(out) == len(onto) == 6
    assert row["as_source"].mean.value == pytest.approx(_mean_rate(out))
    assert row["as_target"].mean.value == pytest.approx(_mean_rate(onto))
    same = [c for c in out if INFO[c.target].arch == "resnet18"]
    assert row["as_source_same_arch"].mean.value == pytest.approx(_mean_rate(same))
    assert row["white_box"].n == 1
    groups, _ = global_vs_local(FULL, INFO, 0)
    onto_pooled = [c for c in FULL.cells if INFO[c.target].kind == "pooled" and c.source in fed]
    assert groups["pooled"].n == len(onto_pooled) == 12
    assert groups["pooled"].mean.value == pytest.approx(_mean_rate(onto_pooled))


def _clean(seed: int) -> CleanPerformance:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    return CleanPerformance(
        int(labels.sum()), int((1 - labels).sum()), auc_delong(rng.normal(size=40) + labels, labels),
        wilson(7, 11), wilson(30, 31),
    )  # fmt: skip


@pytest.fixture(scope="module")
def attack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An attack folder as `fedattack attack --suite` leaves it for a store with pooled models."""
    folder = tmp_path_factory.mktemp("pooled-attack")
    prov = provenance(Settings(4, torch.device("cpu"), torch.float32, 0, 0.5), "fingerprint")
    clean = {n: _clean(k) for k, n in enumerate(INFO)}
    hashes = {n: f"{k:064x}" for k, n in enumerate(INFO)}
    meta = RunMeta("fgsm", 0.02, "member", 0, "/store", 40, "40 from test_nih", 64, (), prov)
    (folder / "results.json").write_text(json.dumps(study_json(FULL, INFO, clean, hashes, meta, 0)))
    row = SuiteRow("member", 0.02, FULL, by_target_group(FULL, INFO, 0), over_control(FULL, 0), "x")
    path = folder / "suite" / "fgsm-member" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(suite_json(SuiteMeta(0, 40, prov, Ensemble("scaled", {})), row, INFO, 0)))
    (folder / "report.md").write_text(report_md(FULL, INFO, clean, meta, 0))
    return folder


def test_the_study_report_shows_pooled_beside_global_and_local(attack_dir: Path) -> None:
    report = (attack_dir / "report.md").read_text()
    section4 = report.split("## 4.")[1]
    assert "| global |" in section4 and "| local |" in section4
    assert "| pooled (central training, not in the test) |" in section4
    assert "| resnet18 (pooled) |" in report.split("## 2.")[1].split("## 3.")[0]


def test_the_summary_and_the_tidy_tables_carry_pooled_rows(attack_dir: Path, tmp_path: Path) -> None:
    records = read_variant(attack_dir, STUDY.attacks, STUDY.threats)
    summary = summarize(records, STUDY, 0.02, 0)
    r = summary.architectures["resnet18"]
    assert r.clean_auc_pooled is not None and r.robust_accuracy_pooled is not None
    white = next(c for c in FULL.cells if c.white_box and c.source == "resnet18-pooled")
    assert r.robust_accuracy_pooled.value == pytest.approx(1 - rate(white).value)
    member = r.transfer_pooled["fgsm/member"]
    assert member.as_target is not None
    expected = study_table(FULL, INFO, 0)["resnet18 (pooled)"]["as_target"].mean.value
    assert member.as_target.mean.value == pytest.approx(expected, abs=1e-6)
    assert summary.global_vs_local["fgsm/member"].as_target.keys() == {"global", "local", "pooled"}
    md = study_md({"baseline": summary}, STUDY, 0.02)
    assert "| clean AUC pooled | robust acc. pooled |" in md
    assert "| baseline | resnet18 (pooled) |" in md
    assert "clean_auc_pooled" in json.dumps(summary.to_json())
    per_seed = figures(summary, "resnet18", STUDY)  # what the report over seeds averages
    assert per_seed["clean AUC, pooled baseline"] == r.clean_auc_pooled.value
    assert per_seed["fgsm/member: pooled baseline transfer as target"] == member.as_target.mean.value
    write_tidy(tmp_path, {(7, "baseline"): records})
    with (tmp_path / "clean.csv").open() as f:
        clean = list(csv.DictReader(f))
    assert {(r["model"], r["kind"]) for r in clean} >= {
        ("resnet18-pooled", "pooled"),
        ("densenet121-pooled", "pooled"),
    }
    with (tmp_path / "transfer.csv").open() as f:
        transfer = list(csv.DictReader(f))
    pooled_rows = [r for r in transfer if "pooled" in (r["source_kind"], r["target_kind"])]
    assert len(pooled_rows) == len(INFO) ** 2 - len(FEDERATION) ** 2


def test_without_pooled_models_the_reports_are_as_before() -> None:
    info = {n: i for n, i in INFO.items() if i.kind != "pooled"}
    groups, _ = global_vs_local(FED, info, 0)
    assert list(groups) == ["global", "local"]
    assert "pooled targets" not in by_target_group(FED, info, 0)
    assert not any("pooled" in k for k in study_table(FED, info, 0))


def test_the_suite_report_has_a_pooled_targets_column() -> None:
    prov = provenance(Settings(4, torch.device("cpu"), torch.float32, 0, 0.5), "fingerprint")
    meta = SuiteMeta(0, 40, prov, Ensemble("scaled", {}))
    req = SuiteRequest(("fgsm",), ("member",), (), (), Path("outsiders"))
    headers = []
    for m, info in ((FULL, INFO), (FED, {n: i for n, i in INFO.items() if i.kind != "pooled"})):
        row = SuiteRow("member", 0.02, m, by_target_group(m, info, 0), over_control(m, 0), "fgsm-member")
        md = suite_md({("fgsm", "member", 0.02): row}, req, 0.02, meta)
        headers.append(next(ln for ln in md.splitlines() if ln.startswith("| attack | threat |")))
    pooled = "| resnet18 (pooled) | global targets | local targets | pooled targets | all targets |"
    assert headers[0].endswith(pooled)
    assert headers[1].endswith("| resnet18 | global targets | local targets | all targets |")


def test_a_suite_of_the_sweep_alone_reports_only_its_budgets() -> None:
    """attack.suite.attacks empty, the sweep at 4/255 and 8/255 (a ranking at chosen budgets):
    suite.md gives the sweep and a ranking per budget, and nothing at the study's eps, which
    no attack ran at."""
    prov = provenance(Settings(4, torch.device("cpu"), torch.float32, 0, 0.5), "fingerprint")
    meta = SuiteMeta(0, 40, prov, Ensemble("scaled", {}))
    budgets = (4 / 255, 8 / 255)
    req = SuiteRequest((), ("member",), budgets, ("fgsm", "pgd"), Path("outsiders"))
    info = {n: i for n, i in INFO.items() if i.kind != "pooled"}
    rows = {
        (a, "member", e): SuiteRow("member", e, FED, by_target_group(FED, info, 0), over_control(FED, 0), a)
        for a in ("fgsm", "pgd")
        for e in budgets
    }
    md = suite_md(rows, req, 0.02, meta)
    assert md.count("## Ranking at eps") == 2
    assert "## Ranking at eps 0.0157 (4/255)" in md and "## Ranking at eps 0.0314 (8/255)" in md
    assert "0.02" not in md  # no section, no header budget at the study's eps
    assert "## eps sweep (all targets)" in md
    ranking = md.split("## Ranking at eps 0.0157 (4/255)")[1].split("##")[0]
    assert sorted(ln.split("|")[2].strip() for ln in ranking.splitlines() if ln.startswith("| member |")) == [
        "fgsm",
        "pgd",
    ]
