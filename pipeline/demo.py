"""`fedattack demo`: the whole study on the synthetic twin, end to end, on a CPU."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from attack.measure.shards import attack_devices
from attack.reports.figures import CleanFigures, Estimate
from attack.reports.readback import read_models
from attack.service import run_attack
from deploy.local import federate
from shared.config.experiment import load_config
from shared.prep.synth.kinds import MARKERS, synthesize_kinds
from shared.store.checkpoint import ModelEntry
from shared.store.folder import CheckpointStore

log = logging.getLogger(__name__)


# The bar every demo model must clear on its validation data (else the transfer matrix
# measures noise): AUC, and sensitivity and specificity at the argmax rule the attack uses
# (with training.calibration, the calibrated threshold folded into the model).
BAR = {"val-auc": 0.75, "val-sensitivity": 0.5, "val-specificity": 0.5}


def run_demo(
    config: Path, out: Path | None, patients: int | None, size: int | None, seed: int | None = None
) -> Path:
    """Synthesize, federate, attack; print every model's validation and clean test figures
    and warn about any model below the bar; return the report path."""
    overrides: dict[str, str | int] = {}
    if out:
        overrides["output_dir"] = str(out)
    if seed is not None:
        overrides["seed"] = seed
    base = load_config(config, overrides)
    data = base.output_dir / "data"
    kinds = [ds.kind for ds in base.data.datasets.values()]
    overrides |= {f"data.datasets.{n}.root": str(data / ds.kind) for n, ds in base.data.datasets.items()}
    if patients:
        overrides["synth.patients"] = patients
    if size:
        overrides["synth.size"] = size
    cfg = load_config(config, overrides)
    attack_devices(cfg.attack)  # a GPU in attack.devices that is not there: refused before training
    t0 = time.monotonic()
    step = "[demo 1/3]"
    if not all((data / k / MARKERS[k]).exists() for k in kinds):
        print(f"{step} writing the synthetic twin to {data} (seed {cfg.seed})", flush=True)
        synthesize_kinds(data, kinds, cfg.synth.patients, cfg.synth.size, cfg.seed, cfg.synth.positive_rate)
    else:
        print(f"{step} reusing the synthetic twin in {data}", flush=True)
    print(
        f"[demo 2/3] federating {', '.join(cfg.federation.architectures)} over sites "
        f"{', '.join(cfg.data.sites)} ({cfg.federation.rounds} FedAvg rounds + fine-tuning)",
        flush=True,
    )
    store = federate(cfg)
    t1 = time.monotonic()
    print(
        f"\n[demo 3/3] {cfg.attack.name.upper()} transfer attack (eps {cfg.attack.eps}) across all models",
        flush=True,
    )
    report = run_attack(cfg, str(store), cfg.attack_dir)
    t2 = time.monotonic()
    print(report.read_text())
    clean = {m.name: m.clean_test for m in read_models(cfg.attack_dir / "results.json")}
    print(model_table(CheckpointStore(store).models(), clean))
    print(f"timings: federation {t1 - t0:.0f}s, attack {t2 - t1:.0f}s, total {t2 - t0:.0f}s")
    return report


def model_table(entries: list[ModelEntry], clean: Mapping[str, CleanFigures]) -> str:
    """Every model's validation figures (from training) and clean test figures (model name
    -> from the attack's results.json), and a visible warning naming any model below the bar."""

    def iv(d: Estimate) -> str:
        if d.value is None or d.low is None or d.high is None:
            return "n/a"
        return f"{d.value:.2f} [{d.low:.2f}, {d.high:.2f}]"

    lines = [
        "",
        f"{'model':<24}{'val AUC':>8}{'sens':>6}{'spec':>6}{'thr':>7}{'(argmax':>9}{'sens':>5}{'spec)':>6}"
        f"   {'test AUC [95% CI]':<20}{'test sensitivity':<20}{'test specificity':<20}",
    ]
    below = []
    for e in entries:
        v = [e.metrics.get(k, float("nan")) for k in BAR]
        c = clean.get(e.name)
        test = f"{iv(c.auc):<20}{iv(c.sensitivity):<20}{iv(c.specificity):<20}" if c else "(skipped)"
        cal = _calibration(e.metrics)
        lines.append(f"{e.name:<24}{v[0]:>8.3f}{v[1]:>6.2f}{v[2]:>6.2f}{cal}   {test}")
        misses = [f"{k} {x:.2f}" for (k, bar), x in zip(BAR.items(), v, strict=True) if not x >= bar]
        if misses:
            below.append(f"{e.name} ({', '.join(misses)})")
    if below:
        lines += [
            "",
            f"WARNING: {len(below)} model(s) below the bar (validation AUC >= 0.75, sensitivity and "
            "specificity >= 0.5 at the decision rule); their transfer figures measure an unusable model:",
        ]
        lines += [f"  - {b}" for b in below]
    else:
        lines += [
            "",
            f"all {len(entries)} models clear the bar: validation AUC >= 0.75, sensitivity and "
            "specificity >= 0.5",
        ]
    return "\n".join(lines)


def _calibration(metrics: dict[str, float]) -> str:
    """The calibrated threshold and the argmax figures before it (blank without calibration)."""
    if "val-threshold" not in metrics:
        return " " * 27
    if not metrics.get("val-calibrated", 1.0):
        return f"{'argmax':>7}" + " " * 20
    return (
        f"{metrics['val-threshold']:>+7.2f}{'':>9}{metrics.get('val-sensitivity-argmax', float('nan')):>5.2f}"
        f"{metrics.get('val-specificity-argmax', float('nan')):>6.2f}"
    )
