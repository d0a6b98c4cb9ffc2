"""Our SGD-UAP against adversarial-robustness-toolbox's UniversalPerturbation (the DeepFool-
based algorithm of Moosavi-Dezfooli et al.), on the same model, the same fit images and the
same held-out images, in one run.

    .venv/bin/python -m benchmarks.uap_art --config configs/demo.yaml \
        --checkpoints runs/demo/checkpoints [--model resnet50-global]

ART is a benchmark-only dependency (`pip install adversarial-robustness-toolbox`); the
product never imports it. Both perturbations are L-infinity at the config's eps, fitted on
the fit part of the attack images (the suite's own split, attack.universal.fit_fraction)
and measured on the held-out part: fooling rate = held-out images the model classified
correctly before and misclassifies after / those it classified correctly, with its Wilson
95% interval.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from attack.measure.core import fit_mask
from attack.measure.testsets import attack_set, load_test_sets
from attack.methods.registry import build_attack
from attack.methods.surrogate import Surrogate
from attack.service import load_models, snapshot
from attack.stats import wilson
from shared.config.experiment import load_config


def fooling(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor) -> tuple[int, int]:
    """(misclassified after, correct before) on images x (all pneumonia) under delta."""
    with torch.inference_mode():
        before = model(x).argmax(1) == 1
        after = model(torch.clamp(x + delta, 0.0, 1.0)).argmax(1) == 1
    return int((before & ~after).sum()), int(before.sum())


def art_uap(
    model: torch.nn.Module, x: np.ndarray, eps: float, max_iter: int, attacker: str
) -> tuple[np.ndarray, float]:
    """ART's perturbation fitted on x, and its wall time."""
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=2,
        clip_values=(0.0, 1.0),
    )
    uap = UniversalPerturbation(
        classifier, attacker=attacker,
        attacker_params={"eps": eps, "norm": np.inf} if attacker == "fgsm" else None, eps=eps,
        norm=np.inf, max_iter=max_iter, delta=0.2, verbose=False,
    )  # fmt: skip
    started = time.perf_counter()
    uap.generate(x)
    assert uap.noise is not None
    return uap.noise.astype(np.float32), time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--model", default=None, help="the surrogate (default: every global model)")
    ap.add_argument("--art-iter", type=int, default=10, help="ART's max_iter (passes over the fit images)")
    ap.add_argument("--art-attacker", default="fgsm", help="ART's per-image attacker (its default: deepfool)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config)
    test, _ = load_test_sets(cfg)
    data = attack_set(test, None)
    fit = fit_mask(data.ids, cfg.attack.universal.fit_fraction, cfg.seed)
    x_fit, x_held = data.images[fit], data.images[~fit]
    loaded = load_models(snapshot(args.checkpoints, False, None), cfg, cfg.output_dir / "bench-cache", False)
    names = [args.model] if args.model else [t.name for t in loaded.targets if t.kind == "global"]
    ours = build_attack("uap", cfg.attack.eps, cfg.attack)
    print(
        f"UAP at eps {cfg.attack.eps}: fit on {len(x_fit)} images, measured on {len(x_held)} held-out "
        f"images; ours: SGD-UAP {cfg.attack.universal.epochs} epochs; ART: UniversalPerturbation "
        f"(attacker {args.art_attacker}, max_iter {args.art_iter})"
    )
    print("| surrogate | ours: s | ours: held-out fooling | ART: s | ART: held-out fooling | time ratio |")
    print("|---|---|---|---|---|---|")
    for name in names:
        model = next(t.model for t in loaded.targets if t.name == name).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        started = time.perf_counter()
        y = torch.ones(len(x_fit), dtype=torch.long)
        delta = ours.craft(Surrogate([model]), x_fit, y, None, torch.Generator().manual_seed(cfg.seed))
        t_ours = time.perf_counter() - started
        f_ours, n_ours = fooling(model, x_held, delta)
        for p in model.parameters():
            p.requires_grad_(True)  # ART takes gradients through its own wrapper
        noise, t_art = art_uap(model, x_fit.numpy(), cfg.attack.eps, args.art_iter, args.art_attacker)
        f_art, n_art = fooling(model.eval(), x_held, torch.from_numpy(noise))

        def rate(k: int, n: int) -> str:
            iv = wilson(k, n)
            return f"{k}/{n} = {iv.value:.1%} [{iv.low:.1%}, {iv.high:.1%}]"

        print(
            f"| {name} | {t_ours:.1f} | {rate(f_ours, n_ours)} | {t_art:.1f} | {rate(f_art, n_art)} "
            f"| **{t_art / t_ours:.1f}x** |",
            flush=True,
        )


if __name__ == "__main__":
    main()
