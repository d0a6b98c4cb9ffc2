"""The iterative family as one attack with switches: I-FGSM (BIM), PGD (random start),
MI-FGSM (momentum), DI-FGSM (input diversity), MI-DI, and the transfer attacks built on
them: NI-FGSM (Nesterov look-ahead), SI-NI-FGSM (scale copies), VMI-FGSM (variance
tuning), TI-FGSM (translation-invariant smoothing), SGM (skip gradients), BSR (block
shuffle and rotation); on an `svre` ensemble the gradient is SVRE's direction.

The steps are the one iterative kernel's (shared.ml.iterative, which the sites'
adversarial training runs too); each switch only changes how the kernel's gradient is
obtained. The operations and the order of random draws are torchattacks' (PGD, MIFGSM,
DIFGSM, NIFGSM, SINIFGSM, VMIFGSM, TIFGSM), so the images are bit-identical for the same
generator state; BIM uses PGD's projection, which differs from torchattacks' BIM only by
rounding (the test says how much). VMI-FGSM skips the neighbour sampling of its last step,
whose variance no later step uses (torchattacks computes and discards it): same images,
N fewer gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attack.methods.sgm import skip_gradients
from attack.methods.surrogate import Objective, Surrogate
from attack.methods.svre import svre_direction
from attack.methods.transforms import block_shuffle_rotate, gaussian_kernel, smooth
from shared.ml.iterative import iterate

Gradient = Callable[[torch.Tensor], torch.Tensor]


def drawn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """An empty tensor of x's shape and dtype for a random draw, on the generator's device
    (x's without one): a CUDA tensor cannot draw from the CPU generator the measurement
    seeds per source, and drawn on the CPU the numbers are the same on every device."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device if generator is None else generator.device)


@dataclass(frozen=True)
class Iterative:
    """An iterative L-infinity attack; its code is the adversarial images themselves."""

    name: str
    eps: float
    steps: int
    step_size: float
    random_start: bool = False
    normalize: bool = False  # divide each image's gradient by its mean |g| (MI, DI, ...)
    decay: float = 0.0  # momentum factor (MI-FGSM: 1.0)
    diversity_prob: float = 0.0  # probability of the random resize-and-pad transform (DI)
    resize_rate: float = 0.9
    nesterov: bool = False  # NI: the gradient at adv + decay * step_size * momentum
    scale_copies: int = 1  # SI: the mean gradient over x / 2^i, i < scale_copies
    variance_samples: int = 0  # VMI: N neighbours for the gradient variance
    variance_bound: float = 1.5  # VMI: neighbours uniform in the (beta * eps) cube
    kernel_size: int = 0  # TI: the Gaussian kernel's side (odd; 0: no smoothing)
    kernel_sigma: float = 3.0  # TI: the kernel spans [-nsig, nsig] standard deviations
    skip_gamma: float = 1.0  # SGM: the residual branches' gradient factor (1: none)
    block_copies: int = 0  # BSR: transformed copies per gradient (0: none)
    blocks: int = 2  # BSR: blocks per side
    max_angle: float = 24.0  # BSR: rotation range in degrees
    objective: Objective = "ce"
    universal: bool = False

    @property
    def uses_clean_gradient(self) -> bool:
        """The first step's gradient is the clean one unless the start or input is random
        or the gradient is not the plain one at x."""
        plain = self.scale_copies == 1 and self.variance_samples == 0 and self.block_copies == 0
        return not self.random_start and self.diversity_prob == 0.0 and plain and self.skip_gamma == 1.0

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
            start = drawn_like(x, generator).uniform_(-self.eps, self.eps, generator=generator).to(x.device)

        def loss(adv: torch.Tensor) -> torch.Tensor:
            return surrogate.loss(
                self.diversify(adv, generator) if self.diversity_prob > 0 else adv, y, self.objective
            )

        kernel = gaussian_kernel(self.kernel_size, self.kernel_sigma) if self.kernel_size else None
        with ExitStack() as stack:
            if self.skip_gamma != 1.0:
                stack.enter_context(skip_gradients(surrogate, self.skip_gamma))
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
                gradient=self._gradient(surrogate, x, y, generator),
                smooth=None if kernel is None else (lambda g: smooth(g, kernel)),
            )

    def _gradient(
        self, surrogate: Surrogate, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The kernel's gradient hook, or None for the plain d loss / d adv."""
        special = self.nesterov or self.scale_copies > 1 or self.variance_samples or self.block_copies
        if not special and not surrogate.variance_reduced:
            return None
        if surrogate.variance_reduced:

            def point(p: torch.Tensor) -> torch.Tensor:
                return svre_direction(
                    lambda k, q: self._at(
                        lambda z, t: surrogate.member_loss(k, z, t, self.objective), q, y, generator
                    ),
                    len(surrogate.members),
                    p,
                    x0,
                    self.eps,
                    self.step_size,
                    generator,
                )
        else:

            def point(p: torch.Tensor) -> torch.Tensor:
                return self._at(lambda z, t: surrogate.loss(z, t, self.objective), p, y, generator)

        base = self._variance_tuned(point, generator) if self.variance_samples else point

        def gradient(adv: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
            if self.nesterov:  # torchattacks' look-ahead: adv + decay * alpha * momentum
                return base(adv + self.decay * self.step_size * momentum)
            return base(adv)

        return gradient

    def _at(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        p: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """d loss / d p with the input transforms: BSR's copies, SI's scale copies
        (summed then divided, in torchattacks' order) or DI's resize-and-pad."""
        p = p.detach().requires_grad_(True)
        if self.block_copies:
            copies = torch.cat(
                [
                    block_shuffle_rotate(p, self.blocks, self.max_angle, generator)
                    for _ in range(self.block_copies)
                ]
            )
            return torch.autograd.grad(loss(copies, y.repeat(self.block_copies)), p)[0]
        if self.scale_copies > 1:
            total = torch.zeros_like(p)
            for i in torch.arange(self.scale_copies):
                total += torch.autograd.grad(loss(self._diverse(p / torch.pow(2, i), generator), y), p)[0]
            return total / self.scale_copies
        return torch.autograd.grad(loss(self._diverse(p, generator), y), p)[0]

    def _variance_tuned(self, point: Gradient, generator: torch.Generator | None) -> Gradient:
        """VMI: g_t + v_t, with v_{t+1} the mean gradient over N neighbours of x_t minus g_t."""
        v: list[torch.Tensor] = []
        calls = [0]
        bound = self.eps * self.variance_bound

        def gradient(adv: torch.Tensor) -> torch.Tensor:
            g = point(adv)
            out = g + v[0] if v else g + torch.zeros_like(g)
            calls[0] += 1
            if calls[0] < self.steps:  # the last step's variance is never used
                total = torch.zeros_like(adv)
                for _ in range(self.variance_samples):
                    # torchattacks draws randn_like(x) and overwrites it with uniform_
                    noise = drawn_like(adv, generator).normal_(generator=generator)
                    noise = noise.uniform_(-bound, bound, generator=generator).to(adv.device)
                    total += point(adv.detach() + noise)
                v[:] = [total / self.variance_samples - g]
            return out

        return gradient

    def _diverse(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.diversify(x, generator) if self.diversity_prob > 0 else x

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
