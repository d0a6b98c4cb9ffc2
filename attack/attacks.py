"""The attack registry. Attacks take and return [0, 1] image tensors; normalization lives
inside the models. Each attack holds only its maths."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import AttackError


class Attack(Protocol):
    """Maps clean images and their labels to adversarial images, all in [0, 1]."""

    name: str

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(model(x), y) / dx, with the model in eval mode and its parameters untouched."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


@dataclass(frozen=True)
class FGSM:
    """x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1) (Goodfellow et al., 2015)."""

    eps: float
    name: str = "fgsm"

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The signed gradient, int8 in {-1, 0, 1}: one byte per pixel for the whole attack."""
        return input_gradient(model, x, y).sign().to(torch.int8)

    def correct_and_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         min_correct: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clean prediction and the attack step from one forward pass: which of `x` the
        model classifies as `y`, and the step of those (None when fewer than `min_correct`
        of the batch are right: a backward over the whole batch would then cost more than a
        fresh forward+backward over the correct ones). Per-sample gradients do not depend
        on the rest of the batch (eval mode); the loss is the mean over the correct
        images, as if they had been a batch of their own."""
        x = x.detach().clone().requires_grad_(True)
        logits = model(x)
        ok = logits.detach().argmax(1) == y
        if int(ok.sum()) == 0 or float(ok.float().mean()) < min_correct:
            return ok, None
        (grad,) = torch.autograd.grad(F.cross_entropy(logits[ok], y[ok]), x)
        return ok, grad[ok].sign().to(torch.int8)

    def apply(self, x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Rebuild the adversarial images from the clean ones and the stored step."""
        return torch.clamp(x + self.eps * step.to(x.dtype), 0.0, 1.0)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.step(model, x, y))


REGISTRY: dict[str, Callable[..., Attack]] = {"fgsm": FGSM}


def build_attack(name: str, eps: float) -> FGSM:
    """The attack called `name` (only FGSM so far; PGD/MI-FGSM/UAP register here)."""
    if not 0.0 < eps <= 1.0:
        raise AttackError(f"eps must be in (0, 1] (pixel space [0, 1]), got {eps}")
    try:
        return REGISTRY[name](eps=eps)  # type: ignore[return-value]
    except KeyError:
        raise AttackError(f"unknown attack {name!r}; registered: {sorted(REGISTRY)}") from None
