"""The per-round validation AUC and loss of each site and of the global model, as a PNG."""

from __future__ import annotations

from pathlib import Path

from shared.events import read_events
from shared.io import atomic_path


def plot_metrics(events: Path, out: Path) -> Path:
    """AUC and loss per round, per site and for the weighted global evaluation, per arch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_events(events) if r["event"] in ("site-evaluate", "round")]
    archs = sorted({r["arch"] for r in rows})
    fig, axes = plt.subplots(2, max(1, len(archs)), figsize=(4.5 * max(1, len(archs)), 7), squeeze=False)
    for j, arch in enumerate(archs):
        for i, metric in enumerate(("val-auc", "val-loss")):
            ax = axes[i][j]
            series: dict[str, dict[int, float]] = {}
            for r in rows:
                if r["arch"] != arch or r.get(metric) is None:
                    continue
                label = f"site {r['site']}" if r["event"] == "site-evaluate" else "global (weighted)"
                series.setdefault(label, {})[r["round"]] = r[metric]
            for label, pts in sorted(series.items()):
                xs = sorted(pts)
                ax.plot(
                    xs,
                    [pts[x] for x in xs],
                    marker="o",
                    label=label,
                    linewidth=2.5 if label.startswith("global") else 1.2,
                )
            ax.set_title(f"{arch}: {metric}")
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if metric.endswith("loss"):
                ax.set_yscale("log")  # a random init's loss can be orders of magnitude off
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out
