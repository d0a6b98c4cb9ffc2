"""Every benchmark, one command:  make benchmark  (= python -m benchmarks.run)

Each figure is a ratio against a baseline timed in the same run (the machine is noisy),
printed with the raw times:

  attack    the full transfer job vs the compute bound (the bare passes it cannot avoid:
            one forward per image per model, one backward per crafted image on its
            source, one forward per probed image per target) and vs the peer
            baseline (torchattacks' FGSM per source, then a plain evaluation loop per
            source/target pair)
  suite     every other attack of the registry (BIM, PGD, MI-FGSM, DI-FGSM, MI-DI, NI, SI-NI,
            VMI, TI, SGM, BSR, UAP, targeted UAP; --suite-attacks picks rows) vs its own
            compute bound (the forward+backward passes its maths needs per crafted image:
            benchmarks.run.gradient_passes; epochs x forward+backward per fit image; one
            forward per probe)
  scaling   time and peak RSS of the job for 3, 6, 9, 15 models; fit to M crafts + M^2 probes
  memory    peak RSS of the job for 15 models at 224 px
  data      warm-cache loading time per epoch / training step time; decode throughput of
            PNG and JPEG Baseline DICOM against bare Pillow / pydicom
  prep      at 1024 px, workers = cores: the cache build and the overlap hashing, CPU time
            per image (with their workers') / a bare decode+resize of the same files
  flower    a round's wall time / the slowest site's training time (ResNet50, loopback)
  clientapp a message's cold start in fresh processes (import, app load, data open, the
            message minus training); against another checkout: benchmarks/clientapp_start.py

    python -m benchmarks.run [--only attack,suite,scaling,memory,data,prep,flower,clientapp] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("resnet50", "densenet121", "inception_v3")
SECTIONS = ("attack", "suite", "scaling", "memory", "data", "prep", "flower", "clientapp")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_of(repeats: int, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Interleaved repeats (A B C A B C ...), the best time of each: noise only adds."""
    out = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            out[k] = min(out[k], timed(fn))
    return out


# --- the attack job ---------------------------------------------------------------------------


def make_models(m: int, size: int, archs: tuple[str, ...] = ARCHS) -> list:
    """`m` untrained models (attack.measure.core.Target) cycling through `archs` (the study's
    three CNNs unless --archs names others: a ViT, ConvNeXt, ...), their heads biased to
    'pneumonia' so that every image is classified correctly and attacked (the full load)."""
    from attack.measure.core import Target
    from shared.ml.models import build_model

    torch.manual_seed(0)
    models = []
    for i in range(m):
        arch = archs[i % len(archs)]
        net = build_model(arch, size, 1).eval()
        head = net.net.get_classifier()
        with torch.no_grad():  # untrained InceptionV3's logits reach 1e6: scale the head down
            head.weight.mul_(1e-6)
            head.bias.copy_(torch.tensor([-20.0, 20.0]))
        models.append(Target(f"{arch}-{i}", arch, "local", None, net))
    return models


def attack_images(n: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, size, size, generator=g)


def suite_attack(name: str, eps: float = 0.02):
    """A registered attack with the demo config's settings (steps, epochs, ...)."""
    from attack.methods.registry import build_attack
    from shared.config.experiment import load_config

    return build_attack(name, eps, load_config(REPO / "configs" / "demo.yaml").attack)


def run_job(models: list, x: torch.Tensor, batch: int, attack=None, device: torch.device | None = None):
    """The transfer measurement as the CLI runs it (member threat: every model a source
    and a target), without the control; on the CPU unless `device` says otherwise."""
    from attack.measure.core import AttackSet, Probe, Settings
    from attack.measure.threats import member_sources
    from attack.measure.transfer import measure

    s = Settings(batch, device or torch.device("cpu"), torch.float32, 0, 0.5, control=False)
    probe = Probe(models, AttackSet(x, tuple(f"nih/{i}" for i in range(len(x)))), s)
    return measure(member_sources(models), attack or suite_attack("fgsm"), probe, s, progress=False)


def bound_passes(models: list, x: torch.Tensor, batch: int, attacked: dict[str, int], attack=None) -> float:
    """Seconds of the passes no implementation can avoid, as bare loops over ready tensors,
    for the job's actual workload (`attacked`: images each source crafted on and probed):
    one forward per image per model (the clean predictions); per crafted image on its
    source, `steps` forward+backward passes, the first forward shared with the clean pass
    when the attack takes the clean gradient (FGSM: one backward); universal attacks:
    `epochs` forward+backward passes over the fit images; one forward per probed image
    per target."""
    attack = attack or suite_attack("fgsm")
    nets = {lm.name: lm.model for lm in models}
    for net in nets.values():
        for p in net.parameters():
            p.requires_grad_(False)
    y = torch.ones(batch, dtype=torch.long)
    steps = gradient_passes(attack)

    def forwards(imgs: torch.Tensor, net) -> None:
        with torch.inference_mode():
            for i in range(0, len(imgs), batch):
                net(imgs[i : i + batch])

    def forward_backward(imgs: torch.Tensor, net) -> None:
        for i in range(0, len(imgs), batch):
            xi = imgs[i : i + batch].clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(net(xi), y[: len(xi)]), xi)

    clean = sum(timed(lambda n=net: forwards(x, n)) for net in nets.values())
    craft = 0.0
    for k, n in nets.items():
        crafted = x[: attacked[k]] if not attack.universal else x[: len(x) - attacked[k]]
        craft += steps * timed(lambda c=crafted, n=n: forward_backward(c, n))
        if attack.uses_clean_gradient:  # the first step's forward is the clean pass's
            craft -= timed(lambda c=crafted, n=n: forwards(c, n))
    probes = torch.cat([x[: attacked[name]] for name in nets])  # every source's adversarial set
    probe = sum(timed(lambda n=net: forwards(probes, n)) for net in nets.values())
    return clean + craft + probe


def gradient_passes(attack) -> int:
    """Forward+backward passes per crafted image that the attack's maths needs: FGSM 1;
    iterative attacks `steps`, times SI's scale copies, times BSR's block copies, plus VMI's
    neighbours on every step but the last (whose variance no step uses); SGM and TI add no
    pass (a scaled backward, a small convolution); universal attacks `epochs` per fit image."""
    if attack.universal:
        return attack.epochs
    steps = getattr(attack, "steps", 1)
    copies = getattr(attack, "scale_copies", 1) * max(getattr(attack, "block_copies", 0), 1)
    return steps * copies + (steps - 1) * getattr(attack, "variance_samples", 0)


def peer_baseline(models: list, x: torch.Tensor, batch: int) -> None:
    """The usual way: torchattacks' FGSM per source, a plain evaluation loop per pair."""
    import torchattacks

    def predict(net, imgs):
        with torch.no_grad():
            return torch.cat([net(imgs[i : i + batch]).argmax(1) for i in range(0, len(imgs), batch)])

    y = torch.ones(len(x), dtype=torch.long)
    adv, correct = {}, {}
    for lm in models:
        correct[lm.name] = predict(lm.model, x) == 1
        idx = torch.nonzero(correct[lm.name]).flatten()
        atk = torchattacks.FGSM(lm.model, eps=0.02)
        adv[lm.name] = (
            idx,
            torch.cat([atk(x[idx[i : i + batch]], y[idx[i : i + batch]]) for i in range(0, len(idx), batch)]),
        )
    for target in models:
        for _src, (idx, xa) in adv.items():
            wrong = predict(target.model, xa) != 1
            int((correct[target.name][idx] & wrong).sum())


def bench_attack(args: argparse.Namespace) -> None:
    size, n, batch = args.attack_size, args.attack_images, 32
    models = make_models(len(args.archs), size, args.archs)
    x = attack_images(n, size)
    run_job(models, x[:batch], batch)  # warm-up (first calls are slow)
    attacked = {k: len(v) for k, v in run_job(models, x, batch).attacked.items()}
    t = {"job": float("inf"), "bound": float("inf"), "peer": float("inf")}
    for _ in range(args.repeats):  # interleaved; the best of each (noise only adds)
        t["job"] = min(t["job"], timed(lambda: run_job(models, x, batch)))
        t["bound"] = min(t["bound"], bound_passes(models, x, batch, attacked))
        t["peer"] = min(t["peer"], timed(lambda: peer_baseline(models, x, batch)))
    print(
        f"\n[attack] {len(models)} models (one per architecture: {', '.join(args.archs)}), {n} images "
        f"at {size} px, batch {batch}, CPU, best of {args.repeats}"
    )
    print(f"  images attacked per source: {attacked}")
    print(
        f"  transfer job {t['job']:.2f}s | compute bound {t['bound']:.2f}s | "
        f"peer (torchattacks + per-pair loops) {t['peer']:.2f}s"
    )
    print(f"  bound / job = {t['bound'] / t['job']:.3f}  (target >= 0.90)")
    print(f"  peer / job  = {t['peer'] / t['job']:.3f}  (target >= 1.00: never slower)")


def bench_suite(args: argparse.Namespace) -> None:
    """Every other registered attack's job against its own compute bound (same models,
    images and run); the demo config's steps and epochs."""
    from attack.methods.registry import REGISTRY

    size, n, batch = args.attack_size, args.attack_images, 32
    models = make_models(len(args.archs), size, args.archs)
    x = attack_images(n, size)
    print(
        f"\n[suite] {len(models)} models ({', '.join(args.archs)}), {n} images at {size} px, batch {batch}, "
        f"CPU, best of {args.repeats}; demo config (configs/demo.yaml)"
    )
    print(f"  {'attack':<13} {'passes':>18} {'job s':>7} {'bound s':>8} {'bound/job':>9}")
    for name in args.suite_attacks or [a for a in REGISTRY if a != "fgsm"]:
        attack = suite_attack(name)
        run_job(models, x[:batch], batch, attack)  # warm-up
        attacked = {k: len(v) for k, v in run_job(models, x, batch, attack).attacked.items()}
        job = bound = float("inf")
        for _ in range(args.repeats):
            job = min(job, timed(lambda a=attack: run_job(models, x, batch, a)))
            bound = min(bound, bound_passes(models, x, batch, attacked, attack))
        passes = f"{attack.epochs} epochs (fit)" if attack.universal else f"{gradient_passes(attack)} grads"
        print(f"  {name:<13} {passes:>18} {job:>7.2f} {bound:>8.2f} {bound / job:>9.3f}")
    print("  (target >= 0.90 for each)")


def _child(args: argparse.Namespace) -> None:
    """One job in a fresh process (its peak RSS is its own)."""
    torch.set_num_threads(args.threads)
    models = make_models(args.models, args.attack_size)
    x = attack_images(args.attack_images, args.attack_size)
    t = timed(lambda: run_job(models, x, 32))
    print(json.dumps({"seconds": t}))


def run_child(m: int, size: int, n: int, threads: int) -> tuple[float, float]:
    """(job seconds, peak RSS GiB) of the job with `m` models in a child process."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--child",
            "--models",
            str(m),
            "--attack-size",
            str(size),
            "--attack-images",
            str(n),
            "--threads",
            str(threads),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed ({proc.returncode})")
    return float(json.loads(out.strip().splitlines()[-1])["seconds"]), usage.ru_maxrss / 2**20


def bench_scaling(args: argparse.Namespace) -> None:
    sizes = (3, 6, 9) if args.quick else (3, 6, 9, 15)
    n, size = args.scaling_images, args.scaling_size
    print(f"\n[scaling] {n} images at {size} px per job; one process per job")
    rows = [(m, *run_child(m, size, n, torch.get_num_threads())) for m in sizes]
    # least squares: t = a*M (crafts + clean passes) + b*M^2 (probes)
    a_mat = np.array([[m, m * m] for m, _, _ in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(a_mat, np.array([t for _, t, _ in rows]), rcond=None)
    print(f"  {'models':>6} {'seconds':>8} {'fit a*M+b*M^2':>14} {'s per cell':>10} {'peak RSS GiB':>12}")
    for m, t, rss in rows:
        print(f"  {m:>6} {t:>8.1f} {coef[0] * m + coef[1] * m * m:>14.1f} {t / (m * m):>10.2f} {rss:>12.2f}")
    print(
        f"  fit: a = {coef[0]:.2f} s per model (crafting), b = {coef[1]:.3f} s per source/target "
        f"pair (probing)"
    )


def bench_memory(args: argparse.Namespace) -> None:
    m = 9 if args.quick else 15
    t, rss = run_child(m, 224, args.memory_images, torch.get_num_threads())
    print(
        f"\n[memory] {m} models at 224 px, {args.memory_images} images, CPU: peak RSS {rss:.2f} GiB "
        f"(target <= 4 GiB), {t:.0f}s"
    )


# --- data ---------------------------------------------------------------------------------------


def bench_data(args: argparse.Namespace) -> None:
    import pydicom
    from PIL import Image

    from shared.config.experiment import load_config
    from shared.data.cache import load_cached
    from shared.data.images import read_image
    from shared.data.manifest import load_manifest, site_manifest_path
    from shared.data.torchdata import make_loader
    from shared.ml.models import build_model
    from shared.ml.training import make_optimizer, train_epochs
    from shared.prep.splits import make_splits
    from shared.prep.synth.twin import synthesize

    with tempfile.TemporaryDirectory(prefix="fedattack-bench-") as tmp:
        out = Path(tmp)
        synthesize(out / "data", args.data_patients, 256, seed=2)
        cfg = load_config(
            REPO / "configs" / "demo.yaml",
            {
                "output_dir": str(out / "run"),
                "data.datasets.nih.root": str(out / "data" / "nih"),
                "data.datasets.rsna.root": str(out / "data" / "rsna"),
                "data.workers": 0,
            },
        )
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)
        manifest = load_manifest(site_manifest_path(cfg.splits_dir, "C"))
        part = load_cached(manifest, "train", cfg.data.image_size, cfg.cache_dir, 0)
        part = load_cached(manifest, "train", cfg.data.image_size, cfg.cache_dir, 0)  # warm
        loader = make_loader(part, 1, cfg.training.batch_size, True, 0, 0)
        model = build_model("resnet50", cfg.data.image_size, 1)
        opt = make_optimizer(model, cfg.training.optimizer)
        train_epochs(model, loader, opt, 1, torch.device("cpu"))  # warm-up

        def load_only() -> None:
            for _x, _y in loader:
                pass

        t = best_of(
            args.repeats,
            {"load": load_only, "train": lambda: train_epochs(model, loader, opt, 1, torch.device("cpu"))},
        )
        print(
            f"\n[data] site C's train part, {len(part)} images at {cfg.data.image_size} px, warm cache; "
            f"ResNet50, batch {cfg.training.batch_size}, CPU"
        )
        print(f"  loading per epoch {t['load']:.3f}s | training epoch {t['train']:.2f}s (loading included)")
        print(f"  loading / training = {t['load'] / t['train']:.4f}  (target <= 0.05)")

        pngs = sorted((out / "data" / "nih").rglob("*.png"))
        dcms = sorted((out / "data" / "rsna").rglob("*.dcm"))

        def ours(files):
            return lambda: [read_image(p) for p in files]

        def bare_png():
            return [np.asarray(Image.open(p).convert("L")) for p in pngs]

        def bare_dcm():
            return [pydicom.dcmread(p).pixel_array for p in dcms]

        d = best_of(
            args.repeats, {"png": ours(pngs), "png-bare": bare_png, "dcm": ours(dcms), "dcm-bare": bare_dcm}
        )
        print(
            f"  decode, 256 px synthetic files: PNG {len(pngs) / d['png']:.0f} img/s vs bare Pillow "
            f"{len(pngs) / d['png-bare']:.0f} img/s (ratio {d['png-bare'] / d['png']:.2f}); "
            f"JPEG Baseline DICOM {len(dcms) / d['dcm']:.0f} img/s vs bare pydicom "
            f"{len(dcms) / d['dcm-bare']:.0f} img/s (ratio {d['dcm-bare'] / d['dcm']:.2f})"
        )


def bench_prep(args: argparse.Namespace) -> None:
    """The data path at 1024 px as `data check` runs it, at workers = cores: the cache build
    (`load_cached`) and the overlap hashing (`hash_dataset`) from scratch, in their process
    pools, against a bare decode+resize of the same files (benchmarks.datapath.bare) in
    this process. CPU time (this process and its reaped workers), best of --repeats, so
    the machine's other load does not count. Per image: over all the files, and the
    marginal cost (the slope between half and all of them), which leaves out a build's
    fixed cost (the pool's start, the cache's last writes): what 100,000 images cost."""
    import shutil

    from benchmarks.datapath import bare, make_files
    from shared.config.data import loader_workers
    from shared.data.cache import load_cached
    from shared.data.manifest import Manifest
    from shared.data.records import DatasetIndex, Sample
    from shared.prep.overlap import hash_dataset

    def cpu(fn: Callable[[], object]) -> float:
        t0, c0 = time.process_time(), os.times()
        fn()
        c1 = os.times()
        children = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        return time.process_time() - t0 + children

    workers, n, size = loader_workers(-1), args.prep_files, args.prep_size
    print(
        f"\n[prep] {n} radiograph-like 1024 px files per format, cache at {size} px, workers = {workers} "
        f"(cores); CPU ms per image (this process + its workers), best of {args.repeats}; "
        f"all {n} files | marginal (slope from {n // 2} to {n})"
    )
    print(f"  {'format':<6} {'bare':>13} {'cache build':>29} {'hashing':>29}  (target <= 1.25x)")
    with tempfile.TemporaryDirectory(prefix="fedattack-bench-") as tmp:
        root = Path(tmp) / "files"
        root.mkdir()
        make_files(root, n)
        for suffix in ("png", "dcm"):
            samples = tuple(Sample(f"{i}", f"p{i}", f"{i}.{suffix}", 0) for i in range(n))
            out = Path(tmp) / suffix

            def build(k: int, samples: tuple[Sample, ...] = samples, out: Path = out) -> None:
                shutil.rmtree(out / "cache", ignore_errors=True)
                load_cached(
                    Manifest("bench", "bench", "nih", root, {"train": samples[:k]}),
                    "train",
                    size,
                    out / "cache",
                    workers,
                )

            def hashing(k: int, samples: tuple[Sample, ...] = samples, out: Path = out) -> None:
                (out / "hashes.npz").unlink(missing_ok=True)
                hash_dataset(DatasetIndex("bench", root, samples[:k]), out / "hashes.npz", workers)

            def bare_all(k: int, samples: tuple[Sample, ...] = samples) -> None:
                for s in samples[:k]:
                    bare(root / s.relpath, size)

            paths = {"bare": bare_all, "cache": build, "hash": hashing}
            t = {(p, k): float("inf") for p in paths for k in (n // 2, n)}
            for _ in range(args.repeats):  # interleaved; the best of each (noise only adds)
                for (p, k), best in t.items():
                    t[p, k] = min(best, cpu(lambda f=paths[p], k=k: f(k)))
            whole = {p: t[p, n] / n * 1e3 for p in paths}
            slope = {p: (t[p, n] - t[p, n // 2]) / (n - n // 2) * 1e3 for p in paths}

            cell = {
                p: f"{whole[p]:.2f} ({whole[p] / whole['bare']:.2f}x) | "
                f"{slope[p]:.2f} ({slope[p] / slope['bare']:.2f}x)"
                for p in ("cache", "hash")
            }
            bare_cell = f"{whole['bare']:.2f} | {slope['bare']:.2f}"
            print(f"  {suffix:<6} {bare_cell:>13} {cell['cache']:>29} {cell['hash']:>29}")


def bench_flower(args: argparse.Namespace) -> None:
    from benchmarks.flower_overhead import report, run_benchmark

    if args.flower_metrics:
        rows = [json.loads(x) for x in Path(args.flower_metrics).read_text().splitlines()]
        report(rows, "resnet50", f"resnet50, from {args.flower_metrics}")
        return
    for epochs in args.flower_epochs:
        ns = argparse.Namespace(rounds=2, patients=200, size=64, arch="resnet50", local_epochs=epochs)
        report(
            run_benchmark(ns),
            "resnet50",
            f"resnet50 at 64 px, {epochs} local epoch(s) per round, 4 sites on loopback, this machine",
        )


def bench_clientapp(args: argparse.Namespace) -> None:
    from benchmarks.clientapp_start import add_arguments, bench

    p = argparse.ArgumentParser()
    add_arguments(p)
    ns = p.parse_args([])
    ns.repeats = args.repeats
    bench(ns)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--attack-size", type=int, default=96)
    p.add_argument("--attack-images", type=int, default=96)
    p.add_argument("--scaling-size", type=int, default=64)
    p.add_argument("--scaling-images", type=int, default=32)
    p.add_argument("--memory-images", type=int, default=8)
    p.add_argument("--data-patients", type=int, default=120)
    p.add_argument("--prep-files", type=int, default=64, help="1024 px files per format (the prep section)")
    p.add_argument("--prep-size", type=int, default=224, help="the cache's image size (the prep section)")
    p.add_argument("--flower-metrics", help="analyse this metrics.jsonl instead of running a federation")
    p.add_argument(
        "--flower-epochs",
        type=int,
        nargs="+",
        default=[2, 20],
        help="local epochs per round of each Flower run (2: the demo; 20: longer local training)",
    )
    p.add_argument(
        "--archs",
        type=lambda v: tuple(a for a in v.split(",") if a),
        default=ARCHS,
        help="comma-separated timm names, one model each, for the attack and suite sections "
        "(e.g. vit_small_patch16_224,convnext_atto,efficientnet_b0; a ViT's patch size must divide "
        "--attack-size)",
    )
    p.add_argument(
        "--suite-attacks",
        type=lambda v: [a for a in v.split(",") if a],
        default=None,
        help="the suite section's rows (registered names, e.g. nifgsm,bsr+margin; default: all but FGSM)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--models", type=int, default=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.attack_images, args.scaling_images, args.memory_images = 1, 32, 16, 4
        args.data_patients, args.prep_files = 60, 32
    print(
        f"fedattack benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
        f"{args.threads} threads, {os.cpu_count()} CPUs, peak RSS so far "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )
    run = {
        "attack": bench_attack,
        "suite": bench_suite,
        "scaling": bench_scaling,
        "memory": bench_memory,
        "data": bench_data,
        "prep": bench_prep,
        "flower": bench_flower,
        "clientapp": bench_clientapp,
    }
    for name in args.only.split(","):
        if name not in run:
            raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        run[name](args)


if __name__ == "__main__":
    main()
