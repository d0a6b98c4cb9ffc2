"""The attack registry. Attacks take and return [0, 1] image tensors; normalization lives
inside the models. Each attack holds only its maths; the measurement (attack.transfer)
owns batching and devices and works with any attack through the `Attack` protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import AttackError


class Attack(Protocol):
    """What the measurement needs from an attack.

    `craft` returns a compact code of the adversarial images (the measurement holds the
    codes of every source until every target has probed them) and `apply` rebuilds the
    adversarial images exactly from the clean ones and the code. `uses_clean_gradient`
    says whether `craft` can take the gradient of CE(model(x), y) at the clean images,
    which the measurement gets almost for free from its clean pass."""

    @property
    def name(self) -> str: ...

    @property
    def uses_clean_gradient(self) -> bool: ...

    def craft(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def apply(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor: ...


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(model(x), y) / dx, with the model in eval mode and its parameters untouched."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


@dataclass(frozen=True)
class FGSM:
    """x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1) (Goodfellow et al., 2015).
    Its code is the signed gradient as int8 in {-1, 0, 1}: one byte per pixel."""

    eps: float
    name: ClassVar[str] = "fgsm"
    uses_clean_gradient: ClassVar[bool] = True

    def craft(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor | None = None
    ) -> torch.Tensor:
        g = input_gradient(model, x, y) if grad is None else grad
        return g.sign().to(torch.int8)

    def apply(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + self.eps * code.to(x.dtype), 0.0, 1.0)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.craft(model, x, y))


REGISTRY: dict[str, Callable[..., Attack]] = {"fgsm": FGSM}


def build_attack(name: str, eps: float) -> Attack:
    """The registered attack called `name` (eps is validated where the config is parsed)."""
    try:
        return REGISTRY[name](eps=eps)
    except KeyError:
        raise AttackError(f"unknown attack {name!r}; registered: {sorted(REGISTRY)}") from None
