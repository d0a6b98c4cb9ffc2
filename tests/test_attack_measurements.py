"""What reviewers read beside each rate, against hand computations: the shuffled-
perturbation control, the fooling rate of universal perturbations, the perceptual figures
(L2, L-infinity, PSNR, SSIM), eps in both units, and the power statements."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attack.measure.core import AttackSet, Probe, Settings, Target, fit_mask, shuffled
from attack.measure.perceptual import PSNR_CAP, perceptual
from attack.measure.threats import member_sources
from attack.measure.transfer import measure
from attack.methods.registry import FGSM
from attack.methods.universal import Universal
from attack.reports.power import detectable_difference, images_needed, smallest_p
from shared.config.attack import Eps, eps_text

pytestmark = pytest.mark.unit
C1, C2 = 0.01**2, 0.03**2  # SSIM's constants for a data range of 1


def test_perceptual_figures_by_hand() -> None:
    """Constant images a (clean) and b (adversarial), 12 x 12: every window has means a, b
    and no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1); L2 = |b - a| * 12; PSNR =
    10 log10(1 / (b - a)^2)."""
    a, b = 0.5, 0.52
    clean = torch.full((2, 1, 12, 12), a)
    adv = torch.full((2, 1, 12, 12), b)
    p = perceptual(clean, adv)
    assert p.n == 2
    assert p.l2 == pytest.approx(0.02 * 12, rel=1e-6) and p.linf == pytest.approx(0.02, rel=1e-6)
    assert p.psnr == pytest.approx(10 * math.log10(1 / 0.02**2), rel=1e-6)
    assert p.ssim == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1) * (C2 / C2), rel=1e-6)
    same = perceptual(clean, clean)
    assert same.ssim == pytest.approx(1.0) and same.psnr == pytest.approx(PSNR_CAP) and same.l2 == 0


@pytest.mark.parametrize("shape", [(6, 1, 96, 96), (3, 3, 40, 33), (2, 1, 9, 9)])
def test_ssim_is_pytorch_msssims(shape: tuple[int, ...]) -> None:
    """The separable SSIM equals pytorch-msssim's (the reference implementation) on random
    images and perturbations, with the window shrunk for images under 11 pixels as perceptual does."""
    from pytorch_msssim import ssim as reference  # type: ignore[import-untyped]

    from attack.measure.perceptual import ssim

    g = torch.Generator().manual_seed(sum(shape))
    clean = torch.rand(shape, generator=g, dtype=torch.float64)
    adv = (clean + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    window = min(11, min(shape[-2:]) if min(shape[-2:]) % 2 else min(shape[-2:]) - 1)
    ours = ssim(adv, clean, window)
    theirs = reference(adv, clean, data_range=1.0, size_average=False, win_size=window)
    assert ours.shape == (shape[0],)
    # pytorch-msssim rounds its window to float32 before it casts it: 1e-8 apart at most
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-8), (ours - theirs).abs().max()


def test_shuffled_control_keeps_the_perturbations_pixels() -> None:
    torch.manual_seed(0)
    clean = 0.3 + 0.4 * torch.rand(1, 6, 6)
    adv = clean + 0.02 * torch.randint(-1, 2, clean.shape)
    control = shuffled(clean, adv, "nih/img1", seed=7)
    d, c = (adv - clean).flatten(), (control - clean).flatten()
    assert torch.allclose(d.sort().values, c.sort().values, atol=1e-7)  # same values, moved
    assert not torch.allclose(d, c)
    assert torch.equal(control, shuffled(clean, adv, "nih/img1", seed=7))  # seeded by the image
    assert not torch.equal(control, shuffled(clean, adv, "nih/img2", seed=7))


class Brightness(nn.Module):
    """Pneumonia iff the mean pixel exceeds 0.5: blind to where a perturbation's pixels are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 200.0 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.fixture(scope="module")
def bright() -> tuple[Probe, Settings]:
    g = torch.Generator().manual_seed(0)
    images = (0.505 + 0.01 * torch.rand(20, 1, 8, 8, generator=g)).clamp(0, 1)
    images[::5] = 0.3  # four images every target gets wrong (no pneumonia seen)
    ids = tuple(f"nih/{i}" for i in range(20))
    s = Settings(batch=8, device=torch.device("cpu"), dtype=torch.float32, seed=3, fit_fraction=0.5)
    targets = [
        Target("bright-a", "toy", "local", "A", Brightness()),
        Target("bright-b", "toy", "global", None, Brightness()),
    ]
    return Probe(targets, AttackSet(images, ids), s), s


def test_a_mean_only_target_is_fooled_alike_by_the_shuffled_perturbation(bright) -> None:
    """FGSM pushes every pixel down by eps; shuffled, the perturbation has the same mean, so a
    target that reads only the mean misclassifies exactly the same images."""
    probe, s = bright
    m = measure(member_sources(list(probe.targets.values())), FGSM(0.02), probe, s, progress=False)
    for c in m.cells:
        assert c.n_correct_before == 16 and c.n_misclassified_after == 16
        assert c.n_shuffled_misclassified == 16 and c.n_fooling_images is None
    p = m.perceptual["bright-a"]
    assert p["n"] == 16 and p["linf"] == pytest.approx(0.02) and p["l2"] == pytest.approx(0.02 * 8, rel=1e-5)


def test_universal_fooling_rate_counts_every_held_out_image(bright) -> None:
    """The learned delta (-eps everywhere) turns every bright held-out image negative (changed)
    and leaves the dark ones negative (unchanged): fooled = held-out bright images."""
    probe, s = bright
    uap = Universal("uap", 0.02, False, epochs=3, batch_size=4, step_size=0.004)
    m = measure(member_sources(list(probe.targets.values())), uap, probe, s, progress=False)
    held = torch.nonzero(~fit_mask(probe.data.ids, s.fit_fraction, s.seed)).flatten().tolist()
    dark_held = sum(1 for i in held if i % 5 == 0)
    assert 0 < dark_held < len(held)
    for c in m.cells:
        assert c.n_fooling_images == len(held) and c.n_fooled == len(held) - dark_held
        assert c.n_misclassified_after == c.n_correct_before  # every attacked image flipped


def test_eps_in_both_units() -> None:
    assert Eps.parse_config_value("4/255") == 4 / 255 and Eps.parse_config_value(0.02) == 0.02
    assert Eps.parse_config_value("0.5/255") == 0.5 / 255
    assert eps_text(8 / 255) == "0.0314 (8/255)" and eps_text(0.02) == "0.02 (5.1/255)"
    for bad in ("256/255", "0/255", "4/256", "lots"):
        with pytest.raises(ValueError):
            Eps.parse_config_value(bad)


def test_power_by_hand() -> None:
    # two proportions 0.05 vs 0.10 at alpha 0.05, power 0.8: the textbook 435 per group
    assert images_needed(0.05, 0.05) == 435
    assert smallest_p(5) == 0.0625 and smallest_p(6) == 0.03125
    assert not detectable_difference(0.1, 5).possible  # 5 targets: no effect reaches 0.05
    assert not detectable_difference(0.1, 6, tests=2).possible  # after Holm over 2: 0.0625
    d = detectable_difference(0.1, 16, tests=1)
    assert d.difference == pytest.approx((1.959964 + 0.841621) * 0.1 / 4, rel=1e-5)
