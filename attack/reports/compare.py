"""The variants side by side: what each defense changes against the study's first variant
(the baseline) for the global model of every architecture (the white-box robust
accuracy's difference with Newcombe's 95% interval and a verdict, and the clean AUC it
costs), and the clean-AUC-against-robustness plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attack.stats import newcombe
from shared.io import atomic_path


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "**raised** (the interval excludes 0)"
    if high < 0:
        return "**lowered** (the interval excludes 0)"
    return "not significant (the interval includes 0)"


def defense_effects(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant after the first, architecture) both variants measured."""
    names = list(variants)
    if len(names) < 2:
        return []
    base = variants[names[0]]["architectures"]
    rows = []
    for name in names[1:]:
        for arch, r in variants[name]["architectures"].items():
            b = base.get(arch)
            if b is None or "robust_counts_global" not in r or "robust_counts_global" not in b:
                continue
            k1, n1 = r["robust_counts_global"]["k"], r["robust_counts_global"]["n"]
            k0, n0 = b["robust_counts_global"]["k"], b["robust_counts_global"]["n"]
            d = newcombe(k1, n1, k0, n0)
            auc1, auc0 = ((x["clean_auc_global"] or {}).get("value") for x in (r, b))
            rows.append(
                {
                    "variant": name,
                    "baseline": names[0],
                    "arch": arch,
                    "robust": {"k": k1, "n": n1},
                    "robust_baseline": {"k": k0, "n": n0},
                    "difference": d.to_json(),
                    "verdict": _verdict(d.low, d.high) if d.low == d.low else "not measured",
                    "clean_auc_change": None if auc1 is None or auc0 is None else auc1 - auc0,
                }
            )
    return rows


def defense_effects_md(variants: dict[str, dict[str, Any]], attack: str) -> list[str]:
    """The section of study.md (empty without a baseline and a defense)."""
    rows = defense_effects(variants)
    if not rows:
        return []
    lines = [
        "",
        f"## What each defense changes for the global models, against {rows[0]['baseline']}",
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
        d = r["difference"]
        diff = (
            "n/a"
            if d["value"] is None
            else f"{100 * d['value']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
        )
        auc = "n/a" if r["clean_auc_change"] is None else f"{r['clean_auc_change']:+.3f}"
        lines.append(
            f"| {r['variant']} | {r['arch']} | {r['robust']['k']}/{r['robust']['n']} "
            f"| {r['robust_baseline']['k']}/{r['robust_baseline']['n']} | {diff} | {r['verdict']} | {auc} |"
        )
    return lines


def scatter_png(variants: dict[str, dict[str, Any] | str], path: Path) -> None:
    """Clean AUC against white-box robust accuracy, one point per model, by variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, v in variants.items():
        if not isinstance(v, dict):
            continue
        pts = [(m["clean_auc"], m["robust_accuracy"]) for m in v["models"].values()]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        ax.scatter([x for x, _ in pts], [100 * y for _, y in pts], label=name, alpha=0.8)
    ax.set_xlabel("clean test AUC")
    ax.set_ylabel("white-box robust accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
