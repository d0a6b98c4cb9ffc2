"""SVRE, the stochastic variance-reduced ensemble attack (Xiong et al., CVPR 2022): the
ensemble's direction at x is found by an inner loop of M steps, each on one randomly drawn
member k, with k's gradient corrected by the control variate of the whole ensemble:

    g_ens = mean_k grad J_k(x)
    x~_0 = x, G~_0 = 0;  for m < M:  k ~ U{members}
        g_m = grad J_k(x~_m) - (grad J_k(x) - g_ens)
        G~_{m+1} = mu * G~_m + g_m / mean|g_m|       (per image)
        x~_{m+1} = clip_{[0,1]}(x0 + clip_{[-eps,eps]}(x~_m + beta * sign(G~_{m+1}) - x0))
    direction = G~_M

The outer attack then steps along G~_M with its own normalization and momentum. As in the
paper: M = 4 x the number of members, beta = the attack's step size, mu = 1. J_k is member
k's own loss; the ensemble loss is their mean, so E[g_m] = g_ens when x~ = x.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# d J_k / d x at x for member k (with the attack's input transforms)
MemberGradient = Callable[[int, torch.Tensor], torch.Tensor]
INNER_PER_MEMBER = 4
INNER_DECAY = 1.0


def svre_direction(
    member_gradient: MemberGradient,
    members: int,
    x: torch.Tensor,
    x0: torch.Tensor,
    eps: float,
    beta: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """G~_M at x (x0: the clean images, whose eps ball bounds the inner steps)."""
    at_x = [member_gradient(k, x) for k in range(members)]
    g_ens = torch.stack(at_x).mean(dim=0)
    inner = x.detach().clone()
    acc = torch.zeros_like(x)
    for _ in range(INNER_PER_MEMBER * members):
        k = int(torch.randint(members, (1,), generator=generator))
        g = member_gradient(k, inner) - (at_x[k] - g_ens)
        acc = INNER_DECAY * acc + g / torch.mean(torch.abs(g), dim=(1, 2, 3), keepdim=True)
        step = inner + beta * acc.sign()
        inner = torch.clamp(x0 + torch.clamp(step - x0, min=-eps, max=eps), min=0, max=1).detach()
    return acc
