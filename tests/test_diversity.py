"""The study's diversity comparison (attack.reports.diversity): a homogeneous FedAvg variant
against a FedDF variant whose sites train different architectures, summarized from
measurements as the study reads them back; the difference's interval by hand."""

from __future__ import annotations

import math

import pytest

from attack.measure.core import Cell, Measurement
from attack.reports.diversity import difference, diversity_effects, diversity_md
from attack.reports.figures import CleanFigures, Estimate
from attack.reports.readback import VariantRecords
from attack.reports.records import ModelResult
from attack.reports.tables import Info
from attack.reports.variants import study_md, summarize
from attack.stats import Z95
from shared.config.study import StudyConfig, Variant

pytestmark = pytest.mark.unit
SITES = "ABCD"
STUDY = StudyConfig((Variant("fedavg"), Variant("feddf")), attacks=("pgd",), threats=("member", "insider"))


def _model(name: str, arch: str, kind: str, site: str | None, auc: float) -> ModelResult:
    e = Estimate(auc, auc - 0.05, min(1.0, auc + 0.05))
    return ModelResult(name, arch, kind, site, "0" * 64, CleanFigures(20, 40, e, e, e), 18)


def _records(site_arch: dict[str, tuple[str, ...]], fooled: int, auc: float) -> VariantRecords:
    """A store whose sites train `site_arch`'s architectures (a global per architecture),
    and its pgd measurements: member (each model onto every other, 5 of 20 fooled) and
    insider (each site's ensemble of its own models onto every other, `fooled` of 20)."""
    archs = sorted({a for v in site_arch.values() for a in v})
    models = [_model(f"{a}-global", a, "global", None, auc) for a in archs]
    models += [_model(f"{a}-local-{s}", a, "local", s, auc) for s, v in site_arch.items() for a in v]
    names = [m.name for m in models]
    member = Measurement("pgd", 0.02, names, names)
    member.cells = [Cell(s, t, 20, 20 if s == t else 5, 1, s == t) for s in names for t in names]
    holds = {
        f"insider-{s}": {f"{a}-local-{s}" for a in v} | {f"{a}-global" for a in v}
        for s, v in site_arch.items()
    }
    insider = Measurement("pgd", 0.02, list(holds), names)
    insider.cells = [Cell(s, t, 20, fooled, 1, t in held) for s, held in holds.items() for t in names]
    sources = {s: Info(s, "ensemble", "insider") for s in holds}
    return VariantRecords(models, {"pgd/member": (member, {}), "pgd/insider": (insider, sources)})


def test_diversity_section_compares_the_insiders_reach_with_its_interval() -> None:
    fedavg = summarize(_records({s: ("a", "b") for s in SITES}, 10, 0.90), STUDY, 0.02, 7)
    feddf = summarize(_records({"A": ("a",), "B": ("b",), "C": ("a",), "D": ("b",)}, 2, 0.86), STUDY, 0.02, 7)
    assert fedavg.site_architectures == {s: ("a", "b") for s in SITES}
    assert feddf.site_architectures == {"A": ("a",), "B": ("b",), "C": ("a",), "D": ("b",)}
    # an insider's reach: onto the models it does not hold only (4 sites x 6 others, 4 x 4)
    assert (fedavg.reach["pgd/insider"].n, feddf.reach["pgd/insider"].n) == (24, 16)
    assert fedavg.reach["pgd/insider"].mean.value == pytest.approx(0.5)
    assert feddf.reach["pgd/insider"].mean.value == pytest.approx(0.1)

    rows = {r.key: r for r in diversity_effects({"fedavg": fedavg, "feddf": feddf})}
    assert set(rows) == {"pgd/member", "pgd/insider"}
    r = rows["pgd/insider"]
    assert (r.variant, r.baseline) == ("feddf", "fedavg")
    assert r.difference.value == pytest.approx(-0.4)
    # every cell alike: no spread, so a zero-width interval on each side and on the difference
    assert r.verdict.startswith("**lower**")
    assert (r.clean_auc, r.clean_auc_baseline) == (pytest.approx(0.86), pytest.approx(0.90))
    md = "\n".join(diversity_md({"fedavg": fedavg, "feddf": feddf}))
    assert "- fedavg: A, B, C, D: a + b" in md and "- feddf: A, C: a; B, D: b" in md
    assert "| pgd, insider | feddf | 10.0% [10.0, 10.0] (16) |" in md
    assert "diversity **lowered** transfer here, by 40.0 points" in md
    assert "mean clean AUC 0.860 against 0.900" in md
    assert "## Does architectural diversity" in study_md({"fedavg": fedavg, "feddf": feddf}, STUDY, 0.02)


def test_no_section_when_every_variant_trains_the_same_architectures_at_every_site() -> None:
    layout = {s: ("a", "b") for s in SITES}
    one, two = (summarize(_records(layout, k, 0.9), STUDY, 0.02, 7) for k in (10, 4))
    assert diversity_effects({"baseline": one, "fedprox": two}) == []
    assert "diversity" not in study_md({"baseline": one, "fedprox": two}, STUDY, 0.02)


def test_the_difference_interval_adds_the_two_standard_errors() -> None:
    a, b = Estimate(0.50, 0.40, 0.60), Estimate(0.20, 0.15, 0.25)
    d = difference(b, a)
    half = Z95 * math.hypot(0.2 / (2 * Z95), 0.1 / (2 * Z95))
    assert d.value == pytest.approx(-0.30)
    assert (d.low, d.high) == (pytest.approx(-0.30 - half), pytest.approx(-0.30 + half))
    assert difference(Estimate(0.3, None, None), a) == Estimate(pytest.approx(-0.2), None, None)
    assert difference(Estimate(None, None, None), a) == Estimate(None, None, None)
