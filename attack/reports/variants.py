"""`fedattack study`'s report: every variant side by side, read back from the attack's own
results (results.json of the study's FGSM run for clean performance, the suite's
results.json per (attack, threat) for the rest), so the figures are those of the same
attack code on the same held-out test images, with the same statistics (attack.reports.tables).

Per variant and architecture, global model and locals apart (and the pooled baseline,
when the store holds one, in its own columns and rows):
- clean test AUC (DeLong 95% interval; locals: mean and range);
- white-box robust accuracy under `robust_attack` (member threat): the share of the
  attacked images (pneumonia, correct before) the model still gets right after its own
  attack, Wilson 95% interval (locals: counts pooled over the four);
- transferability as source and as target (member threat: the study's per-model means
  with bootstrap intervals), and onto the architecture (other threats: cell means);
- global vs local as targets: the paired sign-flip test, "not significant" when it is not.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from attack.measure.core import Cell, Measurement
from attack.reports.compare import defense_effects_md, scatter_png
from attack.reports.diversity import diversity_md
from attack.reports.figures import CleanFigures, Estimate, GlobalVsLocal, GroupFigure, PairedFigure, shown
from attack.reports.readback import VariantRecords, read_variant
from attack.reports.summary import (
    ArchSummary,
    Counts,
    LocalAucs,
    ModelSummary,
    StudyMeta,
    Transfer,
    Variants,
    VariantSummary,
    study_json,
)
from attack.reports.tables import (
    POOLED,
    Group,
    Info,
    by_target_group,
    global_vs_local,
    model_level,
    pooled_row,
    study_table,
)
from attack.reports.tidy import Records, write_tidy
from attack.stats import Interval, wilson
from shared.config.study import StudyConfig
from shared.io import atomic_write


def _robust(cells: list[Cell]) -> Interval:
    n = sum(c.n_correct_before for c in cells)
    return wilson(n - sum(c.n_misclassified_after for c in cells), n)


def _counts(cells: list[Cell]) -> Counts:
    """Robust accuracy's counts: still right after the attack (k) of right before (n)."""
    n = sum(c.n_correct_before for c in cells)
    return Counts(n - sum(c.n_misclassified_after for c in cells), n)


@dataclass(frozen=True)
class _Measured:
    """One (attack, threat) of a variant, read back, with its tables."""

    m: Measurement
    table: dict[str, dict[str, Group]] | None  # the study's table: member threat only
    targets: dict[str, Group]  # by target group
    global_vs_local: GlobalVsLocal


def _measured(
    m: Measurement, sources: dict[str, Info], info: dict[str, Info], member: bool, seed: int
) -> _Measured:
    full = dict(info)
    for s, i in sources.items():
        full.setdefault(s, i)
    groups, test = global_vs_local(m, full, seed)
    return _Measured(
        m,
        study_table(m, full, seed) if member else None,
        by_target_group(m, full, seed),
        GlobalVsLocal.of(groups, test, model_level(m, full, seed)),
    )


def _transfer(x: _Measured, row: str) -> Transfer:
    """The figures of an architecture's row (or its pooled model's, pooled_row)."""
    onto = GroupFigure.of(x.targets[row])
    if x.table is None:
        return Transfer(onto)
    t = x.table[row]
    return Transfer(onto, GroupFigure.of(t["as_source"]), GroupFigure.of(t["as_target"]))


def _architecture(
    arch: str,
    info: dict[str, Info],
    clean: dict[str, CleanFigures],
    robust: Measurement,
    measured: dict[str, _Measured],
) -> ArchSummary:
    glob = [n for n, i in info.items() if i.arch == arch and i.kind == "global"]
    locs = [n for n, i in info.items() if i.arch == arch and i.kind == "local"]
    pooled = [n for n, i in info.items() if i.arch == arch and i.kind == POOLED]
    white = {c.target: c for c in robust.cells if c.white_box}
    aucs = [a for n in locs if (a := clean[n].auc.value) is not None]
    return ArchSummary(
        clean_auc_global=clean[glob[0]].auc if glob else None,
        clean_auc_locals=LocalAucs(
            statistics.fmean(aucs) if aucs else None,
            min(aucs, default=None),
            max(aucs, default=None),
            len(aucs),
        ),
        robust_accuracy_global=Estimate.of(_robust([white[n] for n in glob if n in white])),
        robust_counts_global=_counts([white[n] for n in glob if n in white]),
        robust_accuracy_locals=Estimate.of(_robust([white[n] for n in locs if n in white])),
        transfer={key: _transfer(x, arch) for key, x in measured.items()},
        clean_auc_pooled=clean[pooled[0]].auc if pooled else None,
        robust_accuracy_pooled=Estimate.of(_robust([white[n] for n in pooled if n in white]))
        if pooled
        else None,
        transfer_pooled={key: _transfer(x, pooled_row(arch)) for key, x in measured.items()}
        if pooled
        else {},
    )


def _own_robust_accuracy(robust: Measurement, name: str) -> float | None:
    """The model's robust accuracy under its own white-box attack (None: not measured)."""
    cell = next((c for c in robust.cells if c.white_box and c.target == name), None)
    return None if cell is None else Estimate.of(_robust([cell])).value


def variant_summary(attack_dir: Path, study: StudyConfig, eps: float, seed: int) -> VariantSummary:
    """One variant's figures per architecture, from its attack's results.json files."""
    return summarize(read_variant(attack_dir, study.attacks, study.threats), study, eps, seed)


def summarize(records: VariantRecords, study: StudyConfig, eps: float, seed: int) -> VariantSummary:
    """One variant's figures per architecture, from its results read back."""
    info = {m.name: Info(m.name, m.arch, m.kind, m.site) for m in records.models}
    clean = {m.name: m.clean_test for m in records.models}
    measured = {
        key: _measured(m, sources, info, key.endswith("/member"), seed)
        for key, (m, sources) in records.measured.items()
    }
    robust = measured[f"{study.robust_attack}/member"].m
    return VariantSummary(
        architectures={
            arch: _architecture(arch, info, clean, robust, measured)
            for arch in sorted({i.arch for i in info.values()})
        },
        global_vs_local={key: x.global_vs_local for key, x in measured.items()},
        models={
            n: ModelSummary(i.arch, i.kind, clean[n].auc.value, _own_robust_accuracy(robust, n))
            for n, i in info.items()
        },
        eps=eps,
        reach={key: GroupFigure.of(x.targets["all targets"]) for key, x in measured.items()},
        site_architectures={
            site: tuple(sorted({i.arch for i in info.values() if i.kind == "local" and i.site == site}))
            for site in sorted({i.site for i in info.values() if i.kind == "local" and i.site})
        },
    )


def _pct(d: Estimate | None) -> str:
    return shown(d, 100, ".1f", "%")


def _auc(d: Estimate | None) -> str:
    return shown(d, 1, ".3f")


def _group(d: GroupFigure | None) -> str:
    return f"{_pct(d.mean)} (n={d.n})" if d is not None and d.n else "n/a"


def _span(loc: LocalAucs) -> str:
    if loc.mean is None or loc.min is None or loc.max is None:
        return "n/a"
    return f"{loc.mean:.3f} ({loc.min:.3f}-{loc.max:.3f})"


def study_md(variants: Variants, study: StudyConfig, eps: float) -> str:
    """The side-by-side report; a variant given as a string failed, with that reason."""
    ok = {k: v for k, v in variants.items() if isinstance(v, VariantSummary)}
    pooled = any(r.clean_auc_pooled is not None for v in ok.values() for r in v.architectures.values())
    lines = [
        "# Study of variants",
        "",
        f"Variants: {', '.join(variants)}. Attacks {', '.join(study.attacks)} at eps {eps:g} under "
        f"threat models {', '.join(study.threats)}, on the same held-out test images for every variant.",
        "Every figure carries its 95% interval (AUC: DeLong; rates: Wilson; means: bootstrap).",
        "",
    ]
    failed = {k: v for k, v in variants.items() if isinstance(v, str)}
    for name, reason in failed.items():
        lines.append(f"**{name} failed**: {reason}")
    if failed:
        lines.append("")
    lines += [
        f"## Clean AUC and white-box robust accuracy ({study.robust_attack}, member threat)",
        "",
        "Robust accuracy: of the pneumonia images a model classified correctly, the share it",
        "still classifies correctly after its own white-box attack (locals: pooled over four).",
        "",
        "| variant | architecture | clean AUC global | clean AUC locals (mean, range) "
        "| robust acc. global | robust acc. locals |"
        + (" clean AUC pooled | robust acc. pooled |" if pooled else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if pooled else ""),
    ]
    for name, v in ok.items():
        for arch, r in v.architectures.items():
            lines.append(
                f"| {name} | {arch} | {_auc(r.clean_auc_global)} | {_span(r.clean_auc_locals)} "
                f"| {_pct(r.robust_accuracy_global)} | {_pct(r.robust_accuracy_locals)} |"
                + (f" {_auc(r.clean_auc_pooled)} | {_pct(r.robust_accuracy_pooled)} |" if pooled else "")
            )
    if pooled:
        lines += [
            "",
            "Pooled: the baseline trained centrally on every site's training data "
            "(`federation.pooled_baseline`); its transfer rows are marked (pooled) below.",
        ]
    lines += defense_effects_md(ok, study.robust_attack)
    lines += diversity_md(ok)
    lines += ["", "## Transferability", ""]
    for key in [f"{a}/{t}" for a in study.attacks for t in study.threats]:
        lines += _transfer_md(ok, key)
    return "\n".join(lines) + "\n"


def _transfer_md(ok: dict[str, VariantSummary], key: str) -> list[str]:
    """One (attack, threat)'s section: the table, then each variant's global-vs-local test."""
    attack, threat = key.split("/")
    member = threat == "member"
    lines = [f"### {attack}, {threat} threat", ""]
    if member:
        lines += ["| variant | architecture | as source | as target |", "|---|---|---|---|"]
    else:
        lines += ["| variant | architecture | onto the architecture |", "|---|---|---|"]
    for name, v in ok.items():
        for arch, r in v.architectures.items():
            for row, t in ((arch, r.transfer[key]), (pooled_row(arch), r.transfer_pooled.get(key))):
                if t is None:
                    continue
                cols = [t.as_source, t.as_target] if member else [t.onto_architecture]
                lines.append(f"| {name} | {row} | " + " | ".join(_group(c) for c in cols) + " |")
    lines.append("")
    for name, v in ok.items():
        g = v.global_vs_local[key]
        lines.append(f"- {name}: " + _paired(g.paired_test))
        if g.model_level is not None:
            lines.append("  - model level (over architectures): " + _paired(g.model_level, "architectures"))
    lines.append("")
    return lines


def _paired(test: PairedFigure, units: str = "sources") -> str:
    """Global minus local targets, in words (an interval or p-value may be missing when
    there are too few pairs)."""
    diff = test.mean_difference
    if diff.value is None:
        return "global vs local targets: no pairs to compare"
    verdict = "significant" if test.significant else "not significant"
    span = (
        f" [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}]"
        if diff.low is not None and diff.high is not None
        else " (no interval)"
    )
    p = "n/a" if test.p_value is None else test.p_value
    return (
        f"global minus local targets {100 * diff.value:+.1f} points{span} over "
        f"{test.n_pairs} {units}, p = {p} ({verdict})"
    )


def write_study(
    out: Path, variants: Variants, study: StudyConfig, eps: float, meta: StudyMeta, records: Records
) -> Path:
    """study.json, study.md, study.png and the tidy tables (transfer.csv, clean.csv: every
    (seed, variant) of `records`, the records `variants` were summarized from) in `out`;
    returns the report's path."""
    write_tidy(out, records)
    atomic_write(out / "study.json", json.dumps(study_json(meta, variants), indent=1, default=str))
    atomic_write(out / "study.md", study_md(variants, study, eps))
    scatter_png(variants, out / "study.png")
    return out / "study.md"
