"""Does architectural diversity lower transfer inside a federation? The study's conclusion
("architectural diversity may reduce this risk, but FedAvg requires shared architectures")
as a comparison between variants that train different architectures at their sites: a
homogeneous FedAvg federation per architecture against a FedDF federation whose sites
each train their own (`federation.strategy: feddf`, `site_architectures`).

For each (attack, threat) the study measured, each variant's transfer onto the federation
models a source does not hold (VariantSummary.reach: insider, a site's ensemble of its own
models onto every other model, the other sites' locals and the globals of architectures it
does not train; member, one model onto every other; outsider, onto every model), beside
the first variant's: the difference with a 95% interval and a verdict, and what the
variant's models cost in clean AUC. The section appears when the variants' sites train
different architectures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from attack.reports.figures import Estimate, GroupFigure, shown
from attack.reports.summary import VariantSummary
from attack.stats import Z95


@dataclass(frozen=True)
class DiversityEffect:
    """One variant's transfer onto the models its sources do not hold, against the baseline's."""

    key: str  # "attack/threat"
    variant: str
    baseline: str
    reach: GroupFigure
    reach_baseline: GroupFigure
    difference: Estimate  # variant minus baseline
    verdict: str
    clean_auc: float | None  # mean over the variant's models
    clean_auc_baseline: float | None


def _se(e: Estimate) -> float | None:
    """The standard error a 95% interval implies (normal approximation)."""
    if e.low is None or e.high is None:
        return None
    return (e.high - e.low) / (2 * Z95)


def difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b with a 95% interval from the two intervals' standard errors, as for two
    independent estimates (the variants are independent federations; they are probed on
    the same test images, which makes the interval conservative when their outcomes
    correlate). No interval when either figure has none."""
    if a.value is None or b.value is None:
        return Estimate(None, None, None)
    d = a.value - b.value
    sa, sb = _se(a), _se(b)
    if sa is None or sb is None:
        return Estimate(d, None, None)
    half = Z95 * math.hypot(sa, sb)
    return Estimate(d, d - half, d + half)


def _verdict(d: Estimate) -> str:
    if d.low is None or d.high is None:
        return "cannot tell (no interval)"
    if d.high < 0:
        return "**lower** (the interval excludes 0)"
    if d.low > 0:
        return "**higher** (the interval excludes 0)"
    return "not significant (the interval includes 0)"


def _mean_auc(v: VariantSummary) -> float | None:
    fed = [m.clean_auc for m in v.models.values() if m.kind in ("global", "local")]
    aucs = [a for a in fed if a is not None]
    return statistics.fmean(aucs) if aucs else None


def diverse(variants: Mapping[str, VariantSummary]) -> bool:
    """Whether the variants' sites train different architectures (the section's condition)."""
    layouts = {tuple(sorted(v.site_architectures.items())) for v in variants.values()}
    return len(layouts) > 1


def diversity_effects(variants: Mapping[str, VariantSummary]) -> list[DiversityEffect]:
    """One row per (attack/threat, variant after the first) both variants measured."""
    names = list(variants)
    if len(names) < 2 or not diverse(variants):
        return []
    base = variants[names[0]]
    base_auc = _mean_auc(base)
    rows = []
    for key, before in base.reach.items():
        for name in names[1:]:
            now = variants[name].reach.get(key)
            if now is None:
                continue
            d = difference(now.mean, before.mean)
            auc = _mean_auc(variants[name])
            rows.append(DiversityEffect(key, name, names[0], now, before, d, _verdict(d), auc, base_auc))
    return rows


def _layout(v: VariantSummary) -> str:
    """The sites and what they train: 'A: resnet50; B: densenet121' (sites that train the
    same set of architectures grouped: 'A, B, C, D: densenet121 + resnet50')."""
    by_archs: dict[tuple[str, ...], list[str]] = {}
    for site, archs in v.site_architectures.items():
        by_archs.setdefault(archs, []).append(site)
    return "; ".join(f"{', '.join(sites)}: {' + '.join(archs)}" for archs, sites in by_archs.items())


def _pct(e: Estimate) -> str:
    return shown(e, 100, ".1f", "%")


def _points(e: Estimate) -> str:
    return shown(e, 100, "+.1f", " points")


def _auc(a: float | None) -> str:
    return "n/a" if a is None else f"{a:.3f}"


def _words(r: DiversityEffect) -> str:
    attack, threat = r.key.split("/")
    cost = (
        ""
        if r.clean_auc is None or r.clean_auc_baseline is None
        else f"; its models' mean clean AUC {r.clean_auc:.3f} against {r.clean_auc_baseline:.3f}"
    )
    d = r.difference
    if r.verdict.startswith("**lower"):
        said = f"diversity **lowered** transfer here, by {-100 * (d.value or 0):.1f} points"
    elif r.verdict.startswith("**higher"):
        said = f"transfer was **higher**, by {100 * (d.value or 0):.1f} points"
    else:
        said = "the data cannot tell whether it changed transfer"
    return f"- {attack}, {threat}: {r.variant} against {r.baseline}: {said} ({_points(d)}){cost}."


def diversity_md(variants: Mapping[str, VariantSummary]) -> list[str]:
    """study.md's section (empty unless the variants' sites train different architectures)."""
    rows = diversity_effects(variants)
    if not rows:
        return []
    lines = [
        "",
        f"## Does architectural diversity lower transfer inside the federation? Against {rows[0].baseline}",
        "",
        "What each site trains:",
        "",
        *[f"- {name}: {_layout(v)}" for name, v in variants.items()],
        "",
        "Transfer onto the federation models a source does not hold (insider: a site's ensemble onto",
        "every model it does not hold, the other sites' locals and the globals of the architectures it",
        "does not train; member: one model onto every other; outsider: onto every model): the mean",
        "over transfer cells with its two-way cluster bootstrap 95% interval and the random-sign",
        "control; the variant minus the baseline with a 95% interval (normal approximation from the",
        "two intervals: independent federations probed on the same test images, so conservative when",
        "their outcomes correlate); the mean clean test AUC of each variant's global and local models.",
        "Each row is its own comparison at 95%.",
        "",
        "| attack, threat | variant | transfer (cells) | control | baseline | variant minus baseline "
        "| verdict | mean clean AUC (baseline) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.key.replace('/', ', ')} | {r.variant} | {_pct(r.reach.mean)} ({r.reach.n}) "
            f"| {_pct(r.reach.control_mean)} | {_pct(r.reach_baseline.mean)} ({r.reach_baseline.n}) "
            f"| {_points(r.difference)} | {r.verdict} | {_auc(r.clean_auc)} ({_auc(r.clean_auc_baseline)}) |"
        )
    lines += ["", "In words:", "", *[_words(r) for r in rows]]
    return lines
