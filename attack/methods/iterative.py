"""The iterative family: I-FGSM (BIM), PGD (random start), MI-FGSM (momentum), DI-FGSM
(input diversity) and their combination MI-DI, as one attack with switches.

The steps are the one iterative kernel's (shared.ml.iterative, which the sites'
adversarial training runs too) on the surrogate's loss at the (diversified) current
images. The operations and the order of random draws are torchattacks' (PGD, MIFGSM,
DIFGSM), so the images are bit-identical for the same generator state; BIM uses PGD's
projection, which differs from torchattacks' BIM only by rounding (the test says how much).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attack.methods.surrogate import Surrogate
from shared.ml.iterative import iterate


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
        start = None
        if self.random_start:  # torchattacks' draw
            start = torch.empty_like(x).uniform_(-self.eps, self.eps, generator=generator)

        def loss(adv: torch.Tensor) -> torch.Tensor:
            return surrogate.loss(self.diversify(adv, generator) if self.diversity_prob > 0 else adv, y)

        return iterate(
            loss,
            x,
            self.eps,
            self.step_size,
            self.steps,
            start=start,
            normalize=self.normalize,
            decay=self.decay,
            first_gradient=grad if self.uses_clean_gradient else None,
        )

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
