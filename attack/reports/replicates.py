"""`fedattack study --seeds`: the report over independently trained replicates (one
federation per seed and variant, all on one split). Every figure of the per-seed reports
(attack.reports.variants) as the mean over seeds with the between-seed sd and a t 95%
interval; the global-vs-local tests pooled over seeds (the per-source differences of
every seed, and the model-level differences of every seed's architectures, in one
sign-flip test whose flips stay within a seed's pair: stratified by seed). Written from
the same records as the per-seed reports and the tidy tables (attack.reports.tidy)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from attack.reports.figures import Estimate, PairedFigure
from attack.reports.readback import VariantRecords
from attack.reports.summary import StudyMeta, VariantSummary
from attack.reports.tables import Info, model_differences, source_differences
from attack.reports.tidy import write_tidy
from attack.stats import Replicated, over_replicates, sign_flip_test
from shared.config.study import StudyConfig
from shared.io import atomic_write

# seed -> variant -> its summary, or why it failed
BySeed = Mapping[int, Mapping[str, VariantSummary | str]]


def _value(e: Estimate | None) -> float:
    return math.nan if e is None or e.value is None else e.value


def figures(v: VariantSummary, arch: str, study: StudyConfig) -> dict[str, float]:
    """One seed's figures for one architecture, by name (NaN where undefined)."""
    r = v.architectures.get(arch)
    if r is None:
        return {}
    out = {
        "clean AUC, global": _value(r.clean_auc_global),
        "clean AUC, locals (mean)": math.nan if r.clean_auc_locals.mean is None else r.clean_auc_locals.mean,
        f"robust accuracy ({study.robust_attack}), global": _value(r.robust_accuracy_global),
        f"robust accuracy ({study.robust_attack}), locals": _value(r.robust_accuracy_locals),
    }
    if r.clean_auc_pooled is not None:  # the pooled baseline's own figures
        out["clean AUC, pooled baseline"] = _value(r.clean_auc_pooled)
        out[f"robust accuracy ({study.robust_attack}), pooled baseline"] = _value(r.robust_accuracy_pooled)
    for label, transfer in (("", r.transfer), ("pooled baseline ", r.transfer_pooled)):
        for key, t in transfer.items():
            if t.as_source is not None and t.as_target is not None:
                out[f"{key}: {label}transfer as source"] = _value(t.as_source.mean)
                out[f"{key}: {label}transfer as target"] = _value(t.as_target.mean)
            out[f"{key}: {label}transfer onto the {'model' if label else 'architecture'}"] = _value(
                t.onto_architecture.mean
            )
    return out


def replicated(by_seed: BySeed, study: StudyConfig) -> dict[str, dict[str, dict[str, Replicated]]]:
    """variant -> architecture -> figure -> over the seeds that measured it."""
    out: dict[str, dict[str, dict[str, Replicated]]] = {}
    for v in study.variants:
        ok = [r[v.name] for r in by_seed.values() if isinstance(r.get(v.name), VariantSummary)]
        summaries = [x for x in ok if isinstance(x, VariantSummary)]
        archs = sorted({a for x in summaries for a in x.architectures})
        out[v.name] = {}
        for arch in archs:
            per_seed = [figures(x, arch, study) for x in summaries]
            names = list(dict.fromkeys(n for f in per_seed for n in f))
            out[v.name][arch] = {n: over_replicates([f.get(n, math.nan) for f in per_seed]) for n in names}
    return out


@dataclass(frozen=True)
class Pooled:
    """One variant's (attack, threat) global-vs-local tests, pooled over seeds."""

    per_source: PairedFigure  # each seed's sources' differences
    model_level: PairedFigure  # each seed's architectures' differences
    seeds: int

    def to_json(self) -> dict[str, object]:
        return {
            "per_source": self.per_source.to_json(),
            "model_level": self.model_level.to_json(),
            "seeds": self.seeds,
        }


def pooled_tests(
    records: Mapping[tuple[int, str], VariantRecords], variant: str, key: str, seed: int
) -> Pooled:
    """The global-vs-local tests of `variant`'s (attack, threat) `key` over every seed."""
    sources: list[float] = []
    models: list[float] = []
    seeds = 0
    for (_, name), rec in sorted(records.items()):
        if name != variant or key not in rec.measured:
            continue
        m, src = rec.measured[key]
        info = {x.name: Info(x.name, x.arch, x.kind, x.site) for x in rec.models}
        for s, i in src.items():
            info.setdefault(s, i)
        sources += source_differences(m, info)
        models += model_differences(m, info)
        seeds += 1
    return Pooled(
        PairedFigure.of(sign_flip_test(sources, seed)), PairedFigure.of(sign_flip_test(models, seed)), seeds
    )


def _shown(r: Replicated, scale: float, digits: int) -> str:
    if not r.values:
        return "n/a"
    mean = f"{scale * r.mean:.{digits}f}"
    if math.isnan(r.sd):
        return f"{mean} (one seed)"
    return (
        f"{mean} (sd {scale * r.sd:.{digits}f}) [{scale * r.interval.low:.{digits}f}, "
        f"{scale * r.interval.high:.{digits}f}]"
    )


def _test(t: PairedFigure, units: str) -> str:
    d = t.mean_difference
    if d.value is None:
        return "no pairs"
    span = "" if d.low is None or d.high is None else f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
    p = "n/a" if t.p_value is None else f"{t.p_value:.3g}"
    kind = "exact" if t.exact else "Monte Carlo"
    verdict = "significant" if t.significant else "not significant"
    return f"{100 * d.value:+.1f} points{span} over {t.n_pairs} {units}, {kind} p = {p} ({verdict})"


def replicates_md(
    by_seed: BySeed,
    records: Mapping[tuple[int, str], VariantRecords],
    study: StudyConfig,
    eps: float,
    seed: int,
) -> str:
    seeds = list(by_seed)
    lines = [
        f"# Study over {len(seeds)} seeds",
        "",
        f"Seeds {', '.join(map(str, seeds))}: for each seed and variant an independently trained federation "
        f"on the same split (the config's seed's), attacked by {', '.join(study.attacks)} at eps {eps:g} "
        f"under {', '.join(study.threats)}. Each figure: the mean over seeds (sd between seeds) [t 95% "
        "interval of the mean, over seeds, clipped to the figure's range]. Percentages for transfer "
        "and robust accuracy. Per-seed reports: "
        + ", ".join(f"[seeds/{s}/study.md](seeds/{s}/study.md)" for s in seeds)
        + "; every cell of every seed: transfer.csv, clean.csv.",
        "",
    ]
    for s, of_seed in by_seed.items():
        for name, summary in of_seed.items():
            if isinstance(summary, str):
                lines.append(f"**{name} failed on seed {s}**: {summary}")
    table = replicated(by_seed, study)
    lines += ["", "| variant | architecture | figure | mean (sd) [95% CI] | seeds |", "|---|---|---|---|---|"]
    for name, archs in table.items():
        for arch, figs in archs.items():
            for fig, rep in figs.items():
                scale, digits = (1, 3) if fig.startswith("clean AUC") else (100, 1)
                lines.append(
                    f"| {name} | {arch} | {fig} | {_shown(rep, scale, digits)} | {len(rep.values)} |"
                )
    lines += [
        "",
        "## Global vs local targets, pooled over seeds",
        "",
        "Per source: every seed's per-source differences (global target minus the locals of the same "
        "architecture) in one sign-flip test; model level: every seed's per-architecture differences "
        "(the global model's mean as a target minus its locals'). A flip changes the sign of one seed's "
        "pair, so the test is stratified by seed.",
        "",
    ]
    for variant in study.variants:
        for key in [f"{a}/{t}" for a in study.attacks for t in study.threats]:
            p = pooled_tests(records, variant.name, key, seed)
            if p.seeds:
                lines.append(
                    f"- {variant.name}, {key}: per source {_test(p.per_source, 'sources')}; "
                    f"model level {_test(p.model_level, 'architectures')}"
                )
    return "\n".join(lines) + "\n"


def replicates_json(
    by_seed: BySeed,
    records: Mapping[tuple[int, str], VariantRecords],
    study: StudyConfig,
    meta: StudyMeta,
) -> dict[str, object]:
    keys = [f"{a}/{t}" for a in study.attacks for t in study.threats]
    return {
        **meta.to_json(),
        "seeds": list(by_seed),
        "replicates": {
            n: {a: {f: r.to_json() for f, r in figs.items()} for a, figs in archs.items()}
            for n, archs in replicated(by_seed, study).items()
        },
        "pooled_global_vs_local": {
            v.name: {k: pooled_tests(records, v.name, k, meta.seed).to_json() for k in keys}
            for v in study.variants
        },
        "failed": {str(s): {n: v for n, v in r.items() if isinstance(v, str)} for s, r in by_seed.items()},
        "per_seed": {str(s): f"seeds/{s}/study.json" for s in by_seed},
    }


def write_replicates(
    out: Path,
    by_seed: BySeed,
    records: Mapping[tuple[int, str], VariantRecords],
    study: StudyConfig,
    eps: float,
    meta: StudyMeta,
) -> Path:
    """study.md and study.json over seeds, and the tidy tables of every seed, in `out`."""
    write_tidy(out, records)
    body = replicates_json(by_seed, records, study, meta)
    atomic_write(out / "study.json", json.dumps(body, indent=1, default=str))
    atomic_write(out / "study.md", replicates_md(by_seed, records, study, eps, meta.seed))
    return out / "study.md"
