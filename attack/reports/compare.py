"""The variants side by side: what each defense changes against the study's first variant
(the baseline) for the global model of every architecture (the white-box robust
accuracy's difference with Newcombe's 95% interval and a verdict, and the clean AUC it
costs), and the clean-AUC-against-robustness plot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from attack.reports.figures import Estimate
from attack.reports.summary import Counts, Variants, VariantSummary
from attack.stats import newcombe
from shared.io import atomic_path


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "**raised** (the interval excludes 0)"
    if high < 0:
        return "**lowered** (the interval excludes 0)"
    return "not significant (the interval includes 0)"


@dataclass(frozen=True)
class DefenseEffect:
    """What a variant changes for one architecture's global model, against the baseline."""

    variant: str
    baseline: str
    arch: str
    robust: Counts  # white-box robust accuracy's counts, the variant's
    robust_baseline: Counts
    difference: Estimate  # of the robust accuracies (Newcombe's interval)
    verdict: str
    clean_auc_change: float | None


def defense_effects(variants: Mapping[str, VariantSummary]) -> list[DefenseEffect]:
    """One row per (variant after the first, architecture) both variants measured."""
    names = list(variants)
    if len(names) < 2:
        return []
    base = variants[names[0]].architectures
    rows = []
    for name in names[1:]:
        for arch, r in variants[name].architectures.items():
            b = base.get(arch)
            if b is None:
                continue
            now, then = r.robust_counts_global, b.robust_counts_global
            d = newcombe(now.k, now.n, then.k, then.n)
            auc1, auc0 = (None if x.clean_auc_global is None else x.clean_auc_global.value for x in (r, b))
            rows.append(
                DefenseEffect(
                    variant=name,
                    baseline=names[0],
                    arch=arch,
                    robust=now,
                    robust_baseline=then,
                    difference=Estimate.of(d),
                    verdict=_verdict(d.low, d.high) if d.low == d.low else "not measured",
                    clean_auc_change=None if auc1 is None or auc0 is None else auc1 - auc0,
                )
            )
    return rows


def defense_effects_md(variants: Mapping[str, VariantSummary], attack: str) -> list[str]:
    """The section of study.md (empty without a baseline and a defense)."""
    rows = defense_effects(variants)
    if not rows:
        return []
    lines = [
        "",
        f"## What each defense changes for the global models, against {rows[0].baseline}",
        "",
        f"White-box robust accuracy under {attack}: the defense's minus the baseline's, with Newcombe's",
        "95% interval for a difference of two independent proportions (both are counted on the same",
        "test images, so when their outcomes correlate the interval is conservative); the clean test",
        "AUC it costs (both AUCs, with their intervals, are in the table above). Each row is its own",
        "comparison at 95%: with several rows, one may clear its interval by chance.",
        "",
        "| variant | architecture | robust acc. (k/n) | baseline (k/n) | difference [95% CI] | verdict "
        "| clean AUC change |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r.difference
        diff = (
            "n/a"
            if d.value is None or d.low is None or d.high is None
            else f"{100 * d.value:+.1f} points [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        )
        auc = "n/a" if r.clean_auc_change is None else f"{r.clean_auc_change:+.3f}"
        lines.append(
            f"| {r.variant} | {r.arch} | {r.robust.k}/{r.robust.n} "
            f"| {r.robust_baseline.k}/{r.robust_baseline.n} | {diff} | {r.verdict} | {auc} |"
        )
    return lines


def scatter_png(variants: Variants, path: Path) -> None:
    """Clean AUC against white-box robust accuracy, one point per model, by variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, v in variants.items():
        if isinstance(v, str):
            continue
        pts = [(m.clean_auc, m.robust_accuracy) for m in v.models.values()]
        xy = [(x, y) for x, y in pts if x is not None and y is not None]
        ax.scatter([x for x, _ in xy], [100 * y for _, y in xy], label=name, alpha=0.8)
    ax.set_xlabel("clean test AUC")
    ax.set_ylabel("white-box robust accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
