"""How visible an adversarial set is: the mean over its images of the perturbation's L2 and
L-infinity norms, the PSNR and the SSIM against the clean images ([0, 1] pixel range).

SSIM is Wang et al. (2004) as pytorch-msssim computes it (an 11 x 11 Gaussian window of
sigma 1.5, K = (0.01, 0.03), valid positions only, the map's mean per image; tested equal
to it): on images smaller than 11 pixels the window is the largest odd size that fits. The
window is separable, so the blur here is two products with banded matrices in float64, 64
images at a time: pytorch-msssim's grouped float64 convolutions took 0.81 s for 256 images
at 96 px, half a ConvNeXt-atto's whole attack (BENCHMARKS.md); this takes 0.11 s.
PSNR = 10 log10(1 / MSE) per image; an unchanged image (MSE 0) counts as PSNR_CAP dB so
the mean stays finite.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

PSNR_CAP = 100.0
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
CHUNK = 64  # images per SSIM pass: its float64 maps of 256 images at 96 px run 2x slower at once


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


def gaussian_window(size: int, sigma: float = SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian of `size` taps (odd), float64."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def band(n: int, g: torch.Tensor) -> torch.Tensor:
    """[n, n - k + 1]: column j holds the window g at rows j .. j + k - 1, so that
    `rows @ band` is the valid 1-D filtering of each row."""
    k = len(g)
    m = torch.zeros(n, n - k + 1, dtype=torch.float64)
    for j in range(n - k + 1):
        m[j : j + k, j] = g
    return m


def blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] filtered by the separable window g (x) g over the positions where it
    fits (valid): [N, C, H - k + 1, W - k + 1], as two matrix products with banded
    matrices (BLAS: far faster on the CPU than a grouped convolution in float64)."""
    return band(x.shape[-2], g).T @ (x @ band(x.shape[-1], g))


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """[N] SSIM of x against y ([N, C, H, W], data range 1), the mean of the SSIM map over
    the valid positions and the channels."""
    g = gaussian_window(window)
    c1, c2 = K1**2, K2**2
    mx, my, xx, yy, xy = blur(torch.stack([x, y, x * x, y * y, x * y]), g)
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    s = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    return s.flatten(2).mean(-1).mean(1)


def perceptual(clean: torch.Tensor, adv: torch.Tensor) -> Perceptual:
    """The set's means (float64 sums); NaN for an empty set."""
    if len(clean) == 0:
        return Perceptual(0, math.nan, math.nan, math.nan, math.nan)
    clean, adv = clean.double(), adv.double()
    d = (adv - clean).flatten(1)
    side = min(clean.shape[-2:])
    window = min(WINDOW, side if side % 2 else side - 1)
    s = torch.cat([ssim(adv[i : i + CHUNK], clean[i : i + CHUNK], window) for i in range(0, len(adv), CHUNK)])
    return Perceptual(
        len(clean),
        float(d.norm(dim=1).mean()),
        float(d.abs().amax(dim=1).mean()),
        float(psnr(clean, adv).mean()),
        float(s.mean()),
    )
