"""The input and gradient transforms of the transfer attacks, each a pure function of its
tensors and the generator it is given.

- `gaussian_kernel` / `smooth`: TI-FGSM's translation invariance (Dong et al., CVPR 2019):
  the gradient convolved, channel by channel, with a normalized Gaussian kernel (the
  kernel torchattacks' TIFGSM builds: a k x k outer product of the standard normal pdf at
  k points spread over [-nsig, nsig]).
- `block_shuffle_rotate`: BSR (Wang et al., CVPR 2024): the image cut into `blocks` strips
  of random lengths along a random first axis, the strips shuffled, each strip rotated by
  one random angle in [-max_angle, max_angle] degrees, then cut into `blocks` pieces along
  the other axis and those shuffled (TransferAttack's order of operations).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_kernel(size: int, nsig: float = 3.0) -> torch.Tensor:
    """[size, size] float32, summing to 1: outer(pdf, pdf) / sum, pdf the standard normal
    density at linspace(-nsig, nsig, size) (computed in float64 as scipy's norm.pdf)."""
    x = np.linspace(-nsig, nsig, size)
    pdf = np.exp(-(x**2) / 2.0) / np.sqrt(2 * np.pi)
    raw = np.outer(pdf, pdf)
    return torch.from_numpy((raw / raw.sum()).astype(np.float32))


def smooth(g: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 'same' convolution of g [N, C, H, W] with `kernel` [k, k] (k odd)."""
    channels = g.shape[1]
    weight = kernel.to(g.device, g.dtype).expand(channels, 1, *kernel.shape)
    return F.conv2d(g, weight, stride=1, padding="same", groups=channels)


def split_lengths(length: int, parts: int, generator: torch.Generator | None) -> list[int]:
    """`parts` positive lengths summing to `length`, in random proportions (weights drawn
    uniformly in [1, 2), as TransferAttack's BSR draws them)."""
    w = 1.0 + torch.rand(parts, generator=generator, dtype=torch.float64)
    lengths = torch.round(w / w.sum() * length).to(torch.int64)
    lengths[int(lengths.argmax())] += length - int(lengths.sum())
    return [int(v) for v in lengths]


def _shuffled(x: torch.Tensor, dim: int, parts: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    pieces = list(x.split(split_lengths(x.shape[dim], parts, generator), dim=dim))
    order = torch.randperm(parts, generator=generator).tolist()
    return [pieces[i] for i in order]


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """x [N, C, H, W] rotated by `degrees` about its centre (bilinear, zero fill);
    differentiable in x."""
    if degrees == 0.0:
        return x
    a = math.radians(degrees)
    h, w = x.shape[-2:]
    # the sampling grid in normalized coordinates; the aspect ratio keeps the rotation rigid
    theta = torch.tensor(
        [[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]],
        dtype=x.dtype,
        device=x.device,
    )
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def block_shuffle_rotate(
    x: torch.Tensor, blocks: int, max_angle: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One BSR copy of the batch x [N, C, H, W] (the same arrangement for every image)."""
    first, second = (2, 3) if bool(torch.rand(1, generator=generator) < 0.5) else (3, 2)
    strips = _shuffled(x, first, blocks, generator)
    out = []
    for strip in strips:
        angle = (
            float(torch.empty(1).uniform_(-max_angle, max_angle, generator=generator)) if max_angle else 0.0
        )
        out.append(torch.cat(_shuffled(rotate(strip, angle), second, blocks, generator), dim=second))
    return torch.cat(out, dim=first)
