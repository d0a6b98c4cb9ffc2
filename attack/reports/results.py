"""results.json: every cell with its counts, interval and control; the tables with their
intervals; the global-vs-local test; clean performance; provenance. Deterministic for a
fixed store, data and seed (no timestamps)."""

from __future__ import annotations

from attack.measure.clean import CleanPerformance
from attack.measure.core import Cell, Measurement
from attack.reports.figures import CleanFigures, GlobalVsLocal
from attack.reports.records import ModelResult, RunMeta, SuiteMeta, SuiteRow
from attack.reports.tables import (
    Info,
    by_target_group,
    cell_view,
    control_rate,
    flagged,
    global_vs_local,
    model_level,
    rate,
    study_table,
)
from attack.stats import MIN_CELL, wilson


def cells_json(m: Measurement) -> list[dict[str, object]]:
    out = []
    for c in m.cells:
        r, ctrl = rate(c), control_rate(c)
        out.append(
            {
                "source": c.source,
                "target": c.target,
                "white_box": c.white_box,
                "n_correct_before": c.n_correct_before,
                "n_misclassified_after": c.n_misclassified_after,
                "transferability": c.transferability,
                "interval": [r.to_json()["low"], r.to_json()["high"]],
                "n_control_misclassified": c.n_control_misclassified,
                "control_rate": ctrl.to_json()["value"],
                "control_interval": [ctrl.to_json()["low"], ctrl.to_json()["high"]],
                "too_few_images": (not c.white_box) and c.n_correct_before < MIN_CELL,
                **_more_controls(c),
            }
        )
    return out


def _more_controls(c: Cell) -> dict[str, object]:
    """The shuffled-perturbation control and (universal attacks) the fooling rate, where measured."""
    out: dict[str, object] = {}
    if c.n_shuffled_misclassified is not None:
        r = wilson(c.n_shuffled_misclassified, c.n_correct_before).to_json()
        out |= {
            "n_shuffled_misclassified": c.n_shuffled_misclassified,
            "shuffled_rate": r["value"],
            "shuffled_interval": [r["low"], r["high"]],
        }
    if c.n_fooling_images is not None and c.n_fooled is not None:
        r = wilson(c.n_fooled, c.n_fooling_images).to_json()
        out |= {
            "n_fooling_images": c.n_fooling_images,
            "n_fooled": c.n_fooled,
            "fooling_rate": r["value"],
            "fooling_interval": [r["low"], r["high"]],
        }
    return out


def measurement_json(m: Measurement, info: dict[str, Info], seed: int) -> dict[str, object]:
    """The parts every (attack, threat) result shares (read back by
    attack.reports.readback.read_measurement)."""
    groups, test = global_vs_local(m, info, seed)
    return {
        "attack": m.attack,
        "eps": m.eps,
        "sources": {
            s: {
                "arch": info[s].arch,
                "kind": info[s].kind,
                "n_attacked": len(m.attacked[s]),
                "code_sha256": m.code_digest.get(s),
                "empty": len(m.attacked[s]) == 0,
                "attacked": m.attacked[s],
                **({"fit": m.fit[s]} if s in m.fit else {}),
                **({"perceptual": m.perceptual[s]} if s in m.perceptual else {}),
            }
            for s in m.sources
        },
        "cells": cells_json(m),
        "by_target_group": {k: g.to_json() for k, g in by_target_group(m, info, seed).items()},
        "global_vs_local": GlobalVsLocal.of(groups, test, model_level(m, info, seed)).to_json(),
        "flagged_cells": [
            {"source": c.source, "target": c.target, "n_correct_before": c.n_correct_before}
            for c in flagged(m)
        ],
    }


def study_json(
    m: Measurement,
    info: dict[str, Info],
    clean: dict[str, CleanPerformance],
    hashes: dict[str, str],
    meta: RunMeta,
    seed: int,
) -> dict[str, object]:
    """The study's results.json (FGSM, member threat). `attack` and `eps` keep meta's
    place and take the measurement's value (the same)."""
    models = [
        ModelResult(
            n,
            info[n].arch,
            info[n].kind,
            info[n].site,
            hashes[n],
            CleanFigures.of(clean[n]),
            m.clean_correct[n],
        )
        for n in m.targets
    ]
    return {
        **meta.to_json(),
        "models": [x.to_json() for x in models],
        **measurement_json(m, info, seed),
        "study_table": {
            a: {k: g.to_json() for k, g in row.items()} for a, row in study_table(m, info, seed).items()
        },
        "cell_view": {
            a: {k: g.to_json() for k, g in row.items()} for a, row in cell_view(m, info, seed).items()
        },
    }


def suite_json(meta: SuiteMeta, row: SuiteRow, info: dict[str, Info], seed: int) -> dict[str, object]:
    """One (attack, threat, eps) folder's results.json. `eps` keeps its place after the
    shared head and takes the measurement's value (the same)."""
    return {
        **meta.to_json(),
        "eps": row.eps,
        "threat": row.threat,
        **measurement_json(row.m, info, seed),
        "over_control": row.over_control.to_json(),
    }
