"""The GPU figures behind benchmarks/gpu.sh (needs CUDA; about 8 minutes on one H100).

Training throughput per architecture at 224 px with the project's own training step
(AMP bfloat16 + channels_last, shared.ml.training.train_epochs) on in-memory batches, and
the attack job's throughput (attack.measure.transfer.measure) for 15 models."""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.run import ARCHS, attack_images, make_models, run_job
from shared.config.training import OptimizerConfig
from shared.ml.models import build_model
from shared.ml.training import make_optimizer, prepare, train_epochs

ANCHOR = "ResNet50 with AMP: about 2,470 img/s on one A100 (published)"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def train_throughput(arch: str, size: int, batch: int, steps: int, dev: torch.device) -> float:
    model = prepare(build_model(arch, size, 3), dev)  # 3 channels, like the published anchor
    opt = make_optimizer(model, OptimizerConfig("sgd", 0.01, 0.0, 0.9))
    x = torch.rand(batch * steps, 3, size, size)
    y = torch.randint(0, 2, (batch * steps,))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, pin_memory=True)
    train_epochs(model, loader, opt, 1, dev)  # warm-up (cudnn autotune, allocator)
    _sync(dev)
    t0 = time.perf_counter()
    train_epochs(model, loader, opt, 2, dev)
    _sync(dev)
    return 2 * len(x) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--attack-images", type=int, default=512)
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script's code")
    args = p.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: benchmarks/gpu.sh needs a GPU")
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for arch in ARCHS:
        ips = train_throughput(arch, args.size, args.batch, args.steps, dev)
        print(
            f"[train] {arch:<13} {args.size} px, batch {args.batch}, AMP bf16 + channels_last: "
            f"{ips:,.0f} img/s",
            flush=True,
        )
    print(f"        anchor: {ANCHOR}")
    models = make_models(15, args.size)
    x = attack_images(args.attack_images, args.size)
    run_job(models, x[:64], 64, device=dev)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    run_job(models, x, 128, device=dev)
    _sync(dev)
    t = time.perf_counter() - t0
    crafts, probes = 15 * len(x), 15 * 15 * len(x)
    print(
        f"[attack] 15 models, {len(x)} images at {args.size} px: {t:.1f}s; "
        f"{len(x) / t:.1f} attacked images/s through the whole job, "
        f"{(crafts + probes) / t:,.0f} model passes/s ({crafts} crafts + {probes} probes)"
    )


if __name__ == "__main__":
    main()
