"""SGM, the skip gradient method (Wu et al., ICLR 2020): the surrogate's backward pass
takes more of its gradient through the skip connections than through the residual (or
dense) branches. In a residual block y = x + f(x) the gradient d y / d x = 1 + f'(x)
becomes 1 + gamma * f'(x); in a dense layer, whose output [x, f(x)] keeps x, the gradient
through f is scaled by gamma. The forward pass is unchanged, bit for bit.

Implemented on timm's blocks: ResNet's BasicBlock (the branch ends at bn2) and Bottleneck
(bn3), DenseNet's DenseLayer (its whole output is the branch). The paper's reference code
gets the same gamma by hooking the branches' ReLUs (gamma^(1/2) at each of two) and also
divides each block's gradient by its std; for sign-based attacks that rescaling changes
nothing (a positive factor on the whole batch's gradient), so it is left out. A surrogate
without such blocks (InceptionV3, ViT) gets the gradient of its base attack.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from timm.models.densenet import DenseLayer
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn


class _ScaleGradient(torch.autograd.Function):
    """Identity forward (a copy, safe for the in-place `+= shortcut` that follows), gamma
    times the gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gamma: float) -> torch.Tensor:
        ctx.gamma = gamma
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.gamma, None


def branch_ends(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the residual / dense branches of `model`'s blocks."""
    ends: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, BasicBlock):
            ends.append(m.bn2)
        elif isinstance(m, Bottleneck):
            ends.append(m.bn3)
        elif isinstance(m, DenseLayer):
            ends.append(m)
    return ends


@contextmanager
def skip_gradients(model: nn.Module, gamma: float) -> Iterator[int]:
    """Within the block, backward passes through `model` scale every residual / dense
    branch's gradient by gamma; yields how many branches that is. The hooks are removed on
    exit, whatever happens."""

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return _ScaleGradient.apply(output, gamma)

    handles = [end.register_forward_hook(hook) for end in branch_ends(model)]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
