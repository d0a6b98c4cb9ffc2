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


# --- the transfer attacks against torchattacks 3.5.1 ---------------------------------


def test_nifgsm_bit_for_bit(case) -> None:
    model, x, y = case
    ours = _ours(
        Iterative("nifgsm", EPS, STEPS, ALPHA, normalize=True, decay=1.0, nesterov=True), model, x, y
    )
    ref = _ref(torchattacks.NIFGSM(model, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0), x, y)
    assert torch.equal(ours, ref)


def test_sinifgsm_bit_for_bit(case) -> None:
    model, x, y = case
    attack = Iterative("sinifgsm", EPS, 3, ALPHA, normalize=True, decay=1.0, nesterov=True, scale_copies=3)
    ref = _ref(torchattacks.SINIFGSM(model, eps=EPS, alpha=ALPHA, steps=3, decay=1.0, m=3), x, y)
    assert torch.equal(_ours(attack, model, x, y), ref)


def test_vmifgsm_bit_for_bit_with_the_same_draws(case) -> None:
    """Same neighbours (torchattacks draws randn_like and overwrites it with uniform_; we
    draw the same two from the generator), and the last step's unused variance skipped."""
    model, x, y = case
    attack = Iterative(
        "vmifgsm", EPS, 3, ALPHA, normalize=True, decay=1.0, variance_samples=4, variance_bound=1.5
    )
    ref = _ref(torchattacks.VMIFGSM(model, eps=EPS, alpha=ALPHA, steps=3, decay=1.0, N=4, beta=1.5), x, y)
    assert torch.equal(_ours(attack, model, x, y), ref)


@pytest.fixture(scope="module")
def rgb_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """torchattacks' TIFGSM convolves with a 3-channel stacked kernel: RGB images."""
    torch.manual_seed(0)
    model = build_model("resnet18", image_size=32, channels=3).eval()
    return model, torch.rand(4, 3, 32, 32), torch.tensor([1, 0, 1, 1])


@pytest.mark.parametrize("diversity", [0.0, 0.5], ids=["ti-mi", "ti-di"])
def test_tifgsm_bit_for_bit(rgb_case, diversity: float) -> None:
    model, x, y = rgb_case
    attack = Iterative(
        "tifgsm", EPS, 3, ALPHA, normalize=True, decay=1.0, diversity_prob=diversity, kernel_size=7
    )
    ref = torchattacks.TIFGSM(
        model, eps=EPS, alpha=ALPHA, steps=3, decay=1.0, len_kernel=7, nsig=3, diversity_prob=diversity
    )
    # without diversity torchattacks still draws its (unused) transform; ours draws nothing
    assert torch.equal(_ours(attack, model, x, y), _ref(ref, x, y))


def test_new_attacks_are_registered_with_their_config() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml").attack
    it = cfg.iterative
    for name in ("nifgsm", "sinifgsm", "vmifgsm", "tifgsm", "sgm", "bsr"):
        attack = build_attack(name, 4 / 255, cfg)
        assert attack.name == name and attack.eps == 4 / 255 and attack.objective == "ce"
    assert build_attack("tifgsm", 0.02, cfg).kernel_size == it.kernel_size
    assert build_attack("vmifgsm", 0.02, cfg).variance_samples == it.variance_samples
    assert build_attack("bsr", 0.02, cfg).block_copies == it.block_copies
    margin = build_attack("pgd+margin", 0.02, cfg)
    assert margin.name == "pgd+margin" and margin.objective == "margin" and margin.random_start
