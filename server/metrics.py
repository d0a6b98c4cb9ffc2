"""Per-round, per-site metrics as JSON Lines next to the checkpoints, and their plot."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSON Lines; each line is flushed so a watcher sees it at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        row = {"time": round(time.time(), 3), "event": event, **fields}
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
            fh.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return rows


def plot_metrics(path: Path, out: Path) -> Path:
    """AUC and loss per round, per site and for the weighted global evaluation, per arch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(path) if r["event"] in ("site-evaluate", "round")]
    archs = sorted({r["arch"] for r in rows})
    fig, axes = plt.subplots(2, max(1, len(archs)), figsize=(4.5 * max(1, len(archs)), 7),
                             squeeze=False)
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
                ax.plot(xs, [pts[x] for x in xs], marker="o", label=label,
                        linewidth=2.5 if label.startswith("global") else 1.2)
            ax.set_title(f"{arch}: {metric}")
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if metric.endswith("loss"):
                ax.set_yscale("log")  # a random init's loss can be orders of magnitude off
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
