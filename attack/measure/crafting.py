"""Crafting: the adversarial codes a source produces for the attack images, batched.

For single-model sources of attacks that take the clean gradient, the clean pass is fused
with the attack's first gradient (one forward with autograd instead of two forwards).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from attack.measure.core import Settings, batches
from attack.methods.registry import Attack
from attack.methods.surrogate import Surrogate, objective_loss


def digest(code: torch.Tensor | None) -> str:
    """sha256 of a code's bytes: shows which adversarial images a source produced."""
    if code is None:
        return "empty"
    return hashlib.sha256(code.contiguous().numpy().tobytes()).hexdigest()


# Fused clean pass + crafting (CPU, single-model sources of attacks that take the clean
# gradient): forward with autograd once, backward when at least this share of the batch is
# right. Costs, with f one forward and a backward ~2f: fused 3f, separate f + 3f*share.
FUSE_MIN_CORRECT = 2 / 3


def clean_and_craft(
    model: nn.Module, attack: Attack, images: torch.Tensor, s: Settings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct [N] bool, codes of the correct images in order) for a single-model source,
    its clean pass fused with the attack's first gradient."""
    surrogate = Surrogate([model])
    correct = torch.empty(len(images), dtype=torch.bool)
    parts = []
    for sl in batches(len(images), s.batch):
        x = images[sl].detach().clone().requires_grad_(True)
        y = torch.ones(len(x), dtype=torch.long)
        logits = model(x)
        ok = logits.detach().argmax(1) == y
        correct[sl] = ok
        if int(ok.sum()) == 0:
            continue
        grad = None
        if float(ok.float().mean()) >= FUSE_MIN_CORRECT:
            (g,) = torch.autograd.grad(objective_loss(logits[ok], y[ok], attack.objective), x)
            grad = g[ok]
        parts.append(attack.craft(surrogate, x.detach()[ok], y[ok], grad, generator).cpu())
    empty = torch.empty((0, *images.shape[1:]), dtype=torch.int8)
    return correct, torch.cat(parts) if parts else empty


def craft(
    surrogate: Surrogate, attack: Attack, images: torch.Tensor, s: Settings, generator: torch.Generator
) -> torch.Tensor:
    """Per-image attacks: the codes of `images` (all pneumonia), batched; universal
    attacks: one code fitted on all of `images`."""
    if attack.universal:
        x = images.to(s.device)
        return attack.craft(
            surrogate, x, torch.ones(len(x), dtype=torch.long, device=s.device), None, generator
        ).cpu()
    parts = []
    for sl in batches(len(images), s.batch):
        x = images[sl].to(s.device)
        y = torch.ones(len(x), dtype=torch.long, device=s.device)
        parts.append(attack.craft(surrogate, x, y, None, generator).cpu())
    return torch.cat(parts) if parts else torch.empty((0, *images.shape[1:]))
