"""`fedattack demo`: the whole study on the synthetic twin, end to end, on a CPU."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from attack.service import run_attack
from deploy.local import federate
from shared.config import load_config
from shared.data.synth import synthesize
from shared.store import CheckpointStore

log = logging.getLogger(__name__)


def run_demo(config: Path, out: Path | None, patients: int | None, size: int | None) -> Path:
    """Synthesize, federate, attack; print the global and local AUCs; return the report path."""
    base = load_config(config, {"output_dir": str(out)} if out else None)
    data = base.output_dir / "data"
    overrides: dict[str, str | int] = {
        "data.datasets.nih.root": str(data / "nih"),
        "data.datasets.rsna.root": str(data / "rsna"),
    }
    if out:
        overrides["output_dir"] = str(out)
    if patients:
        overrides["synth.patients"] = patients
    if size:
        overrides["synth.size"] = size
    cfg = load_config(config, overrides)
    t0 = time.monotonic()
    step = "[demo 1/3]"
    if not (data / "nih" / "Data_Entry_2017_v2020.csv").exists():
        print(f"{step} writing the synthetic twin to {data}", flush=True)
        synthesize(data, cfg.synth.patients, cfg.synth.size, cfg.seed, cfg.synth.positive_rate)
    else:
        print(f"{step} reusing the synthetic twin in {data}", flush=True)
    print(
        f"[demo 2/3] federating {', '.join(cfg.federation.architectures)} over sites "
        f"{', '.join(cfg.data.sites)} ({cfg.federation.rounds} FedAvg rounds + fine-tuning)",
        flush=True,
    )
    store = federate(cfg)
    t1 = time.monotonic()
    print("\nvalidation AUC (synthetic twin):")
    for m in CheckpointStore(store).models():
        auc = m.metrics.get("val-auc", float("nan"))
        print(f"  {m.name:<28} {auc:.3f}")
    print(f"\n[demo 3/3] FGSM transfer attack (eps {cfg.attack.eps}) across all models", flush=True)
    report = run_attack(cfg, str(store), cfg.attack_dir)
    print(report.read_text())
    print(f"timings: federation {t1 - t0:.0f}s, attack {time.monotonic() - t1:.0f}s")
    return report
