"""A universal adversarial perturbation: one delta for every image, learned by minibatch
optimisation over the fit images (SGD-UAP, Shafahi et al., AAAI 2020): each minibatch
moves delta by a signed-gradient (or Adam) step on the surrogate's loss at clip(x + delta),
then projects it back to the eps ball. Untargeted: ascend the loss of the true label.
Targeted: descend the loss of "no pneumonia" (class 0).

Hirano & Takemoto (BMC Medical Imaging 2021) report UAPs at the same budget (eps = 0.02
of the pixel range) that fool chest X-ray classifiers of seven architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from attack.methods.surrogate import Objective, Surrogate

NO_PNEUMONIA = 0


@dataclass(frozen=True)
class Universal:
    """SGD-UAP; its code is the perturbation delta [1, C, H, W], shared by every image."""

    name: str
    eps: float
    targeted: bool
    epochs: int
    batch_size: int
    step_size: float
    optimizer: Literal["sign", "adam"] = "sign"
    objective: Objective = "ce"
    universal: bool = True
    uses_clean_gradient: bool = False

    def craft(
        self,
        surrogate: Surrogate,
        x: torch.Tensor,
        y: torch.Tensor,
        grad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Learn delta on the fit images `x` (labels `y`)."""
        delta = torch.zeros((1, *x.shape[1:]), device=x.device, requires_grad=True)
        goal = torch.full_like(y, NO_PNEUMONIA) if self.targeted else y
        sign = -1.0 if self.targeted else 1.0  # descend towards the target, else ascend
        adam = (
            torch.optim.Adam([delta], lr=self.step_size, maximize=not self.targeted)
            if self.optimizer == "adam"
            else None
        )
        for _ in range(self.epochs):
            order = torch.randperm(len(x), generator=generator).to(x.device)
            for i in range(0, len(x), self.batch_size):
                idx = order[i : i + self.batch_size]
                loss = surrogate.loss(torch.clamp(x[idx] + delta, 0.0, 1.0), goal[idx], self.objective)
                (g,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    if adam is not None:
                        delta.grad = g
                        adam.step()
                    else:
                        delta += sign * self.step_size * g.sign()
                    delta.clamp_(-self.eps, self.eps)
        return delta.detach()

    def reach(self, n_fit: int) -> float | None:
        """The farthest sign steps can move delta from zero over `n_fit` images (None for
        Adam, whose steps are not bounded so)."""
        if self.optimizer != "sign":
            return None
        return self.epochs * -(-n_fit // self.batch_size) * self.step_size

    def apply(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + code.to(x.dtype), 0.0, 1.0)
