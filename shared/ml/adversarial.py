"""Training-time attacks and the FedProx term, applied inside each site's local training.

Adversarial training (`training.adversarial`): a share of every batch is replaced by its
adversarial version, crafted on the site's current model with the same loss it trains on.
fgsm is fast adversarial training (Wong et al., 2020: uniform random start in the eps
ball, one step of eps * step_fraction); pgd is Madry et al.'s (random start, `steps`
steps). Images stay in [0, 1] pixel space (normalization lives inside the models).

BatchNorm, deliberately "mixed": the crafting passes run in training mode (batch
statistics, as the training step will) but leave the running statistics exactly as they
were, so they count each training batch once; the training step then normalizes the
mixed batch, clean and adversarial images together, and the running statistics describe
that mixture, which is what the weights are fitted to. (Clean-only statistics would
normalize attacked inputs at test time with statistics the weights never trained under.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from shared.config.training import AdversarialTraining
from shared.ml.iterative import iterate


@contextmanager
def batchnorm_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Run forward passes in training mode without touching any running statistic."""
    saved = [
        (b, b.detach().clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adv: AdversarialTraining,
    weight: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial versions of x (L-infinity, eps, in [0, 1]) against `model`'s
    (class-weighted) cross-entropy: the iterative kernel (shared.ml.iterative) from a
    uniform random start, `adv.steps` signed-gradient steps of eps * step_fraction. The
    start is drawn on the CPU (`generator` or the global one), whatever the device."""
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with batchnorm_statistics_kept(model):
            return iterate(
                lambda images: F.cross_entropy(model(images), y, weight=weight),
                x,
                adv.eps,
                adv.eps * adv.step_fraction,
                adv.steps,
                start=(noise * 2 - 1) * adv.eps,
            )
    finally:
        for p in params:
            p.requires_grad_(True)


def mix(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adv: AdversarialTraining,
    weight: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The batch with its first round(share * n) images (at least two, for BatchNorm)
    replaced by their adversarial versions; the loader shuffles, so that is a random subset."""
    k = min(len(x), max(2, round(adv.share * len(x))))
    out = x.clone()
    out[:k] = perturb(model, x[:k], y[:k], adv, weight, generator)
    return out


class Proximal:
    """FedProx's term (Li et al., 2020): (mu / 2) * ||w - w_global||^2 over the trainable
    parameters, w_global being the weights the site received (the paper's squared norm)."""

    def __init__(self, model: nn.Module, mu: float) -> None:
        self.mu = mu
        self.anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def term(self, model: nn.Module) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        total = sum(((p.float() - a.float()) ** 2).sum() for p, a in zip(params, self.anchor, strict=True))
        return 0.5 * self.mu * torch.as_tensor(total)
