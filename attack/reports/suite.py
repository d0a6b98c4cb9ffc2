"""suite.md (every attack and threat side by side, each figure with its n, interval and
control) and the eps-sweep curves (sweep.png, sweep.json)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from attack.reports.figures import Estimate
from attack.reports.records import SuiteMeta, SuiteRow
from attack.reports.study import md_safe
from attack.reports.tables import Group, group
from attack.stats import Interval, PairedTest, holm
from shared.io import atomic_path, atomic_write

if TYPE_CHECKING:
    from attack.measure.core import SuiteRequest

THREAT_TEXT = {
    "member": "each federation model attacks on its own (the study's setting)",
    "insider": "a site crafts on its own local models (every architecture) plus the globals it received",
    "outsider": "surrogates trained on public data no site holds: no federation weights at all",
}
ENSEMBLE_TEXT = {
    "logits": "the cross-entropy of their members' mean logits",
    "scaled": "the cross-entropy of their members' mean logits, each member's divided by the sd "
    "of its margin on the fit part of the attack images (results.json lists the scales), so "
    "that no member's logit scale decides alone",
    "loss": "the mean of their members' cross-entropies",
}
Rows = Mapping[tuple[str, str, float], SuiteRow]  # (attack, threat, eps) -> its row


def _cell(g: Group) -> str:
    if g.n == 0:
        return "n/a"
    return f"{g.mean.percent()} (n={g.n}/{g.images}; ctrl {100 * g.control.value:.1f}%)"


def _versus(test: PairedTest, adjusted: float) -> str:
    """One row's cells: the difference, its n, the raw and Holm-adjusted p, the verdict."""
    if test.n == 0 or math.isnan(adjusted):
        return "n/a | 0 | n/a | n/a | n/a"
    d = test.mean_difference
    diff = f"{100 * d.value:+.1f} points" + (
        "" if math.isnan(d.low) else f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
    )
    verdict = "significant" if adjusted < 0.05 else "**not significant**"
    return f"{diff} | {test.n} | {test.p_value:.2g} | {adjusted:.2g} | {verdict}"


def suite_md(rows: Rows, req: SuiteRequest, eps: float, meta: SuiteMeta) -> str:
    fixed = ("global targets", "local targets", "all targets")
    archs = sorted({k for r in rows.values() for k in r.groups} - set(fixed))
    cols = [*archs, *fixed]
    lines = [
        "# Attack suite: every attack under every threat model",
        "",
        f"eps = {eps} (L-infinity, [0, 1] pixel space) on {meta.n_images} pneumonia images of the "
        "held-out test sets. Threat models:",
        "",
        *[f"- **{t}**: {THREAT_TEXT[t]}" for t in req.threats],
        "",
        f"Ensembles craft on {ENSEMBLE_TEXT[meta.ensemble.mode]} (`attack.suite.ensemble: "
        f"{meta.ensemble.mode}`).",
        "",
        "Each figure: the mean transferability over the usable transfer cells of the group [bootstrap "
        "95% interval over cells], n = cells/images behind them, and the mean random-sign control at "
        "the same eps (ctrl). Cells where the target is one of the surrogates (white-box) and cells "
        "with fewer than 10 images are left out; each folder's results.json lists every cell.",
        "",
        f"## Transfer at eps {eps}",
        "",
        "| attack | threat | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for a in req.attacks:
        for t in req.threats:
            r = rows[a, t, eps]
            lines.append(
                f"| [{a}]({r.folder}/results.json) | {t} | "
                + " | ".join(_cell(r.groups[c]) if c in r.groups else "n/a" for c in cols)
                + " |"
            )
    lines += [
        "",
        f"## The attack against noise at eps {eps}",
        "",
        "For each target, the mean over its transfer cells of transfer minus the random-sign "
        "control (same images, same target), then the mean over targets [bootstrap 95% interval] "
        "and a sign-flip test over the targets (two-sided; exact up to 20 targets, seeded Monte "
        "Carlo above). The verdict is at 0.05 after Holm's adjustment for every test of this table "
        "(the raw p beside it).",
        "",
        "| attack | threat | transfer - control | targets | p | p (Holm) | at 0.05 |",
        "|---|---|---|---|---|---|---|",
    ]
    tests = [rows[a, t, eps].over_control for a in req.attacks for t in req.threats]
    adjusted = iter(holm([x.p_value for x in tests]))
    for a in req.attacks:
        for t in req.threats:
            lines.append(f"| {a} | {t} | {_versus(rows[a, t, eps].over_control, next(adjusted))} |")
    lines += [
        "",
        "## White-box (the target is one of the surrogates)",
        "",
        "| attack | threat | mean over cells |",
        "|---|---|---|",
    ]
    for a in req.attacks:
        for t in req.threats:
            cells = rows[a, t, eps].white_box
            lines.append(f"| {a} | {t} | {_cell(group([[c] for c in cells], meta.seed))} |")
    if req.sweep_attacks:
        lines += [
            "",
            "## eps sweep (all targets)",
            "",
            "| attack | threat | " + " | ".join(f"eps {e:g}" for e in req.sweep_eps) + " |",
            "|---|---|" + "---|" * len(req.sweep_eps),
        ]
        for a in req.sweep_attacks:
            for t in req.threats:
                lines.append(
                    f"| {a} | {t} | "
                    + " | ".join(_cell(rows[a, t, e].groups["all targets"]) for e in req.sweep_eps)
                    + " |"
                )
        lines += ["", "![transfer against eps](sweep.png)"]
    empty = [(k, r.empty) for k, r in rows.items() if r.empty]
    if empty:
        lines += ["", "## Empty rows", "", "Sources that classified none of the attack images correctly:", ""]
        lines += [
            f"- {a} {t} eps {e:g}: {', '.join(md_safe(x) for x in names)}" for (a, t, e), names in empty
        ]
    return "\n".join(lines) + "\n"


def _sweep(rows: Rows, req: SuiteRequest) -> dict[str, dict[str, list[tuple[float, Group]]]]:
    """Per panel ("attack/threat"), per target group: (eps, its figure) along the sweep."""
    points: dict[str, dict[str, list[tuple[float, Group]]]] = {}
    for a in req.sweep_attacks:
        for t in req.threats:
            for e in req.sweep_eps:
                for k, g in rows[a, t, e].groups.items():
                    points.setdefault(f"{a}/{t}", {}).setdefault(k, []).append((e, g))
    return points


def _plotted(i: Interval) -> float:
    """A rate in percent as sweep.json publishes it (undefined: 0)."""
    return 100 * (Estimate.of(i).value or 0)


def sweep_png(rows: Rows, req: SuiteRequest, png: Path, js: Path) -> None:
    """Transfer against eps, one panel per (attack, threat), one line per target architecture."""
    points = _sweep(rows, req)
    body = {
        panel: {k: [{"eps": e, **g.to_json()} for e, g in pts] for k, pts in curves.items()}
        for panel, curves in points.items()
    }
    atomic_write(js, json.dumps(body, indent=1))
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_a, n_t = len(req.sweep_attacks), len(req.threats)
    fig, axes = plt.subplots(n_a, n_t, figsize=(4.2 * n_t, 3.4 * n_a), squeeze=False, sharey=True)
    for i, a in enumerate(req.sweep_attacks):
        for j, t in enumerate(req.threats):
            ax = axes[i][j]
            for k, pts in points[f"{a}/{t}"].items():
                if k in ("global targets", "local targets"):
                    continue
                xs = [e for e, _ in pts]
                ys = [_plotted(g.mean) for _, g in pts]
                ax.plot(xs, ys, marker="o", label=k, linewidth=2.2 if k == "all targets" else 1.2)
            ctrl = [_plotted(g.control) for _, g in points[f"{a}/{t}"]["all targets"]]
            ax.plot(req.sweep_eps, ctrl, linestyle="--", color="grey", label="random-sign control")
            ax.set_title(f"{a}, {t}")
            ax.set_xlabel("eps")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("transferability (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
