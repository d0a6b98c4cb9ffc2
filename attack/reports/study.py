"""The study's outputs: results.json, matrix.csv, report.md (in words a reader can use),
heatmap.png. Model names are escaped where a spreadsheet or Markdown would interpret them."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from attack.measure.clean import CleanPerformance
from attack.measure.core import Measurement
from attack.reports.families import families_md
from attack.reports.heatmap import heatmap_png
from attack.reports.records import RunMeta
from attack.reports.tables import Info, cell_view, flagged, global_vs_local, model_level, study_table
from attack.stats import MIN_CELL, PairedTest
from shared.io import atomic_write

# The study's published mean (sd) drop per architecture, in percent.
PUBLISHED = {"resnet50": (54.6, 4.4), "densenet121": (35.2, 6.8), "inception_v3": (17.9, 5.5)}


def csv_safe(text: str) -> str:
    """A cell a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def md_safe(text: str) -> str:
    """Text that cannot break a Markdown table or inject markup."""
    return "".join("\\" + ch if ch in "|*`[]<>\\" else ch for ch in text.replace("\n", " "))


def matrix_csv(m: Measurement) -> str:
    grid = {(c.source, c.target): c.transferability for c in m.cells}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["source \\ target", *(csv_safe(t) for t in m.targets)])
    for s in m.sources:
        w.writerow([csv_safe(s), *("" if grid[s, t] is None else f"{grid[s, t]:.4f}" for t in m.targets)])
    return buf.getvalue()


def test_sentence(test: PairedTest, what: str) -> str:
    """The paired test in words, 'not significant' when it is not."""
    if test.n == 0 or math.isnan(test.p_value):
        return f"No source had usable cells on both sides: the comparison of {what} cannot be made."
    d = test.mean_difference
    diff = (
        f"{100 * d.value:+.1f} points [{100 * d.low:.1f}, {100 * d.high:.1f}]"
        if not math.isnan(d.low)
        else (f"{100 * d.value:+.1f} points")
    )
    kind = "exact" if test.exact else "Monte Carlo"
    base = (
        f"mean difference (global - local) {diff} over {test.n} sources; "
        f"{kind} sign-flip test p = {test.p_value:.3g}"
    )
    if not test.significant():
        return f"{base}: **not significant** at 0.05; these data do not show {what} to differ."
    direction = "less" if d.value < 0 else "more"
    return f"{base}: significant at 0.05; global models are {direction} fooled than local ones."


def model_sentence(test: PairedTest) -> str:
    """The model-level comparison in words: with few architectures it cannot be significant."""
    if test.n == 0 or math.isnan(test.p_value):
        return "No architecture has a global and a local target with usable cells: no model-level comparison."
    floor = 2 / 2**test.n if test.exact else math.nan
    return (
        f"Mean over {test.n} architecture(s) {100 * test.mean_difference.value:+.1f} points; exact sign-flip "
        f"test p = {test.p_value:.3g} (the smallest p {test.n} architectures allow is {floor:.3g}"
        + ("; more global models, e.g. replicate seeds, are needed to test it)." if floor >= 0.05 else ").")
    )


def report_md(
    m: Measurement, info: dict[str, Info], clean: dict[str, CleanPerformance], meta: RunMeta, seed: int
) -> str:
    n = len(m.targets)
    lines = [
        f"# {m.attack.upper()} transferability across {n} models (the study's protocol)",
        "",
        f"Attack: {m.attack} with eps = {m.eps} in [0, 1] pixel space, crafted on each source model's "
        f"correctly classified pneumonia images of the held-out test sets ({meta.n_images} pneumonia "
        f"images: {meta.n_images_by_set}). Transferability(source -> target) = images the target "
        "misclassifies after the attack / images of that set it classified correctly before. Every rate "
        "carries its 95% interval (Wilson for one cell; bootstrap with a fixed seed for a mean) and, "
        "beside it, the same rate for random-sign noise at the same eps on the same images (the "
        f"control). Cells with fewer than {MIN_CELL} images are left out of every mean and listed below.",
        "",
        "## 1. How good each model is before the attack (held-out test sets, argmax rule)",
        "",
        "The rule is the stored model's argmax; a store trained with `training.calibration: youden` "
        "has each model's validation-calibrated threshold folded into its head (manifest: val-threshold).",
        "",
        "| model | AUC [95% CI] | sensitivity [95% CI] | specificity [95% CI] | right on the attack set |",
        "|---|---|---|---|---|",
    ]
    for t in m.targets:
        c = clean[t]
        lines.append(
            f"| {md_safe(t)} | {c.auc.plain()} (n={c.n_positive}+{c.n_negative}) | {c.sensitivity.percent()} "
            f"| {c.specificity.percent()} | {m.clean_correct[t]} / {meta.n_images} |"
        )
    table = study_table(m, info, seed)
    lines += [
        "",
        "## 2. The study's table, computed the way the study computed it",
        "",
        "Per model: the mean transfer as a source over the other models (and as a target over the other "
        "sources). Per architecture: the mean of those per-model means, their sd (the spread *between "
        "models*, as in the study), a bootstrap 95% interval over the models, and the mean control.",
        "",
        "| architecture | drop as source | same-arch targets | cross-arch targets | drop as target "
        "| white-box | published drop, mean (sd) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch, row in table.items():
        pub = PUBLISHED.get(arch)
        lines.append(
            f"| {md_safe(arch)} | {row['as_source'].text()} | {row['as_source_same_arch'].text()} "
            f"| {row['as_source_cross_arch'].text()} | {row['as_target'].text()} | {row['white_box'].text()} "
            f"| {f'{pub[0]:.1f}% ({pub[1]:.1f})' if pub else 'not in the study'} |"
        )
    lines += [
        "",
        "Published figures are the study's (quoted for comparison); ours come from this run.",
        *(
            [
                "",
                "Rows `<architecture> (pooled)`: the pooled baseline (one model trained centrally on every "
                "site's training data, `federation.pooled_baseline`), over its cells with the federation's "
                "models; the architectures' rows leave the pooled models out, as the study had none.",
            ]
            if any(key.endswith("(pooled)") for key in table)
            else []
        ),
        "",
        "## 3. Cell-level view (means over cells, not over models)",
        "",
        "Each usable source -> target cell counts once; the sd is the spread between cells, which mixes "
        "same- and cross-architecture pairs (larger than the study's sd by construction). Cells share "
        "sources, targets and images, so the interval is a two-way cluster bootstrap over sources and "
        "targets (both resampled), not one over independent cells.",
        "",
        "| architecture | as source | as target |",
        "|---|---|---|",
    ]
    for arch, row in cell_view(m, info, seed).items():
        lines.append(f"| {md_safe(arch)} | {row['as_source'].text()} | {row['as_target'].text()} |")
    lines += families_md(m, info, seed)  # only when a vision transformer is among the models
    groups, test = global_vs_local(m, info, seed)
    models = model_level(m, info, seed)
    lines += [
        "",
        "## 4. Global vs local models as targets",
        "",
        "| targets | transfer (mean over cells) |",
        "|---|---|",
        f"| global | {groups['global'].text()} |",
        f"| local | {groups['local'].text()} |",
        *(
            [f"| pooled (central training, not in the test) | {groups['pooled'].text()} |"]
            if "pooled" in groups
            else []
        ),
        "",
        "Paired over sources (the pairs are the sources, not the source -> target cells): for each "
        "source, the transfer onto each architecture's global model minus the mean onto that "
        "architecture's local models, averaged over architectures. "
        + test_sentence(test, "global and local models' resistance"),
        "",
        "The unit a claim about global models generalises over is the model: per architecture, the "
        "global model's mean transfer as a target minus the mean of its local models'. "
        + model_sentence(models),
    ]
    lines += _lists(m, meta)
    return "\n".join(lines) + "\n"


def _lists(m: Measurement, meta: RunMeta) -> list[str]:
    lines: list[str] = []
    small = flagged(m)
    if small:
        lines += [
            "",
            f"## Cells with fewer than {MIN_CELL} images (left out of every mean)",
            "",
            f"{len(small)} of {len(m.cells)} cells (results.json: flagged_cells). By source:",
            "",
        ]
        for src in m.sources:
            mine = [c for c in small if c.source == src]
            if mine:
                lines.append(
                    f"- {md_safe(src)}: "
                    + ", ".join(f"{md_safe(c.target)} ({c.n_correct_before})" for c in mine)
                )
    empty = [s for s in m.sources if not m.attacked[s]]
    if empty:
        lines += [
            "",
            "## Empty rows",
            "",
            "These sources classified none of the attack images correctly:",
            "",
        ]
        lines += [f"- {md_safe(s)}" for s in empty]
    if meta.skipped:
        lines += ["", "## Skipped models", ""]
        lines += [f"- {md_safe(s.name)}: {md_safe(s.reason)}" for s in meta.skipped]
    p = meta.provenance
    shards = f" ({', '.join(p.devices)})" if p.devices and list(p.devices) != [p.device] else ""
    lines += [
        "",
        "## Provenance",
        "",
        f"Device {p.device}{shards}, predictions in {p.dtype}, crafting in float32 (TF32 off), batch "
        f"{p.batch_size}, {p.threads} torch thread(s); torch {p.versions['torch']}, timm "
        f"{p.versions['timm']}, Pillow {p.versions.get('pillow', 'not recorded')}; code commit "
        f"{p.code_commit}; split "
        f"fingerprint {p.split_fingerprint}. Files: results.json (every cell with its counts, "
        "intervals and control), matrix.csv, heatmap.png, config.yaml.",
    ]
    return lines


def write_outputs(
    out: Path,
    m: Measurement,
    info: dict[str, Info],
    clean: dict[str, CleanPerformance],
    results: dict[str, object],
    meta: RunMeta,
    seed: int,
) -> None:
    """Every output written atomically; `results` is results.json's body
    (attack.reports.results.study_json), deterministic (no timestamps)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(results, indent=1))
    atomic_write(out / "matrix.csv", matrix_csv(m))
    atomic_write(out / "report.md", report_md(m, info, clean, meta, seed))
    heatmap_png(m, out / "heatmap.png", f"{m.attack} (eps {m.eps}) transferability")
