"""Attack outputs: results.json, matrix.csv, report.md (the study's table), heatmap.png."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from attack.transfer import Cell, Measurement
from shared.checkpoint import ModelEntry
from shared.io import atomic_path, atomic_write

# The study's published mean (sd) drop per architecture, in percent.
PUBLISHED = {"resnet50": (54.6, 4.4), "densenet121": (35.2, 6.8), "inception_v3": (17.9, 5.5)}


def results_json(m: Measurement, entries: dict[str, ModelEntry], meta: dict[str, Any]) -> dict:
    return {
        **meta,
        "models": [
            {
                "name": n,
                "arch": entries[n].arch,
                "kind": entries[n].kind,
                "site": entries[n].site,
                "sha256": entries[n].sha256,
            }
            for n in m.models
        ],
        "sources": {n: {"n_attacked": len(m.attacked[n]), "attacked": m.attacked[n]} for n in m.models},
        "cells": [
            {
                "source": c.source,
                "target": c.target,
                "white_box": c.source == c.target,
                "n_correct_before": c.n_correct_before,
                "n_misclassified_after": c.n_misclassified_after,
                "transferability": c.transferability,
            }
            for c in m.cells
        ],
    }


def matrix_csv(m: Measurement) -> str:
    grid = {(c.source, c.target): c.transferability for c in m.cells}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["source \\ target", *m.models])
    for s in m.models:
        w.writerow([s, *("" if grid[s, t] is None else f"{grid[s, t]:.4f}" for t in m.models)])
    return buf.getvalue()


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = 100 * statistics.fmean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f}% (sd {sd:.1f}, n={len(values)})"


def report_md(m: Measurement, entries: dict[str, ModelEntry], meta: dict[str, Any]) -> str:
    cross = [c for c in m.cells if c.source != c.target and c.transferability is not None]
    white = [c for c in m.cells if c.source == c.target and c.transferability is not None]
    undefined = [c for c in m.cells if c.transferability is None]
    arch = {n: e.arch for n, e in entries.items()}

    def vals(cells: list[Cell], pred) -> list[float]:
        return [c.transferability for c in cells if pred(c)]  # type: ignore[misc]

    lines = [
        f"# FGSM transferability across {len(m.models)} models",
        "",
        f"Attack: {meta['attack']} with eps = {meta['eps']} in [0, 1] pixel space, crafted on each "
        "source model's correctly classified pneumonia images from the held-out test sets "
        f"({meta['n_images']} pneumonia images). Transferability(source -> target) = images the "
        "target misclassifies after the attack / images of that set it classified correctly "
        "before. Cross-model means exclude the white-box diagonal.",
        "",
        "## By architecture (the study's table)",
        "",
        "| architecture | drop as source (ours) | drop as target (ours) | white-box (ours) "
        "| published drop, mean (sd) |",
        "|---|---|---|---|---|",
    ]
    for a in sorted({*arch.values()}):
        pub = PUBLISHED.get(a)
        pub_s = f"{pub[0]:.1f}% ({pub[1]:.1f})" if pub else "not in the study"
        lines.append(
            f"| {a} | {_stats(vals(cross, lambda c, a=a: arch[c.source] == a))} "
            f"| {_stats(vals(cross, lambda c, a=a: arch[c.target] == a))} "
            f"| {_stats(vals(white, lambda c, a=a: arch[c.source] == a))} | {pub_s} |"
        )
    kind = {n: e.kind for n, e in entries.items()}
    lines += [
        "",
        "Published figures are the study's, quoted for comparison; ours come from this run.",
        "",
        "## Global vs local models",
        "",
        "| models | drop as target | drop as source |",
        "|---|---|---|",
    ]
    for k in ("global", "local"):
        lines.append(
            f"| {k} | {_stats(vals(cross, lambda c, k=k: kind[c.target] == k))} "
            f"| {_stats(vals(cross, lambda c, k=k: kind[c.source] == k))} |"
        )
    lines += [
        "",
        "## Clean accuracy on the attack set",
        "",
        "| model | correct / pneumonia images |",
        "|---|---|",
    ]
    for n in m.models:
        lines.append(f"| {n} | {m.clean_correct[n]} / {meta['n_images']} |")
    if undefined:
        lines += [
            "",
            "## Empty cells",
            "",
            "No attacked image was classified correctly by the target before the attack, "
            "so transferability is undefined (empty in matrix.csv, null in results.json):",
            "",
        ]
        lines += [f"- {c.source} -> {c.target}" for c in undefined]
    if meta.get("skipped"):
        lines += ["", "## Skipped models", ""]
        lines += [f"- {s['name']}: {s['reason']}" for s in meta["skipped"]]
    lines += [
        "",
        "Files: results.json (every cell with its counts), matrix.csv, heatmap.png, config.yaml.",
        "",
    ]
    return "\n".join(lines)


def heatmap_png(m: Measurement, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(m.models)
    grid = np.full((n, n), np.nan)
    pos = {name: i for i, name in enumerate(m.models)}
    for c in m.cells:
        if c.transferability is not None:
            grid[pos[c.source], pos[c.target]] = 100 * c.transferability
    size = max(6.0, 0.55 * n + 3)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="magma_r", vmin=0, vmax=100)
    ax.set_xticks(range(n), m.models, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), m.models, fontsize=8)
    ax.set_xlabel("target model")
    ax.set_ylabel("source model (FGSM crafted on)")
    for i in range(n):
        for j in range(n):
            txt = "-" if math.isnan(grid[i, j]) else f"{grid[i, j]:.0f}"
            ax.text(
                j,
                i,
                txt,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if not math.isnan(grid[i, j]) and grid[i, j] > 55 else "black",
            )
    fig.colorbar(im, ax=ax, label="transferability (%)")
    ax.set_title("FGSM transferability (source -> target)")
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, m: Measurement, entries: dict[str, ModelEntry], meta: dict[str, Any]) -> None:
    """Write every output atomically; results.json is deterministic (no timestamps)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(results_json(m, entries, meta), indent=1))
    atomic_write(out / "matrix.csv", matrix_csv(m))
    atomic_write(out / "report.md", report_md(m, entries, meta))
    heatmap_png(m, out / "heatmap.png")
