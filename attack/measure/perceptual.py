"""How visible an adversarial set is: the mean over its images of the perturbation's L2 and
L-infinity norms, the PSNR and the SSIM against the clean images ([0, 1] pixel range).

SSIM is pytorch-msssim's (Wang et al. 2004: an 11 x 11 Gaussian window of sigma 1.5,
K = (0.01, 0.03)); on images smaller than 11 pixels the window is the largest odd size
that fits. PSNR = 10 log10(1 / MSE) per image; an unchanged image (MSE 0) counts as
PSNR_CAP dB so the mean stays finite.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from pytorch_msssim import ssim  # type: ignore[import-untyped]

PSNR_CAP = 100.0
WINDOW = 11


@dataclass(frozen=True)
class Perceptual:
    n: int
    l2: float
    linf: float
    psnr: float
    ssim: float

    def to_json(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def psnr(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """[N] PSNR in dB (peak 1), capped at PSNR_CAP."""
    mse = ((adv - clean) ** 2).flatten(1).mean(1)
    floor = 10 ** (-PSNR_CAP / 10)
    return 10 * torch.log10(1 / mse.clamp(min=floor))


def perceptual(clean: torch.Tensor, adv: torch.Tensor) -> Perceptual:
    """The set's means (float64 sums); NaN for an empty set."""
    if len(clean) == 0:
        return Perceptual(0, math.nan, math.nan, math.nan, math.nan)
    clean, adv = clean.double(), adv.double()
    d = (adv - clean).flatten(1)
    side = min(clean.shape[-2:])
    window = min(WINDOW, side if side % 2 else side - 1)
    s = ssim(adv, clean, data_range=1.0, size_average=False, win_size=window)
    return Perceptual(
        len(clean),
        float(d.norm(dim=1).mean()),
        float(d.abs().amax(dim=1).mean()),
        float(psnr(clean, adv).mean()),
        float(s.mean()),
    )
