"""The GPU check of the study's training path (benchmarks/gpu.sh; one H100: about 3 minutes).

Per architecture, at the size its network sees in configs/study.yaml (InceptionV3 at 299,
the others at 224), the site's own training step (shared.ml.training.train_epochs: the
study's batch, channels, optimizer and precision, channels_last, cudnn.benchmark) fed by
the site's own loader over a memory-mapped preprocessing cache (shared.data.torchdata,
the study's worker count for four sites on one host): images/s through the loader, the
compute bound (the same step over batches already on the device), their ratio and the
peak GPU memory. Then the attack job (attack.measure.transfer.measure, FGSM, every model a
source and a target) over the study's 15 models (3 globals + 12 locals) at the same sizes,
counting the images the sources really crafted on. One table.

`--smoke` runs the same code on the CPU at a tiny size (CI: a few seconds)."""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.config.data import loader_workers
from shared.config.experiment import ExperimentConfig, load_config
from shared.data.cache import CachedPart
from shared.data.torchdata import make_loader
from shared.ml.models import build_model
from shared.ml.training import StepSettings, make_optimizer, prepare, train_epochs

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "configs" / "study.yaml"


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the image size of the cache, steps per timing, attack images."""

    image: int
    steps: int
    warmup: int
    attack_images: int
    attack_models: int
    smoke: bool


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_gib(dev: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(dev) / 2**30:.1f}" if dev.type == "cuda" else "-"


def _net_size(cfg: ExperimentConfig, arch: str, sizes: Sizes) -> int:
    """The study's net size for `arch` (0: the image size); smoke: the smallest that builds."""
    if sizes.smoke:
        return 75 if arch == "inception_v3" else 0
    return cfg.training.net_size(arch)


def make_cache(folder: Path, n: int, size: int) -> CachedPart:
    """A preprocessing cache as shared.data.cache writes it (uint8 images.npy, memory-mapped)."""
    arr = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    arr[:] = np.random.default_rng(0).integers(0, 256, arr.shape, dtype=np.uint8)
    arr.flush()
    del arr
    images = np.load(folder / "images.npy", mmap_mode="r")
    labels = np.arange(n) % 2
    return CachedPart(images, labels, tuple(str(i) for i in range(n)), (), folder)


def train_row(
    cfg: ExperimentConfig, arch: str, part: CachedPart, sizes: Sizes, workers: int, dev: torch.device
) -> dict[str, str]:
    """Loader img/s, compute-bound img/s, ratio and peak memory of `arch`'s training step."""
    t = cfg.training.for_arch(arch)
    batch, channels = t.batch_size, cfg.data.channels
    net = _net_size(cfg, arch, sizes)
    model = prepare(build_model(arch, sizes.image, channels, net_size=net), dev, training=True)
    opt = make_optimizer(model, t.optimizer)
    step = StepSettings.on(dev, t.precision, t.augment)
    weights = torch.tensor([0.6, 2.0])  # class weights as class_balance gives them
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    loader = make_loader(part, channels, batch, True, workers, seed=0)
    ready = [(x.to(dev).contiguous(memory_format=torch.channels_last), y.to(dev)) for x, y in loader]
    train_epochs(model, ready[: sizes.warmup], opt, 1, dev, weights, step=step)  # type: ignore[arg-type]
    timings = {}
    for name, data in (("loader", loader), ("bound", ready)):
        _sync(dev)
        t0 = time.perf_counter()
        train_epochs(model, data, opt, 1, dev, weights, step=step)  # type: ignore[arg-type]
        _sync(dev)
        timings[name] = len(ready) * batch / (time.perf_counter() - t0)
    return {
        "arch": arch,
        "px": str(net or sizes.image),
        "batch": str(batch),
        "precision": "fp32" if step.amp is None else t.precision,
        "loader img/s": f"{timings['loader']:,.0f}",
        "bound img/s": f"{timings['bound']:,.0f}",
        "loader/bound": f"{timings['loader'] / timings['bound']:.2f}",
        "peak GiB": _peak_gib(dev),
    }


def attack_models(cfg: ExperimentConfig, sizes: Sizes) -> list:
    """The study's models: per architecture one global and one local per site (untrained,
    heads biased to 'pneumonia' so that every image is classified right and attacked)."""
    from attack.measure.core import Target

    torch.manual_seed(0)
    archs = cfg.federation.architectures
    kinds = [("global", None)] + [("local", s) for s in cfg.data.sites]
    models = []
    for i in range(sizes.attack_models):
        arch, (kind, site) = archs[i % len(archs)], kinds[(i // len(archs)) % len(kinds)]
        net = build_model(arch, sizes.image, cfg.data.channels, net_size=_net_size(cfg, arch, sizes)).eval()
        head = net.net.get_classifier()
        with torch.no_grad():  # untrained InceptionV3's logits reach 1e6: scale the head down
            head.weight.mul_(1e-6)
            head.bias.copy_(torch.tensor([-20.0, 20.0]))
        models.append(Target(f"{arch}-{kind}-{site or ''}{i}", arch, kind, site, net))
    return models


def attack_row(cfg: ExperimentConfig, sizes: Sizes, dev: torch.device) -> dict[str, str]:
    """The attack job's throughput over the images its sources really crafted on."""
    from benchmarks.run import run_job, suite_attack

    models = attack_models(cfg, sizes)
    x = torch.rand(sizes.attack_images, cfg.data.channels, sizes.image, sizes.image)
    attack = suite_attack(cfg.attack.name, cfg.attack.eps)
    batch = cfg.attack.batch_size
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    run_job(models, x[: min(len(x), batch)], batch, attack, device=dev)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    result = run_job(models, x, batch, attack, device=dev)
    _sync(dev)
    seconds = time.perf_counter() - t0
    crafted = {k: len(v) for k, v in result.attacked.items()}
    sources = sum(1 for n in crafted.values() if n)
    crafts = sum(crafted.values())
    return {
        "arch": f"attack: {sources} of {len(models)} sources",
        "px": "study",
        "batch": str(batch),
        "precision": "fp32",
        "loader img/s": f"{crafts / seconds:,.0f} crafted",
        "bound img/s": f"{crafts * len(models) / seconds:,.0f} probes",
        "loader/bound": f"{seconds:.1f} s",
        "peak GiB": _peak_gib(dev),
    }


def table(rows: list[dict[str, str]]) -> str:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = [" | ".join(c.ljust(width[c]) for c in cols), "-+-".join("-" * width[c] for c in cols)]
    lines += [" | ".join(r[c].ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def run(cfg: ExperimentConfig, sizes: Sizes, dev: torch.device, workers: int) -> str:
    """Every row: one per architecture, then the attack."""
    rows = []
    n = cfg.training.batch_size * (sizes.steps + 1)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        part = make_cache(Path(tmp), n, sizes.image)
        for arch in cfg.federation.architectures:
            rows.append(train_row(cfg, arch, part, sizes, workers, dev))
            print(f"  {arch} done", flush=True)
        del part
    rows.append(attack_row(cfg, sizes, dev))
    return table(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the same code on the CPU at a tiny size")
    p.add_argument("--steps", type=int, default=60, help="training steps per timing")
    p.add_argument("--attack-images", type=int, default=512)
    args = p.parse_args()
    cfg = load_config(STUDY)
    if args.smoke:
        sizes, dev = Sizes(32, 2, 1, 4, 3, True), torch.device("cpu")
        cfg = load_config(STUDY, {"training.batch_size": 4})
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; run with --smoke for the CPU smoke test")
        dev = torch.device("cuda")
        sizes = Sizes(cfg.data.image_size, args.steps, 10, args.attack_images, 15, False)
    workers = loader_workers(cfg.data.workers, len(cfg.data.sites))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (smoke)"
    print(
        f"device: {name}; torch {torch.__version__}; cache images at {sizes.image} px; "
        f"{workers} loader workers (the study's four sites on one host); {sizes.steps} steps per timing",
        flush=True,
    )
    started = time.perf_counter()
    print(run(cfg, sizes, dev, workers))
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
