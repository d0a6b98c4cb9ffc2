"""The figures of a measurement, each with its n and its 95% interval.

- A cell's rate: Wilson interval over its images; the random-sign control beside it.
- Cells with fewer than MIN_CELL images are too small for a meaningful interval: they are
  listed (flagged) and left out of every mean, never silently averaged in.
- The study's table, computed the way the study did: per model, the mean transfer as a
  source (and as a target) over the other models; then mean and sd across the models of
  an architecture, split into same- and cross-architecture pairs, with a bootstrap
  interval (fixed seed) over those models.
- The cell-level view: means over every cell of an architecture (labelled as such), with
  a two-way cluster bootstrap interval over the cells' sources and targets.
- Global vs local as targets: an exact sign-flip test over sources of the per-source mean
  difference between the global target and the local targets of the same architecture
  (the pairs are the sources, not the (source, target) cells); and the model-level
  comparison, a sign-flip test over architectures of the global model's mean as a target
  minus its locals' (the unit that generalises is the model).
- The attack against noise: a sign-flip test over targets of each target's mean (over
  the sources) of transfer minus the random-sign control on the same images.
- The pooled baseline (kind "pooled", shared.pooled) is measured in every cell, but no
  mean over the federation's models counts its cells, so switching it on leaves them as
  they were: each pooled model has its own row ("<arch> (pooled)", "pooled targets",
  the "pooled" row beside global and local), over its cells with the other models; a
  cell between two pooled models is in the matrix only.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from attack.measure.core import Cell, Measurement
from attack.stats import (
    MIN_CELL,
    Interval,
    PairedTest,
    bootstrap_mean,
    cluster_bootstrap_mean,
    sign_flip_test,
    wilson,
)

Pick = Callable[[Cell], bool]


@dataclass(frozen=True)
class Info:
    """What a report needs to know about a source or target."""

    name: str
    arch: str  # or "ensemble"
    kind: str  # global, local, pooled, insider, outsider
    site: str | None = None


POOLED = "pooled"  # the centrally trained baseline's kind


def pooled_row(arch: str) -> str:
    """The row of `arch`'s pooled model, beside the architecture's own."""
    return f"{arch} ({POOLED})"


def row_of(i: Info) -> str:
    """The row a model's figures go to: its architecture, or its pooled row."""
    return pooled_row(i.arch) if i.kind == POOLED else i.arch


def unpooled(info: dict[str, Info], side: str) -> Pick:
    """Cells whose `side` ('source' or 'target') is not a pooled model."""
    return lambda c: info[getattr(c, side)].kind != POOLED


def both(*picks: Pick) -> Pick:
    """Cells every pick keeps."""
    return lambda c: all(p(c) for p in picks)


def federated(info: dict[str, Info]) -> Pick:
    """Cells with no pooled model on either side (what the federation's means count)."""
    return lambda c: info[c.source].kind != POOLED and info[c.target].kind != POOLED


def rate(c: Cell) -> Interval:
    return wilson(c.n_misclassified_after, c.n_correct_before)


def control_rate(c: Cell) -> Interval:
    if c.n_control_misclassified is None:
        return wilson(0, 0)
    return wilson(c.n_control_misclassified, c.n_correct_before)


def usable(c: Cell) -> bool:
    """A transfer cell that counts in means: not white-box, enough images."""
    return not c.white_box and c.n_correct_before >= MIN_CELL


def flagged(m: Measurement) -> list[Cell]:
    """Transfer cells with too few images for a meaningful interval."""
    return [c for c in m.cells if not c.white_box and c.n_correct_before < MIN_CELL]


@dataclass(frozen=True)
class Group:
    """A mean over models (or cells) with its spread and interval."""

    mean: Interval  # bootstrap interval over the units
    sd: float
    n: int  # units (models or cells)
    images: int  # images behind it (sum of denominators)
    control: Interval

    def to_json(self) -> dict[str, object]:
        return {
            "mean": self.mean.to_json(),
            "sd": round(self.sd, 6),
            "n": self.n,
            "images": self.images,
            "control_mean": self.control.to_json(),
        }

    def text(self) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean.percent()} (sd {100 * self.sd:.1f}, n={self.n}; control {self.control.percent()})"


def group(units: list[list[Cell]], seed: int) -> Group:
    """Mean over units (a unit = the cells of one model, or one cell) of each unit's mean rate."""
    units = [u for u in units if u]
    values = [statistics.fmean(rate(c).value for c in u) for u in units]
    controls = [
        statistics.fmean(control_rate(c).value for c in u)
        for u in units
        if all(c.n_control_misclassified is not None for c in u)
    ]
    return Group(
        mean=bootstrap_mean(values, seed),
        sd=statistics.stdev(values) if len(values) > 1 else 0.0,
        n=len(values),
        images=sum(c.n_correct_before for u in units for c in u),
        control=bootstrap_mean(controls, seed),
    )


def cell_group(cells: list[Cell], seed: int) -> Group:
    """Mean over cells, each cell one unit; its interval a two-way cluster bootstrap over
    the cells' sources and targets (cells that share a source, a target and the images are
    not independent: attack.stats.cluster_bootstrap_mean)."""
    plain = group([[c] for c in cells], seed)
    ctrl = [c for c in cells if c.n_control_misclassified is not None]
    return Group(
        mean=cluster_bootstrap_mean(
            [rate(c).value for c in cells], [c.source for c in cells], [c.target for c in cells], seed
        ),
        sd=plain.sd,
        n=plain.n,
        images=plain.images,
        control=cluster_bootstrap_mean(
            [control_rate(c).value for c in ctrl], [c.source for c in ctrl], [c.target for c in ctrl], seed
        ),
    )


def cells_where(m: Measurement, pick: Pick) -> list[Cell]:
    return [c for c in m.cells if usable(c) and pick(c)]


def by_model(m: Measurement, names: Iterable[str], side: str, pick: Pick) -> list[list[Cell]]:
    """For each model: its usable cells as `side` ('source' or 'target') that `pick` keeps."""
    return [[c for c in cells_where(m, pick) if getattr(c, side) == n] for n in names]


def study_table(m: Measurement, info: dict[str, Info], seed: int) -> dict[str, dict[str, Group]]:
    """row -> {as_source, as_source_same_arch, as_source_cross_arch, as_target, ..., white_box};
    a row per architecture (its federation models), then one per pooled model (row_of).
    A model's cells count with the other side's non-pooled models only."""
    out = {}

    def same(c: Cell) -> bool:
        return info[c.source].arch == info[c.target].arch

    def differ(c: Cell) -> bool:
        return not same(c)

    rows = sorted({row_of(info[n]) for n in m.targets}, key=lambda r: (r.endswith(f"({POOLED})"), r))
    for key in rows:
        models = [n for n in m.targets if row_of(info[n]) == key]
        row = {}
        for side in ("source", "target"):
            other = unpooled(info, "target" if side == "source" else "source")
            picks = {"": other, "_same_arch": both(other, same), "_cross_arch": both(other, differ)}
            for suffix, pick in picks.items():
                row[f"as_{side}{suffix}"] = group(by_model(m, models, side, pick), seed)
        white = [[c] for c in m.cells if c.white_box and c.source in models and c.n_correct_before > 0]
        row["white_box"] = group(white, seed)
        out[key] = row
    return out


def cell_view(m: Measurement, info: dict[str, Info], seed: int) -> dict[str, dict[str, Group]]:
    """row -> {as_source, as_target}: means over every usable cell (not over models); rows
    as study_table's, a cell counted when its other side is not a pooled model."""

    def of_row(side: str, key: str) -> Pick:
        other = unpooled(info, "target" if side == "source" else "source")
        return lambda c: row_of(info[getattr(c, side)]) == key and other(c)

    out = {}
    rows = {row_of(info[n]) for n in m.sources} | {row_of(info[n]) for n in m.targets}
    for key in sorted(rows, key=lambda r: (r.endswith(f"({POOLED})"), r)):
        out[key] = {
            f"as_{side}": cell_group(cells_where(m, of_row(side, key)), seed) for side in ("source", "target")
        }
    return out


def by_target_group(m: Measurement, info: dict[str, Info], seed: int) -> dict[str, Group]:
    """Transfer onto each target architecture and onto global / local targets (means over
    cells of the federation's targets); with pooled models, onto each ("<arch> (pooled)")
    and onto all of them ("pooled targets"). No pooled source counts in any group."""
    fed, src = federated(info), unpooled(info, "source")

    def where(field: str, value: str, base: Pick = fed) -> Pick:
        return lambda c: getattr(info[c.target], field) == value and base(c)

    def pooled_of(arch: str) -> Pick:
        return lambda c: info[c.target].kind == POOLED and info[c.target].arch == arch and src(c)

    archs = sorted({info[n].arch for n in m.targets if info[n].kind != POOLED})
    pooled = sorted({info[n].arch for n in m.targets if info[n].kind == POOLED})
    groups: dict[str, Pick] = {a: where("arch", a) for a in archs}
    groups |= {pooled_row(a): pooled_of(a) for a in pooled}
    groups["global targets"] = where("kind", "global")
    groups["local targets"] = where("kind", "local")
    if pooled:
        groups["pooled targets"] = where("kind", POOLED, src)
    groups["all targets"] = fed
    return {k: cell_group(cells_where(m, pick), seed) for k, pick in groups.items()}


def global_vs_local(m: Measurement, info: dict[str, Info], seed: int) -> tuple[dict[str, Group], PairedTest]:
    """Transfer onto global vs local targets (and, with pooled models, onto them: their own
    row), from the non-pooled sources, and the paired test over sources (the pairs are the
    sources; attack.reports.tables.source_differences)."""
    src = unpooled(info, "source")

    def of_kind(kind: str) -> Pick:
        return lambda c: info[c.target].kind == kind and src(c)

    kinds = ["global", "local"] + ([POOLED] if any(info[n].kind == POOLED for n in m.targets) else [])
    groups = {k: cell_group(cells_where(m, of_kind(k)), seed) for k in kinds}
    return groups, sign_flip_test(source_differences(m, info), seed)


def source_differences(m: Measurement, info: dict[str, Info]) -> list[float]:
    """One difference per source: the mean over architectures of T(source -> global) -
    mean T(source -> locals) of that architecture (usable cells only; the source itself
    is never a target here). Pooled sources are no pair of the federation's comparison."""
    cell = {(c.source, c.target): c for c in m.cells if usable(c)}
    diffs = []
    for src in m.sources:
        if info[src].kind == POOLED:
            continue
        per_arch = []
        for arch in sorted({info[n].arch for n in m.targets}):
            glob = [n for n in m.targets if info[n].arch == arch and info[n].kind == "global"]
            locs = [n for n in m.targets if info[n].arch == arch and info[n].kind == "local"]
            g = [rate(cell[src, t]).value for t in glob if (src, t) in cell]
            loc = [rate(cell[src, t]).value for t in locs if (src, t) in cell]
            if g and loc:
                per_arch.append(statistics.fmean(g) - statistics.fmean(loc))
        if per_arch:
            diffs.append(statistics.fmean(per_arch))
    return diffs


def model_differences(m: Measurement, info: dict[str, Info]) -> list[float]:
    """One difference per architecture with a global and local targets: the global
    model's mean transfer as a target (over its usable cells) minus the mean over the
    locals of each local's (from the non-pooled sources). The unit is the model, the unit a
    claim about global models generalises over."""
    diffs = []
    for arch in sorted({info[n].arch for n in m.targets}):
        per_target = {}
        for name in m.targets:
            cells = [c for c in m.cells if c.target == name and usable(c) and info[c.source].kind != POOLED]
            if info[name].arch == arch and cells:
                per_target[name] = statistics.fmean(rate(c).value for c in cells)
        glob = [v for n, v in per_target.items() if info[n].kind == "global"]
        locs = [v for n, v in per_target.items() if info[n].kind == "local"]
        if glob and locs:
            diffs.append(statistics.fmean(glob) - statistics.fmean(locs))
    return diffs


def model_level(m: Measurement, info: dict[str, Info], seed: int) -> PairedTest:
    """Global vs local targets at the level of models: an exact sign-flip test over the
    architectures' global-minus-locals differences (model_differences). With three
    architectures the smallest possible p-value is 0.25."""
    return sign_flip_test(model_differences(m, info), seed)


def over_control(m: Measurement, seed: int, info: dict[str, Info] | None = None) -> PairedTest:
    """Does the attack fool the targets more than random-sign noise at the same eps? For
    each target, the mean over its usable cells of transfer minus control (the same
    images, the same target); an exact sign-flip test over the targets (the classifiers
    the question is about; a target's cells share it, so they are one unit). With `info`,
    the federation's cells only (no pooled model on either side), as its other means."""
    keep = federated(info) if info is not None else (lambda c: True)
    diffs = []
    for name in m.targets:
        cells = [
            c
            for c in m.cells
            if c.target == name and usable(c) and c.n_control_misclassified is not None and keep(c)
        ]
        if cells:
            diffs.append(statistics.fmean(rate(c).value - control_rate(c).value for c in cells))
    return sign_flip_test(diffs, seed)
