"""Every per-image attack against torchattacks on the same model, inputs, parameters and
random draws; the universal perturbation on a model whose best perturbation is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attack.methods.iterative import Iterative
from attack.methods.registry import FGSM, build_attack
from attack.methods.surrogate import Surrogate
from attack.methods.universal import Universal
from shared.config.experiment import load_config
from shared.ml.models import build_model
from tests.conftest import REPO

pytestmark = pytest.mark.unit

torchattacks = pytest.importorskip("torchattacks")
EPS, ALPHA, STEPS, SEED = 0.02, 0.005, 5, 1234


@pytest.fixture(scope="module")
def case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("resnet18", image_size=48, channels=1).eval()
    return model, torch.rand(6, 1, 48, 48), torch.tensor([1, 0, 1, 1, 0, 1])


def _ours(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    code = attack.craft(Surrogate([model]), x, y, None, torch.Generator().manual_seed(SEED))
    return attack.apply(x, code)


def _ref(ref, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(SEED)  # torchattacks draws from the global generator
    return ref(x, y)


def test_fgsm_bit_for_bit(case) -> None:
    model, x, y = case
    assert torch.equal(_ours(FGSM(EPS), model, x, y), _ref(torchattacks.FGSM(model, eps=EPS), x, y))


def test_pgd_with_random_start_bit_for_bit(case) -> None:
    model, x, y = case
    ours = _ours(Iterative("pgd", EPS, STEPS, ALPHA, random_start=True), model, x, y)
    ref = _ref(torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True), x, y)
    assert torch.equal(ours, ref)
    assert float((ours - x).abs().max()) <= EPS + 1e-7 and float(ours.min()) >= 0 and float(ours.max()) <= 1


def test_mifgsm_bit_for_bit(case) -> None:
    model, x, y = case
    ours = _ours(Iterative("mifgsm", EPS, STEPS, ALPHA, normalize=True, decay=1.0), model, x, y)
    assert torch.equal(
        ours, _ref(torchattacks.MIFGSM(model, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0), x, y)
    )


@pytest.mark.parametrize("decay", [0.0, 1.0], ids=["difgsm", "midi"])
def test_difgsm_and_midi_bit_for_bit_with_the_same_draws(case, decay: float) -> None:
    model, x, y = case
    ours = _ours(
        Iterative("di", EPS, STEPS, ALPHA, normalize=True, decay=decay, diversity_prob=0.5, resize_rate=0.9),
        model,
        x,
        y,
    )
    ref = torchattacks.DIFGSM(
        model, eps=EPS, alpha=ALPHA, steps=STEPS, decay=decay, resize_rate=0.9, diversity_prob=0.5
    )
    assert torch.equal(ours, _ref(ref, x, y))


def test_bim_matches_to_rounding(case) -> None:
    """torchattacks' BIM projects with max/min arithmetic, ours (PGD's) with
    clamp(x + clamp(adv - x)): the two differ only where x + (adv - x) rounds away from
    adv, by one float32 ulp (~6e-8 near 1), so every pixel agrees within 1e-6."""
    model, x, y = case
    ours = _ours(Iterative("bim", EPS, STEPS, ALPHA), model, x, y)
    ref = _ref(torchattacks.BIM(model, eps=EPS, alpha=ALPHA, steps=STEPS), x, y)
    assert float((ours - ref).abs().max()) <= 1e-6


def test_registry_builds_every_attack_from_the_config() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml").attack
    for name in ("fgsm", "bim", "pgd", "mifgsm", "difgsm", "midi", "uap", "uap-targeted"):
        attack = build_attack(name, 0.03, cfg)
        assert attack.name == name and attack.eps == 0.03
    assert build_attack("pgd", 0.04, cfg).step_size == pytest.approx(0.04 * cfg.iterative.step_fraction)


class Brightness(nn.Module):
    """Pneumonia iff the mean pixel exceeds 0.5: the best universal perturbation, untargeted
    or towards 'no pneumonia', darkens every pixel by eps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 200.0 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.mark.parametrize("targeted", [False, True])
def test_uap_learns_the_known_best_perturbation(targeted: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = (0.505 + 0.01 * torch.rand(64, 1, 16, 16, generator=g)).clamp(0, 1)  # all just above the line
    y = torch.ones(64, dtype=torch.long)
    uap = Universal("uap", 0.02, targeted, epochs=3, batch_size=16, step_size=0.004)
    delta = uap.craft(Surrogate([Brightness()]), x[:32], y[:32], None, torch.Generator().manual_seed(1))
    assert delta.shape == (1, 1, 16, 16)
    assert torch.allclose(delta, torch.full_like(delta, -0.02))  # saturated at -eps everywhere
    held_out = uap.apply(x[32:], delta)
    assert bool((Brightness()(held_out).argmax(1) == 0).all())  # fools images it never saw
