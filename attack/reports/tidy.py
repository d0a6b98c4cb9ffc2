"""The study's long, tidy tables (one observation a row, one variable a column), made from
the same read-back records as study.md (attack.reports.readback.VariantRecords):

- transfer.csv: one row per (seed, variant, attack, eps, threat, source, target) with the
  counts, the rate and its Wilson 95% interval, and the random-sign control's;
- clean.csv: one row per (seed, variant, model, test set) with the clean AUC (DeLong),
  sensitivity and specificity (Wilson), each with its 95% interval.

Plain CSV (comma, header row, empty cell where a figure is undefined), so that
`pandas.read_csv("transfer.csv")` reads it in one line; names a spreadsheet would run as a
formula are escaped with a leading quote (attack.reports.study.csv_safe)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from attack.reports.figures import Estimate
from attack.reports.readback import VariantRecords
from attack.reports.study import csv_safe
from attack.reports.tables import Info, control_rate, rate, usable
from shared.io import atomic_write

# What the clean figures are measured on: every held-out test set pooled (the attack's
# results.json records one clean evaluation per model, over all of them).
ALL_TEST_SETS = "all held-out"

TRANSFER_COLUMNS = (
    "seed", "variant", "attack", "eps", "eps_255", "threat",
    "source", "source_arch", "source_kind", "target", "target_arch", "target_kind", "target_site",
    "white_box", "usable", "n_correct_before", "n_misclassified_after", "rate", "rate_low", "rate_high",
    "n_control_misclassified", "control_rate", "control_low", "control_high",
)  # fmt: skip
CLEAN_COLUMNS = (
    "seed", "variant", "model", "arch", "kind", "site", "test_set", "n_positive", "n_negative",
    "auc", "auc_low", "auc_high", "sensitivity", "sensitivity_low", "sensitivity_high",
    "specificity", "specificity_low", "specificity_high", "correct_on_attack_set",
)  # fmt: skip

Row = dict[str, object]
# (seed, variant) -> that federation's records
Records = Mapping[tuple[int, str], VariantRecords]


def _figure(e: Estimate, name: str) -> Row:
    return {name: e.value, f"{name}_low": e.low, f"{name}_high": e.high}


def transfer_rows(seed: int, variant: str, records: VariantRecords) -> list[Row]:
    """Every cell of every (attack, threat) of one variant, in results.json's order."""
    models = {m.name: Info(m.name, m.arch, m.kind, m.site) for m in records.models}
    rows = []
    for key, (m, sources) in records.measured.items():
        attack, threat = key.split("/")
        info = {**models, **sources}
        for c in m.cells:
            src = info.get(c.source, Info(c.source, "", ""))
            tgt = models.get(c.target, info.get(c.target, Info(c.target, "", "")))
            r, ctrl = rate(c).to_json(), control_rate(c).to_json()
            rows.append(
                {
                    "seed": seed,
                    "variant": variant,
                    "attack": attack,
                    "eps": m.eps,
                    "eps_255": round(m.eps * 255, 4),
                    "threat": threat,
                    "source": c.source,
                    "source_arch": src.arch,
                    "source_kind": src.kind,
                    "target": c.target,
                    "target_arch": tgt.arch,
                    "target_kind": tgt.kind,
                    "target_site": tgt.site,
                    "white_box": c.white_box,
                    "usable": usable(c),
                    "n_correct_before": c.n_correct_before,
                    "n_misclassified_after": c.n_misclassified_after,
                    "rate": r["value"],
                    "rate_low": r["low"],
                    "rate_high": r["high"],
                    "n_control_misclassified": c.n_control_misclassified,
                    "control_rate": ctrl["value"],
                    "control_low": ctrl["low"],
                    "control_high": ctrl["high"],
                }
            )
    return rows


def clean_rows(seed: int, variant: str, records: VariantRecords) -> list[Row]:
    """Every model's clean figures, in results.json's order."""
    return [
        {
            "seed": seed,
            "variant": variant,
            "model": m.name,
            "arch": m.arch,
            "kind": m.kind,
            "site": m.site,
            "test_set": ALL_TEST_SETS,
            "n_positive": m.clean_test.n_positive,
            "n_negative": m.clean_test.n_negative,
            **_figure(m.clean_test.auc, "auc"),
            **_figure(m.clean_test.sensitivity, "sensitivity"),
            **_figure(m.clean_test.specificity, "specificity"),
            "correct_on_attack_set": m.clean_correct_on_attack_set,
        }
        for m in records.models
    ]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return csv_safe(value)
    return str(value)


def to_csv(columns: Sequence[str], rows: Iterable[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row[c]) for c in columns])
    return buf.getvalue()


def write_tidy(out: Path, records: Records) -> tuple[Path, Path]:
    """transfer.csv and clean.csv in `out` (every seed and variant given), atomically."""
    transfer = [r for (seed, name), rec in records.items() for r in transfer_rows(seed, name, rec)]
    clean = [r for (seed, name), rec in records.items() for r in clean_rows(seed, name, rec)]
    atomic_write(out / "transfer.csv", to_csv(TRANSFER_COLUMNS, transfer))
    atomic_write(out / "clean.csv", to_csv(CLEAN_COLUMNS, clean))
    return out / "transfer.csv", out / "clean.csv"
