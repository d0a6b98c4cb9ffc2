"""suite.md (every attack and threat side by side, each figure with its n, interval and
control) and the eps-sweep curves (sweep.png, sweep.json)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from attack.reports.figures import Estimate
from attack.reports.power import detectable_difference
from attack.reports.records import SuiteMeta, SuiteRow
from attack.reports.study import md_safe
from attack.reports.tables import Group, cell_group, control_rate, rate, usable
from attack.stats import Interval, PairedTest, holm, wilson
from shared.config.attack import eps_text
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
    "svre": "SVRE's variance-reduced direction over their members' own losses (iterative attacks; "
    "one-step and universal attacks: the mean of the members' losses)",
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
    fixed = ("global targets", "local targets", "pooled targets", "all targets")
    archs = sorted({k for r in rows.values() for k in r.groups} - set(fixed))
    cols = [*archs, *(f for f in fixed if any(f in r.groups for r in rows.values()))]
    # the study's eps when attacks run at it; a run of the sweep alone (attack.suite.attacks
    # empty: a ranking at chosen budgets) reports those budgets only
    budgets = sorted({eps, *req.sweep_eps} if req.attacks else set(req.sweep_eps))
    lines = [
        "# Attack suite: every attack under every threat model",
        "",
        f"eps = {', '.join(eps_text(e) for e in budgets)} (L-infinity, [0, 1] pixel space) on "
        f"{meta.n_images} pneumonia images of the held-out test sets. Threat models:",
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
    ]
    if req.attacks:
        lines += _at_study_eps(rows, req, eps, cols, meta)
    if req.sweep_attacks:
        lines += [
            "",
            "## eps sweep (all targets)",
            "",
            "| attack | threat | " + " | ".join(f"eps {eps_text(e)}" for e in req.sweep_eps) + " |",
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
    for e in budgets:
        attacks = [
            a for a in dict.fromkeys([*req.attacks, *req.sweep_attacks]) if (a, req.threats[0], e) in rows
        ]
        lines += _ranking(rows, attacks, req.threats, e)
    empty = [(k, r.empty) for k, r in rows.items() if r.empty]
    if empty:
        lines += ["", "## Empty rows", "", "Sources that classified none of the attack images correctly:", ""]
        lines += [
            f"- {a} {t} eps {e:g}: {', '.join(md_safe(x) for x in names)}" for (a, t, e), names in empty
        ]
    return "\n".join(lines) + "\n"


def _at_study_eps(rows: Rows, req: SuiteRequest, eps: float, cols: list[str], meta: SuiteMeta) -> list[str]:
    """The attacks at the study's eps: transfer by target group, against noise, white-box."""
    lines = [
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
            lines.append(f"| {a} | {t} | {_cell(cell_group(cells, meta.seed))} |")
    return lines


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


def _shuffled(cells: list) -> str:
    """The mean shuffled-perturbation control over the cells (n/a where not measured)."""
    rates = [
        wilson(c.n_shuffled_misclassified, c.n_correct_before).value
        for c in cells
        if c.n_shuffled_misclassified is not None
    ]
    return f"{100 * sum(rates) / len(rates):.1f}%" if rates else "n/a"


def _fooling(cells: list) -> str:
    """Universal attacks: the fooling rate pooled over the cells' held-out images [Wilson]."""
    have = [c for c in cells if c.n_fooling_images is not None and c.n_fooled is not None]
    if not have:
        return "-"
    return wilson(sum(c.n_fooled for c in have), sum(c.n_fooling_images for c in have)).percent()


def _visibility(row: SuiteRow) -> str:
    """Mean over the sources of their adversarial sets' L2 / PSNR / SSIM."""
    sets = [p for p in row.m.perceptual.values() if p["n"] > 0]
    if not sets:
        return "n/a"
    mean = {k: sum(p[k] for p in sets) / len(sets) for k in ("l2", "linf", "psnr", "ssim")}
    return f"{mean['l2']:.2f} / {mean['linf']:.4f} / {mean['psnr']:.1f} / {mean['ssim']:.4f}"


def _power(row: SuiteRow, tests: int) -> str:
    """The smallest attack-against-noise difference the row's test could detect."""
    diffs = []
    for name in row.m.targets:
        cells = [
            c for c in row.m.cells if c.target == name and usable(c) and c.n_control_misclassified is not None
        ]
        if cells:
            diffs.append(sum(rate(c).value - control_rate(c).value for c in cells) / len(cells))
    sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    return detectable_difference(sd, len(diffs), tests).text()


def _ranking(rows: Rows, attacks: list[str], threats: tuple[str, ...], eps: float) -> list[str]:
    """Every attack at one budget, per threat, strongest first: transfer [interval], n, both
    controls, the attack against noise after Holm (over this table), the smallest difference
    that test could detect, the fooling rate (universal), and how visible the sets are."""
    keys = [(a, t) for t in threats for a in attacks if (a, t, eps) in rows]
    if not keys:
        return []
    adjusted = dict(zip(keys, holm([rows[a, t, eps].over_control.p_value for a, t in keys]), strict=True))
    lines = [
        "",
        f"## Ranking at eps {eps_text(eps)}",
        "",
        "Per threat, strongest first (mean transfer over usable transfer cells, all targets). Controls: "
        "random-sign noise and the same perturbation with its pixels shuffled, at the same images. "
        "Against noise: transfer minus the random-sign control, sign-flip test over targets, Holm over "
        "this table; detectable: the smallest such difference the test finds with 80% power at its n. "
        "Fooling: universal perturbations, prediction changed on every held-out image. Visibility: "
        "mean L2 / L-inf / PSNR (dB) / SSIM of the adversarial sets against the clean images.",
        "",
        "| threat | attack | transfer | random ctrl | shuffled ctrl | against noise (Holm p) | "
        "detectable | fooling | visibility |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in threats:
        ordered = sorted(
            (a for a in attacks if (a, t, eps) in rows),
            key=lambda a: -(Estimate.of(rows[a, t, eps].groups["all targets"].mean).value or 0.0),
        )
        for a in ordered:
            r = rows[a, t, eps]
            cells = [c for c in r.m.cells if usable(c)]
            transfer = [c for c in r.m.cells if not c.white_box]
            p = adjusted[a, t]
            verdict = "n/a" if math.isnan(p) else f"{'**yes**' if p < 0.05 else 'no'} ({p:.2g})"
            g = r.groups["all targets"]
            lines.append(
                f"| {t} | {a} | {_cell(g)} | {100 * (Estimate.of(g.control).value or 0):.1f}% | "
                f"{_shuffled(cells)} | {verdict} | {_power(r, len(keys))} | {_fooling(transfer)} | "
                f"{_visibility(r)} |"
            )
    return lines
