"""The iterative family: I-FGSM (BIM), PGD (random start), MI-FGSM (momentum), DI-FGSM
(input diversity) and their combination MI-DI, as one attack with switches.

Each step: g = grad of the surrogate's loss at the (diversified) current images; for the
momentum/diversity variants g is normalized by its mean absolute value per image and
accumulated with the momentum; then x <- clip_{x0, eps}(x + step * sign(g)), clipped to
[0, 1]. The operations and the order of random draws are torchattacks' (PGD, MIFGSM,
DIFGSM), so the images are bit-identical for the same generator state; BIM uses PGD's
projection, which differs from torchattacks' BIM only by rounding (the test says how much).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attack.methods.surrogate import Surrogate


@dataclass(frozen=True)
class Iterative:
    """An iterative L-infinity attack; its code is the adversarial images themselves."""

    name: str
    eps: float
    steps: int
    step_size: float
    random_start: bool = False
    normalize: bool = False  # divide each image's gradient by its mean |g| (MI, DI)
    decay: float = 0.0  # momentum factor (MI-FGSM: 1.0)
    diversity_prob: float = 0.0  # probability of the random resize-and-pad transform (DI)
    resize_rate: float = 0.9
    universal: bool = False

    @property
    def uses_clean_gradient(self) -> bool:
        """The first step's gradient is the clean one unless the start or input is random."""
        return not self.random_start and self.diversity_prob == 0.0

    def craft(
        self,
        surrogate: Surrogate,
        x: torch.Tensor,
        y: torch.Tensor,
        grad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        images = x.detach()
        adv = images.clone()
        if self.random_start:
            noise = torch.empty_like(adv).uniform_(-self.eps, self.eps, generator=generator)
            adv = torch.clamp(adv + noise, min=0, max=1).detach()
        momentum = torch.zeros_like(images)
        for step in range(self.steps):
            if step == 0 and grad is not None and self.uses_clean_gradient:
                g = grad
            else:
                adv.requires_grad_(True)
                inputs = self.diversify(adv, generator) if self.diversity_prob > 0 else adv
                (g,) = torch.autograd.grad(surrogate.loss(inputs, y), adv)
            if self.normalize:
                g = g / torch.mean(torch.abs(g), dim=(1, 2, 3), keepdim=True)
                g = g + momentum * self.decay
                momentum = g
            adv = adv.detach() + self.step_size * g.sign()
            delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
            adv = torch.clamp(images + delta, min=0, max=1).detach()
        return adv

    def apply(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return code

    def diversify(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random resize to rnd x rnd and zero padding back (to the larger side), applied
        with probability `diversity_prob` (one draw per batch, as torchattacks does)."""
        size = x.shape[-1]
        resize = int(size * self.resize_rate)
        if self.resize_rate < 1:
            size, resize = resize, x.shape[-1]
        rnd = torch.randint(low=size, high=resize, size=(1,), dtype=torch.int32, generator=generator)
        rescaled = F.interpolate(x, size=[int(rnd), int(rnd)], mode="bilinear", align_corners=False)
        rem = resize - rnd
        top = torch.randint(low=0, high=int(rem), size=(1,), dtype=torch.int32, generator=generator)
        left = torch.randint(low=0, high=int(rem), size=(1,), dtype=torch.int32, generator=generator)
        pad = [int(left), int(rem - left), int(top), int(rem - top)]
        padded = F.pad(rescaled, pad, value=0)
        return padded if torch.rand(1, generator=generator) < self.diversity_prob else x
