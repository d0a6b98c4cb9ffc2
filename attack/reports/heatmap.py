"""The transfer matrix as a picture: one cell per (source, target), in percent."""

from __future__ import annotations

import math
from pathlib import Path

from attack.measure.core import Measurement
from shared.io import atomic_path


def heatmap_png(m: Measurement, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(m.sources), len(m.targets)), np.nan)
    row = {name: i for i, name in enumerate(m.sources)}
    col = {name: j for j, name in enumerate(m.targets)}
    for c in m.cells:
        if c.transferability is not None:
            grid[row[c.source], col[c.target]] = 100 * c.transferability
    width = max(6.0, 0.55 * len(m.targets) + 3)
    height = max(4.0, 0.55 * len(m.sources) + 2.5)
    fig, ax = plt.subplots(figsize=(width + 1.5, height))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="magma_r", vmin=0, vmax=100)
    ax.set_xticks(range(len(m.targets)), m.targets, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(m.sources)), m.sources, fontsize=8)
    ax.set_xlabel("target model")
    ax.set_ylabel("source (crafted on)")
    for i in range(len(m.sources)):
        for j in range(len(m.targets)):
            v = grid[i, j]
            ax.text(
                j,
                i,
                "-" if math.isnan(v) else f"{v:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if not math.isnan(v) and v > 55 else "black",
            )
    fig.colorbar(im, ax=ax, label="transferability (%)")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
