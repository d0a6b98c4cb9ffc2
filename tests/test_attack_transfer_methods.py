"""The transfer attacks that have no reference library here, each against a hand
computation on a tiny model: SGM's skip gradients on timm's residual and dense blocks,
BSR's block shuffle (and rotation), the margin loss, and SVRE's variance-reduced ensemble
direction."""

from __future__ import annotations

import math

import pytest
import torch
from timm.models.densenet import DenseBlock
from timm.models.resnet import BasicBlock
from torch import nn

from attack.methods.iterative import Iterative
from attack.methods.registry import FGSM, build_attack
from attack.methods.sgm import skip_gradients
from attack.methods.surrogate import Surrogate, objective_loss
from attack.methods.transforms import block_shuffle_rotate, rotate, split_lengths
from shared.config.experiment import load_config
from shared.errors import AttackError
from tests.conftest import REPO

pytestmark = pytest.mark.unit
BN = 1 / math.sqrt(1 + 1e-5)  # an eval-mode BatchNorm at its initial statistics scales by this


def _centre(conv: nn.Conv2d, value: float) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[..., conv.weight.shape[-2] // 2, conv.weight.shape[-1] // 2] = value


def _input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(x).sum(), x)[0]


@pytest.mark.parametrize("gamma", [1.0, 0.5, 0.2])
def test_sgm_scales_a_residual_branch(gamma: float) -> None:
    """y = relu(x + b * relu(a * x)) (BN at identity statistics): dy/dx = 1 + gamma a b."""
    a, b = 0.7, 1.3
    block = BasicBlock(1, 1).eval()
    _centre(block.conv1, a)
    _centre(block.conv2, b)
    x = 0.1 + torch.rand(2, 1, 5, 5)
    plain = block(x)
    with skip_gradients(block, gamma) as n:
        assert n == 1 and torch.equal(block(x), plain)  # the forward pass is unchanged
        g = _input_gradient(block, x)
    assert torch.allclose(g, torch.full_like(x, 1 + gamma * a * b * BN**2), rtol=1e-6)
    assert torch.allclose(_input_gradient(block, x), torch.full_like(x, 1 + a * b * BN**2))  # hooks gone


def test_sgm_scales_a_dense_layer() -> None:
    """out = [x, b * relu(a * relu(x))] (two BN+ReLU): d sum(out) / dx = 1 + gamma a b."""
    a, b, gamma = 0.6, 1.1, 0.5
    block = DenseBlock(num_layers=1, num_input_features=1, bn_size=1, growth_rate=1).eval()
    layer = block.denselayer1
    _centre(layer.conv1, a)
    _centre(layer.conv2, b)
    x = 0.1 + torch.rand(2, 1, 5, 5)
    with skip_gradients(block, gamma) as n:
        assert n == 1
        g = _input_gradient(block, x)
    assert torch.allclose(g, torch.full_like(x, 1 + gamma * a * b * BN**2), rtol=1e-6)


class Linear(nn.Module):
    """Two logits, each a fixed weighted sum of the pixels."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w  # [2, C, H, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.w)


def test_sgm_on_a_model_without_blocks_is_its_base_attack() -> None:
    torch.manual_seed(0)
    model, x, y = Linear(torch.randn(2, 1, 6, 6)), torch.rand(3, 1, 6, 6), torch.ones(3, dtype=torch.long)
    base = Iterative("mifgsm", 0.03, 3, 0.01, normalize=True, decay=1.0)
    sgm = Iterative("sgm", 0.03, 3, 0.01, normalize=True, decay=1.0, skip_gamma=0.2)
    assert torch.equal(sgm.craft(Surrogate([model]), x, y), base.craft(Surrogate([model]), x, y))


def test_margin_loss_by_hand() -> None:
    z = torch.tensor([[1.0, 3.0, 0.5], [2.0, -1.0, 4.0]])
    y = torch.tensor([1, 0])
    # image 0: max other 1.0 - 3.0 = -2; image 1: max other 4.0 - 2.0 = 2; mean 0
    assert float(objective_loss(z, y, "margin")) == 0.0
    assert float(objective_loss(z[:1], y[:1], "margin")) == -2.0


def test_fgsm_on_the_margin_loss_by_hand() -> None:
    """Margin of class 1 on a linear model: z0 - z1, whose gradient is w0 - w1 exactly."""
    torch.manual_seed(1)
    w = torch.randn(2, 1, 4, 4)
    x, y = torch.rand(5, 1, 4, 4), torch.ones(5, dtype=torch.long)
    attack = build_attack("fgsm+margin", 0.05, load_config(REPO / "configs" / "demo.yaml").attack)
    assert isinstance(attack, FGSM) and attack.objective == "margin"
    adv = attack.apply(x, attack.craft(Surrogate([Linear(w)]), x, y))
    assert torch.equal(adv, torch.clamp(x + 0.05 * (w[0] - w[1]).sign(), 0, 1))


def test_unknown_loss_lists_the_known_ones() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml").attack
    with pytest.raises(AttackError, match=r"unknown loss 'hinge' in attack 'pgd\+hinge'; known: ce, margin"):
        build_attack("pgd+hinge", 0.02, cfg)
    with pytest.raises(AttackError, match=r"unknown attack 'tim'; registered: .*tifgsm"):
        build_attack("tim", 0.02, cfg)


def test_svre_with_constant_gradients_steps_along_the_mean() -> None:
    """Margin loss on linear members: every member's gradient is constant, so every
    variance-corrected inner gradient equals the ensemble's exactly and SVRE-BIM steps by
    sign(mean_k (w_k0 - w_k1)); the members disagree on the sign of most pixels."""
    torch.manual_seed(2)
    w1, w2 = torch.randn(2, 1, 4, 4), 3 * torch.randn(2, 1, 4, 4)
    x, y = 0.2 + 0.6 * torch.rand(3, 1, 4, 4), torch.ones(3, dtype=torch.long)
    attack = Iterative("bim", 0.05, 1, 0.02, objective="margin")
    adv = attack.craft(
        Surrogate([Linear(w1), Linear(w2)], "svre"), x, y, None, torch.Generator().manual_seed(0)
    )
    mean = ((w1[0] - w1[1]) + (w2[0] - w2[1])) / 2
    assert torch.equal(adv, x + 0.02 * mean.sign())


def test_svre_inner_loop_by_hand() -> None:
    """Cross-entropy on two linear members z = (0, s_k), s_k = <w_k, x>: the gradient of
    member k at x is -sigmoid(-s_k) w_k / B; one outer BIM step along G~_M, M = 8."""
    torch.manual_seed(3)
    ws = [torch.randn(1, 4, 4), torch.randn(1, 4, 4)]
    models = [Linear(torch.stack([torch.zeros_like(w), w])) for w in ws]
    x, y = torch.rand(2, 1, 4, 4), torch.ones(2, dtype=torch.long)
    eps, alpha = 0.05, 0.02
    adv = Iterative("bim", eps, 1, alpha).craft(
        Surrogate(models, "svre"), x, y, None, torch.Generator().manual_seed(5)
    )

    def grad(k: int, p: torch.Tensor) -> torch.Tensor:
        s = (p * ws[k]).sum(dim=(1, 2, 3))
        return -torch.sigmoid(-s)[:, None, None, None] * ws[k] / len(p)

    draws = torch.Generator().manual_seed(5)
    at_x = [grad(0, x), grad(1, x)]
    g_ens = (at_x[0] + at_x[1]) / 2
    inner, acc = x.clone(), torch.zeros_like(x)
    for _ in range(8):
        k = int(torch.randint(2, (1,), generator=draws))
        g = grad(k, inner) - (at_x[k] - g_ens)
        acc = acc + g / g.abs().mean(dim=(1, 2, 3), keepdim=True)
        inner = torch.clamp(x + torch.clamp(inner + alpha * acc.sign() - x, -eps, eps), 0, 1)
    assert torch.allclose(adv, torch.clamp(x + alpha * acc.sign(), 0, 1), atol=1e-7)


def test_block_shuffle_is_a_block_permutation() -> None:
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    seen = set()
    for seed in range(6):
        t = block_shuffle_rotate(x, 2, 0.0, torch.Generator().manual_seed(seed))
        assert torch.equal(t.flatten().sort().values, x.flatten())  # every pixel once
        rows = t[0, 0]
        # blocks keep their inside: horizontal neighbours within a block differ by 1, vertical by 8
        assert int(((rows[:, 1:] - rows[:, :-1]).abs() == 1).sum()) >= 8 * 6
        seen.add(tuple(t.flatten().tolist()))
    assert len(seen) > 1  # the arrangement is drawn
    assert split_lengths(8, 2, torch.Generator().manual_seed(0)) in ([4, 4], [3, 5], [5, 3])


def test_rotation_by_a_quarter_turn_is_rot90() -> None:
    x = torch.rand(1, 1, 6, 6)
    assert torch.allclose(rotate(x, 90.0), torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5)


class Corner(nn.Module):
    """Pneumonia logit = 10 * the top-left pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 10 * x[:, 0, 0, 0]
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_bsr_gradient_lands_on_the_pixel_the_shuffle_moved_to_the_corner() -> None:
    """One copy, one BIM step: only the pixel that the drawn arrangement put at (0, 0) has a
    gradient, and it moves down by the step (ascending the CE of class 1)."""
    x = (torch.randperm(36).float() / 40 + 0.05).reshape(1, 1, 6, 6)
    y = torch.ones(1, dtype=torch.long)
    attack = Iterative("bsr", 0.1, 1, 0.02, block_copies=1, blocks=2, max_angle=0.0)
    adv = attack.craft(Surrogate([Corner()]), x, y, None, torch.Generator().manual_seed(4))
    moved = block_shuffle_rotate(x, 2, 0.0, torch.Generator().manual_seed(4))[0, 0, 0, 0]
    changed = (adv != x).nonzero()
    assert len(changed) == 1 and float(x[tuple(changed[0])]) == float(moved)
    assert torch.allclose((adv - x)[tuple(changed[0])], torch.tensor(-0.02))
