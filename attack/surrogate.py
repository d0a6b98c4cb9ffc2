"""What an attack crafts on: one model or an ensemble of surrogate models.

An ensemble predicts with the mean of its members' logits. Its loss, which the attacks
differentiate, is either the cross-entropy of those mean logits (`logits`) or the mean of
the members' cross-entropies (`loss`); for a single model both are CE(model(x), y), with
exactly the operations torchattacks uses, so single-model attacks match it bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

EnsembleMode = Literal["logits", "loss"]


class Surrogate(nn.Module):
    """One or more models in eval mode with frozen parameters, seen as one classifier."""

    def __init__(self, members: Sequence[nn.Module], mode: EnsembleMode = "logits") -> None:
        super().__init__()
        if not members:
            raise ValueError("a surrogate needs at least one model")
        self.members = nn.ModuleList(members)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](x)
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss an attack ascends (or, targeted, descends), averaged over the batch."""
        if len(self.members) == 1 or self.mode == "logits":
            return F.cross_entropy(self(x), y)
        return torch.stack([F.cross_entropy(m(x), y) for m in self.members]).mean()

    def input_gradient(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d loss / dx at `x` (parameters untouched)."""
        x = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(x, y), x)
        return grad


def frozen(model: nn.Module) -> nn.Module:
    """`model` in eval mode with gradients switched off for its parameters."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
