"""`fedattack study`'s report: every variant side by side, read back from the attack's own
results (results.json of the study's FGSM run for clean performance, the suite's
results.json per (attack, threat) for the rest), so the figures are those of the same
attack code on the same held-out test images, with the same statistics (attack.reports.tables).

Per variant and architecture, global model and locals apart:
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
from pathlib import Path
from typing import Any

from attack.measure.core import Cell, Measurement
from attack.reports.compare import defense_effects_md, scatter_png
from attack.reports.tables import Group, Info, by_target_group, global_vs_local, study_table
from attack.stats import Interval, wilson
from shared.config.study import StudyConfig
from shared.io import atomic_write


def read_measurement(path: Path) -> tuple[Measurement, dict[str, str]]:
    """A suite results.json back as a Measurement, and each source's arch/kind."""
    d = json.loads(path.read_text())
    cells = [
        Cell(
            c["source"],
            c["target"],
            c["n_correct_before"],
            c["n_misclassified_after"],
            c["n_control_misclassified"],
            c["white_box"],
        )
        for c in d["cells"]
    ]
    sources = list(d["sources"])
    targets = list(dict.fromkeys(c.target for c in cells))
    m = Measurement(d["attack"], d["eps"], sources, targets, cells=cells)
    return m, {s: f"{v['arch']}/{v['kind']}" for s, v in d["sources"].items()}


def _iv(i: Interval) -> dict[str, Any]:
    return i.to_json()


def _robust(cells: list[Cell]) -> Interval:
    n = sum(c.n_correct_before for c in cells)
    return wilson(n - sum(c.n_misclassified_after for c in cells), n)


def _counts(cells: list[Cell]) -> dict[str, int]:
    """Robust accuracy's counts: still right after the attack (k) of right before (n)."""
    n = sum(c.n_correct_before for c in cells)
    return {"k": n - sum(c.n_misclassified_after for c in cells), "n": n}


def variant_summary(attack_dir: Path, study: StudyConfig, eps: float, seed: int) -> dict[str, Any]:
    """One variant's figures per architecture (JSON-able)."""
    main = json.loads((attack_dir / "results.json").read_text())
    info = {m["name"]: Info(m["name"], m["arch"], m["kind"], m["site"]) for m in main["models"]}
    clean = {m["name"]: m["clean_test"] for m in main["models"]}
    measured: dict[str, dict[str, Any]] = {}
    for attack in study.attacks:
        for threat in study.threats:
            m, kinds = read_measurement(attack_dir / "suite" / f"{attack}-{threat}" / "results.json")
            full = dict(info)
            for s, ak in kinds.items():
                arch, kind = ak.split("/", 1)
                full.setdefault(s, Info(s, arch, kind))
            groups, test = global_vs_local(m, full, seed)
            measured[f"{attack}/{threat}"] = {
                "m": m,
                "info": full,
                "table": study_table(m, full, seed) if threat == "member" else None,
                "targets": by_target_group(m, full, seed),
                "global_vs_local": {"groups": groups, "test": test},
            }
    robust = measured[f"{study.robust_attack}/member"]["m"]
    out: dict[str, Any] = {"architectures": {}, "global_vs_local": {}, "models": {}}
    for arch in sorted({i.arch for i in info.values()}):
        glob = [n for n, i in info.items() if i.arch == arch and i.kind == "global"]
        locs = [n for n, i in info.items() if i.arch == arch and i.kind == "local"]
        white = {c.target: c for c in robust.cells if c.white_box}
        aucs = [clean[n]["auc"]["value"] for n in locs if clean[n]["auc"]["value"] is not None]
        row: dict[str, Any] = {
            "clean_auc_global": clean[glob[0]]["auc"] if glob else None,
            "clean_auc_locals": {
                "mean": statistics.fmean(aucs) if aucs else None,
                "min": min(aucs, default=None),
                "max": max(aucs, default=None),
                "n_models": len(aucs),
            },
            "robust_accuracy_global": _iv(_robust([white[n] for n in glob if n in white])),
            "robust_counts_global": _counts([white[n] for n in glob if n in white]),
            "robust_accuracy_locals": _iv(_robust([white[n] for n in locs if n in white])),
            "transfer": {},
        }
        for key, x in measured.items():
            entry: dict[str, Any] = {"onto_architecture": x["targets"][arch].to_json()}
            if x["table"] is not None:
                t: dict[str, Group] = x["table"][arch]
                entry |= {"as_source": t["as_source"].to_json(), "as_target": t["as_target"].to_json()}
            row["transfer"][key] = entry
        out["architectures"][arch] = row
    for key, x in measured.items():
        gl = x["global_vs_local"]
        out["global_vs_local"][key] = {
            "as_target": {k: g.to_json() for k, g in gl["groups"].items()},
            "paired_test": gl["test"].to_json(),
        }
    for n, i in info.items():
        cell = next((c for c in robust.cells if c.white_box and c.target == n), None)
        out["models"][n] = {
            "arch": i.arch,
            "kind": i.kind,
            "clean_auc": clean[n]["auc"]["value"],
            "robust_accuracy": None if cell is None else _iv(_robust([cell]))["value"],
        }
    out["eps"] = eps
    return out


def _shown(d: dict[str, Any] | None, scale: float, fmt: str, unit: str = "") -> str:
    """An interval's JSON as text: value [low, high], or the value alone when the
    interval is missing, or n/a."""
    if not d or d.get("value") is None:
        return "n/a"
    value = f"{scale * d['value']:{fmt}}{unit}"
    if d.get("low") is None or d.get("high") is None:
        return f"{value} (no interval)"
    return f"{value} [{scale * d['low']:{fmt}}, {scale * d['high']:{fmt}}]"


def _pct(d: dict[str, Any] | None) -> str:
    return _shown(d, 100, ".1f", "%")


def _auc(d: dict[str, Any] | None) -> str:
    return _shown(d, 1, ".3f")


def _group(d: dict[str, Any]) -> str:
    return f"{_pct(d['mean'])} (n={d['n']})" if d["n"] else "n/a"


def study_md(variants: dict[str, dict[str, Any] | str], study: StudyConfig, eps: float) -> str:
    """The side-by-side report; a variant given as a string failed, with that reason."""
    ok = {k: v for k, v in variants.items() if isinstance(v, dict)}
    lines = [
        "# Defense study",
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
        "| robust acc. global | robust acc. locals |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in ok.items():
        for arch, r in v["architectures"].items():
            loc = r["clean_auc_locals"]
            span = (
                f"{loc['mean']:.3f} ({loc['min']:.3f}-{loc['max']:.3f})" if loc["mean"] is not None else "n/a"
            )
            lines.append(
                f"| {name} | {arch} | {_auc(r['clean_auc_global'])} | {span} "
                f"| {_pct(r['robust_accuracy_global'])} | {_pct(r['robust_accuracy_locals'])} |"
            )
    lines += defense_effects_md(ok, study.robust_attack)
    lines += ["", "## Transferability", ""]
    for key in [f"{a}/{t}" for a in study.attacks for t in study.threats]:
        attack, threat = key.split("/")
        member = threat == "member"
        lines += [f"### {attack}, {threat} threat", ""]
        if member:
            lines += ["| variant | architecture | as source | as target |", "|---|---|---|---|"]
        else:
            lines += ["| variant | architecture | onto the architecture |", "|---|---|---|"]
        for name, v in ok.items():
            for arch, r in v["architectures"].items():
                t = r["transfer"][key]
                cols = [t["as_source"], t["as_target"]] if member else [t["onto_architecture"]]
                lines.append(f"| {name} | {arch} | " + " | ".join(_group(c) for c in cols) + " |")
        lines.append("")
        for name, v in ok.items():
            lines.append(f"- {name}: " + _paired(v["global_vs_local"][key]["paired_test"]))
        lines.append("")
    return "\n".join(lines) + "\n"


def _paired(test: dict[str, Any]) -> str:
    """Global minus local targets, in words (an interval or p-value may be missing when
    there are too few pairs)."""
    diff = test["mean_difference"]
    if diff.get("value") is None:
        return "global vs local targets: no pairs to compare"
    verdict = "significant" if test["significant_at_0.05"] else "not significant"
    span = (
        f" [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"
        if diff.get("low") is not None and diff.get("high") is not None
        else " (no interval)"
    )
    p = "n/a" if test.get("p_value") is None else test["p_value"]
    return (
        f"global minus local targets {100 * diff['value']:+.1f} points{span} over "
        f"{test['n_pairs']} sources, p = {p} ({verdict})"
    )


def write_study(
    out: Path, variants: dict[str, dict[str, Any] | str], study: StudyConfig, eps: float, meta: dict[str, Any]
) -> Path:
    """study.json, study.md and study.png in `out`; returns the report's path."""
    body = {**meta, "variants": variants}
    atomic_write(out / "study.json", json.dumps(body, indent=1, default=str))
    atomic_write(out / "study.md", study_md(variants, study, eps))
    scatter_png(variants, out / "study.png")
    return out / "study.md"
