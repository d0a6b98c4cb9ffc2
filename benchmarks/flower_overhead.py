"""Flower's overhead: a round's wall time / the slowest site's local training time.

Runs a real local deployment (SuperLink + 4 SuperNodes on loopback) with ResNet50 at the
demo size and reads the timings from the run's metrics: round wall time is the time
between two consecutive per-round global checkpoints; each site reports the seconds it
spent training. Both are measured in the same run.

    python benchmarks/flower_overhead.py [--rounds 2] [--patients 200] [--size 80]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from server.launcher import federate
from shared.config import load_config
from shared.data.synth import synthesize
from shared.logs import setup_logging

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--size", type=int, default=80)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory(prefix="fedattack-bench-") as tmp:
        out = Path(tmp)
        synthesize(out / "data", args.patients, 128, seed=1)
        cfg = load_config(REPO / "configs" / "demo.yaml", {
            "output_dir": str(out / "run"), "data.image_size": args.size,
            "data.datasets.nih.root": str(out / "data" / "nih"),
            "data.datasets.rsna.root": str(out / "data" / "rsna"),
            "federation.architectures": [args.arch], "federation.rounds": args.rounds,
            "training.local_epochs": args.epochs, "training.finetune_epochs": 0,
        })
        t0 = time.monotonic()
        store = federate(cfg)
        total = time.monotonic() - t0
        rows = [json.loads(x) for x in (store / "metrics.jsonl").read_text().splitlines()]
    saves = {r["round"]: r["time"] for r in rows if r["event"] == "round-saved"}
    print(f"\nFlower overhead, {args.arch} at {args.size} px, 4 sites on loopback, this machine:")
    print(f"{'round':>5} {'wall s':>8} {'slowest site train s':>21} {'ratio':>7}")
    ratios = []
    for rnd in range(1, args.rounds + 1):
        wall = saves[rnd] - saves[rnd - 1]
        train = max(r["train-seconds"] for r in rows
                    if r["event"] == "site-train" and r["round"] == rnd)
        ratios.append(wall / train)
        print(f"{rnd:>5} {wall:>8.1f} {train:>21.1f} {wall / train:>7.2f}")
    print(f"mean ratio {sum(ratios) / len(ratios):.2f} (target <= 1.10); whole run {total:.0f}s")


if __name__ == "__main__":
    main()
