"""The one iterative L-infinity attack kernel: signed-gradient steps projected on the eps ball.

Used by the sites' adversarial training (shared.ml.adversarial: Madry's PGD and fast
adversarial training) and by the attack service's iterative family
(attack.methods.iterative: BIM, PGD, MI-FGSM, DI-FGSM, checked bit for bit against
torchattacks). Each step: g = d loss / d x at the current images; with `normalize`, g is
divided by its mean absolute value per image and accumulated with momentum `decay`
(MI-FGSM); then x <- clip_{[0, 1]}(x0 + clip_{[-eps, eps]}(x + step_size * sign(g) - x0)).
These are torchattacks' operations in torchattacks' order, so the images are the same
bits. The random start is the caller's draw (each draws it from its own generator in its
own way), handed in as an offset in the eps ball.

The transfer attacks change only how g is obtained, through two optional hooks (without
them the steps are the ones above, operation for operation): `gradient(adv, momentum)`
replaces d loss / d x (NI-FGSM's look-ahead, SI's scale copies, VMI's variance tuning,
BSR's block copies, SVRE's ensemble), and `smooth(g)` runs before the normalization
(TI-FGSM's kernel).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def iterate(
    loss: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    *,
    start: torch.Tensor | None = None,
    normalize: bool = False,
    decay: float = 0.0,
    first_gradient: torch.Tensor | None = None,
    gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    smooth: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`steps` ascent steps of `loss` (a scalar function of the images, which may draw its
    own random input transform) from x, or from clip(x + start, 0, 1) when a random
    `start` offset is given. `first_gradient`: the loss's gradient at x, already computed
    (a caller that crafts several attacks shares it); only valid without a random start.
    `gradient(adv, momentum)`: the ascent direction at adv given the momentum so far (in
    place of d loss / d adv); `smooth`: a map applied to each gradient before normalizing."""
    if start is not None and first_gradient is not None:
        raise ValueError("first_gradient is the gradient at x; a random start moves away from x")
    images = x.detach()
    adv = images.clone() if start is None else torch.clamp(images + start, min=0, max=1).detach()
    momentum = torch.zeros_like(images)
    for step in range(steps):
        if step == 0 and first_gradient is not None:
            g = first_gradient
        elif gradient is not None:
            g = gradient(adv, momentum)
        else:
            adv.requires_grad_(True)
            (g,) = torch.autograd.grad(loss(adv), adv)
        if smooth is not None:
            g = smooth(g)
        if normalize:
            g = g / torch.mean(torch.abs(g), dim=(1, 2, 3), keepdim=True)
            g = g + momentum * decay
            momentum = g
        adv = adv.detach() + step_size * g.sign()
        delta = torch.clamp(adv - images, min=-eps, max=eps)
        adv = torch.clamp(images + delta, min=0, max=1).detach()
    return adv
