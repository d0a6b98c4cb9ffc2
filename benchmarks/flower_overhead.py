"""Flower's overhead: a round's wall time / the slowest site's local training time.

Runs a real local deployment (SuperLink + 4 SuperNodes on loopback) with ResNet50 at the
demo size and reads the timings from the run's metrics: a round's wall time is the time
between two consecutive per-round global checkpoints; each site reports the seconds it
spent training. Both come from the same run. `--metrics FILE` analyses an existing run
instead (for example runs/demo/checkpoints/metrics.jsonl after `make demo`).

    python benchmarks/flower_overhead.py [--rounds 2] [--patients 200] [--size 64] [--local-epochs 2]
    python benchmarks/flower_overhead.py --metrics runs/demo/checkpoints/metrics.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def overhead_table(rows: list[dict], arch: str) -> list[tuple[int, float, float]]:
    """(round, wall seconds, slowest site's training seconds) for every complete round."""
    saves = {r["round"]: r["time"] for r in rows if r["event"] == "round-saved" and r["arch"] == arch}
    out = []
    for rnd in sorted(saves):
        if rnd - 1 not in saves:
            continue
        train = [
            r["train-seconds"]
            for r in rows
            if r["event"] == "site-train" and r["arch"] == arch and r["round"] == rnd
        ]
        if train:
            out.append((rnd, saves[rnd] - saves[rnd - 1], max(train)))
    return out


def report(rows: list[dict], arch: str, what: str) -> None:
    table = overhead_table(rows, arch)
    print(f"\nFlower overhead, {what}:")
    print(f"{'round':>5} {'wall s':>8} {'slowest site train s':>21} {'ratio':>7}")
    for rnd, wall, train in table:
        print(f"{rnd:>5} {wall:>8.1f} {train:>21.1f} {wall / train:>7.2f}")
    if table:
        mean = sum(w / t for _, w, t in table) / len(table)
        print(f"mean ratio {mean:.2f} (target <= 1.10)")


def run_benchmark(args: argparse.Namespace) -> list[dict]:
    from deploy.local import federate
    from shared.config.experiment import load_config
    from shared.prep.synth.twin import synthesize

    with tempfile.TemporaryDirectory(prefix="fedattack-bench-") as tmp:
        out = Path(tmp)
        synthesize(out / "data", args.patients, 128, seed=1)
        cfg = load_config(
            REPO / "configs" / "demo.yaml",
            {
                "output_dir": str(out / "run"),
                "data.image_size": args.size,
                "data.datasets.nih.root": str(out / "data" / "nih"),
                "data.datasets.rsna.root": str(out / "data" / "rsna"),
                "federation.architectures": [args.arch],
                "federation.rounds": args.rounds,
                "training.finetune_epochs": 0,
                "training.local_epochs": args.local_epochs,
            },
        )
        t0 = time.monotonic()
        store = federate(cfg)
        print(f"whole run {time.monotonic() - t0:.0f}s")
        return [json.loads(x) for x in (store / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--local-epochs", type=int, default=2, help="local epochs per round (demo: 2)")
    p.add_argument("--metrics", type=Path, help="analyse this metrics.jsonl instead of running")
    args = p.parse_args()
    if args.metrics:
        rows = [json.loads(x) for x in args.metrics.read_text().splitlines()]
        report(rows, args.arch, f"{args.arch}, from {args.metrics}")
    else:
        from shared.logs import setup_logging

        setup_logging()
        rows = run_benchmark(args)
        report(rows, args.arch, f"{args.arch} at {args.size} px, 4 sites on loopback, this machine")


if __name__ == "__main__":
    main()
