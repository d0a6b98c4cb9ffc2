"""What an attack crafts on: one model or an ensemble of surrogate models.

An ensemble predicts with the mean of its members' logits (`scaled`: of their scaled
logits). Its loss, which the attacks differentiate, is either the cross-entropy of those
mean logits (`logits`), the mean of the members' cross-entropies (`loss`), or the
cross-entropy of the mean of *scaled* logits (`scaled`): each member's logits divided by
the spread (sd) of its pneumonia margin on the attack images' fit part, so that a member
with far larger margins does not decide the ensemble on its own (on the seed-9 demo
store the InceptionV3 locals' margins spread 1.6-4.8 times as widely as the other
members'; under `logits` the insider's ensemble fooled 77-83% of the InceptionV3 targets
and 0-1.2% of the DenseNet121 ones). For a single model every mode is CE(model(x), y),
with exactly the operations torchattacks uses, so single-model attacks match it bit for
bit. `svre` ensembles predict as `logits` does, and their attacks step along SVRE's
variance-reduced direction over the members' own losses (attack.methods.svre).

Every loss is either the cross-entropy (`ce`) or the margin loss (`margin`: the largest
other logit minus the true class's logit, Carlini & Wagner 2017), averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

EnsembleMode = Literal["logits", "loss", "scaled", "svre"]
Objective = Literal["ce", "margin"]
OBJECTIVES: tuple[Objective, ...] = ("ce", "margin")


def objective_loss(logits: torch.Tensor, y: torch.Tensor, objective: Objective = "ce") -> torch.Tensor:
    """The batch mean of CE(logits, y), or of the margin max_{j != y} z_j - z_y."""
    if objective == "ce":
        return F.cross_entropy(logits, y)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return (other - true).mean()


class Surrogate(nn.Module):
    """One or more models in eval mode with frozen parameters, seen as one classifier."""

    def __init__(self, members: Sequence[nn.Module], mode: EnsembleMode = "logits") -> None:
        super().__init__()
        if not members:
            raise ValueError("a surrogate needs at least one model")
        self.members = nn.ModuleList(members)
        self.mode = mode
        self.scales: tuple[float, ...] | None = None  # `scaled`: set by fit_scales

    @property
    def needs_scales(self) -> bool:
        return len(self.members) > 1 and self.mode == "scaled"

    @torch.inference_mode()
    def fit_scales(self, images: torch.Tensor, batch: int, device: torch.device) -> tuple[float, ...]:
        """`scaled`: each member's sd of its margin (pneumonia logit minus normal logit)
        over `images`, computed once; the ensemble divides that member's logits by it.
        The margin's sd ignores a constant shift, so a folded decision threshold does not
        change it, and a member's logits times c give the same scaled ensemble."""
        scales = []
        for m in self.members:
            parts = []
            for i in range(0, len(images), batch):
                z = m(images[i : i + batch].to(device)).float()
                parts.append((z[:, 1] - z[:, 0]).cpu())
            margins = torch.cat(parts)
            sd = float(margins.std()) if len(margins) > 1 else 0.0
            scales.append(sd if sd > 1e-6 else 1.0)  # a constant model: unscaled
        self.scales = tuple(scales)
        return self.scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](x)
        if self.mode != "scaled":
            return torch.stack([m(x) for m in self.members]).mean(dim=0)
        if self.scales is None:
            raise RuntimeError("a scaled ensemble needs fit_scales() before use")
        return torch.stack([m(x) / s for m, s in zip(self.members, self.scales, strict=True)]).mean(dim=0)

    @property
    def variance_reduced(self) -> bool:
        """An ensemble whose attacks step along SVRE's direction."""
        return len(self.members) > 1 and self.mode == "svre"

    def loss(self, x: torch.Tensor, y: torch.Tensor, objective: Objective = "ce") -> torch.Tensor:
        """The loss an attack ascends (or, targeted, descends), averaged over the batch."""
        if len(self.members) == 1 or self.mode not in ("loss", "svre"):
            return objective_loss(self(x), y, objective)
        return torch.stack([objective_loss(m(x), y, objective) for m in self.members]).mean()

    def member_loss(
        self, k: int, x: torch.Tensor, y: torch.Tensor, objective: Objective = "ce"
    ) -> torch.Tensor:
        """Member k's own loss (SVRE's stochastic term)."""
        return objective_loss(self.members[k](x), y, objective)

    def input_gradient(self, x: torch.Tensor, y: torch.Tensor, objective: Objective = "ce") -> torch.Tensor:
        """d loss / dx at `x` (parameters untouched)."""
        x = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(x, y, objective), x)
        return grad
