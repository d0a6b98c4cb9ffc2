"""The study over replicate seeds, against hand computations: the mean over seeds with the
between-seed sd and Student's t interval, the global-vs-local tests pooled over seeds, and
the report and study.json written from the records of tiny attack folders (the ones
tests/test_report_records.py writes)."""

from __future__ import annotations

import json
import math

import pytest

from attack.reports.readback import read_variant
from attack.reports.replicates import pooled_tests, replicated, write_replicates
from attack.reports.summary import StudyMeta
from attack.reports.tables import Info, source_differences
from attack.reports.variants import summarize
from attack.stats import T975, over_replicates, t975
from shared.config.study import StudyConfig, Variant
from tests.test_report_records import _edit, _write_attack

pytestmark = pytest.mark.unit

STUDY = StudyConfig((Variant("baseline"),), ("fgsm", "pgd"), ("member",), "pgd", seeds=(7, 8))


def test_the_t_quantiles_are_scipys() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, len(T975) + 1):
        assert t975(df) == pytest.approx(float(stats.t.ppf(0.975, df)), abs=1e-8)
    for df in (31, 40, 100, 1000):
        assert t975(df) == pytest.approx(float(stats.t.ppf(0.975, df)), abs=1e-4)


def test_the_mean_over_seeds_has_the_between_seed_sd_and_a_t_interval() -> None:
    r = over_replicates([0.5, 0.7, 0.6, math.nan])  # a seed that did not measure it: left out
    half = 4.302652730 * 0.1 / math.sqrt(3)  # t(2) * sd / sqrt(n)
    assert r.values == (0.5, 0.7, 0.6)
    assert r.mean == pytest.approx(0.6) and r.sd == pytest.approx(0.1)
    assert (r.interval.low, r.interval.high) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    wide = over_replicates([0.0, 0.5])  # t(1) * 0.354 / sqrt(2) = 3.18: clipped to [0, 1]
    assert (wide.interval.low, wide.interval.high) == (0.0, 1.0)
    one = over_replicates([0.4])
    assert one.mean == 0.4 and math.isnan(one.sd) and math.isnan(one.interval.low)
    assert over_replicates([]).values == ()


@pytest.mark.parametrize("seeds", [(7, 8, 7), (3, 3)])
def test_a_seeds_list_with_duplicates_is_refused(seeds: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"seeds: {seeds[-1]} is given twice"):
        StudyConfig((Variant("baseline"),), seeds=seeds)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory: pytest.TempPathFactory):
    """Two seeds' attack folders: seed 8's fgsm cells fool 3 more images each."""
    root = tmp_path_factory.mktemp("replicates")
    records, by_seed = {}, {}
    for seed in STUDY.seeds:
        folder = root / str(seed)
        _write_attack(folder, STUDY.attacks)
        if seed == 8:
            path = folder / "suite" / "fgsm-member" / "results.json"
            _edit(
                path,
                lambda b: [
                    c.update(n_misclassified_after=c["n_misclassified_after"] + 3)
                    for c in b["cells"]
                    if c["n_correct_before"] >= 3
                ],
            )
        records[seed, "baseline"] = read_variant(folder, STUDY.attacks, STUDY.threats)
        by_seed[seed] = {"baseline": summarize(records[seed, "baseline"], STUDY, 0.02, seed)}
    meta = StudyMeta(7, 0.02, STUDY.attacks, STUDY.threats, STUDY.robust_attack, {"baseline": {}})
    write_replicates(root, by_seed, records, STUDY, 0.02, meta)
    return root, records, by_seed


def test_every_figure_is_the_mean_of_the_seeds_figures(two_seeds) -> None:
    _, _, by_seed = two_seeds
    table = replicated(by_seed, STUDY)["baseline"]["resnet18"]
    per_seed = [by_seed[s]["baseline"].architectures["resnet18"] for s in STUDY.seeds]
    fgsm = [r.transfer["fgsm/member"].as_source for r in per_seed]
    assert fgsm[0] is not None and fgsm[1] is not None
    a, b = fgsm[0].mean.value, fgsm[1].mean.value
    assert a is not None and b is not None and b > a
    got = table["fgsm/member: transfer as source"]
    assert got.values == (a, b)
    assert got.mean == pytest.approx((a + b) / 2)
    assert got.sd == pytest.approx(abs(a - b) / math.sqrt(2))
    assert got.interval.high == pytest.approx(min(1.0, got.mean + 12.706204736 * got.sd / math.sqrt(2)))
    pgd = table["pgd/member: transfer as source"]  # the same cells on both seeds: sd 0
    assert pgd.sd == 0 and pgd.interval.low == pgd.interval.high == pgd.mean
    auc = table["clean AUC, global"]
    assert per_seed[0].clean_auc_global is not None
    assert auc.values == (per_seed[0].clean_auc_global.value,) * 2


def test_the_global_vs_local_tests_pool_every_seeds_pairs(two_seeds) -> None:
    _, records, _ = two_seeds
    pooled = pooled_tests(records, "baseline", "fgsm/member", 0)
    diffs = []
    for seed in STUDY.seeds:
        rec = records[seed, "baseline"]
        m, sources = rec.measured["fgsm/member"]
        info = {x.name: Info(x.name, x.arch, x.kind, x.site) for x in rec.models}
        diffs += source_differences(m, {**sources, **info})
    assert pooled.seeds == 2 and pooled.per_source.n_pairs == len(diffs) > 0
    assert pooled.per_source.mean_difference.value == pytest.approx(sum(diffs) / len(diffs), abs=1e-6)
    assert pooled.model_level.n_pairs == 2  # one architecture per seed


def test_the_report_and_json_over_seeds(two_seeds) -> None:
    root, _, _ = two_seeds
    body = json.loads((root / "study.json").read_text())
    assert body["seeds"] == [7, 8]
    fig = body["replicates"]["baseline"]["resnet18"]["fgsm/member: transfer as source"]
    assert fig["n"] == 2 and fig["low"] <= fig["mean"] <= fig["high"]
    assert body["pooled_global_vs_local"]["baseline"]["pgd/member"]["seeds"] == 2
    md = (root / "study.md").read_text()
    assert md.startswith("# Study over 2 seeds")
    assert "| baseline | resnet18 | fgsm/member: transfer as source |" in md
    assert "[seeds/8/study.md](seeds/8/study.md)" in md
    assert "- baseline, fgsm/member: per source" in md
    rows = (root / "transfer.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} == {"7", "8"}
