"""The attack side of the experiment config: the study's attack (FGSM under the member
threat) and the attack suite (iterative, universal and ensemble attacks, three threat
models, eps sweeps). Part of the one experiment YAML (`attack:`), parsed with it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

EPS_FORMS = "a number in (0, 1] (pixel space [0, 1]) or k/255 with 0 < k <= 255, e.g. '4/255'"


class Eps(float):
    """An L-infinity budget in [0, 1] pixel space, written in the config (and on the command
    line) either as a number (0.02) or in 8-bit units as "k/255" ("4/255" = 4 / 255)."""

    @classmethod
    def parse_config_value(cls, value: Any) -> Eps:
        """The budget `value` stands for; ValueError (naming the accepted forms) otherwise."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(EPS_FORMS)
        if isinstance(value, str):
            num, slash, den = value.strip().partition("/")
            try:
                k = float(num)
                if slash and float(den) != 255:
                    raise ValueError
            except ValueError:
                raise ValueError(EPS_FORMS) from None
            if slash and not 0 < k <= 255:
                raise ValueError(f"{value!r} is outside 0 < k <= 255 (k/255 of the pixel range)")
            value = k / 255 if slash else k
        return cls(value)


STUDY_EPS = Eps(0.02)  # 2% of the pixel range (Hirano & Takemoto's UAP budget)
DEVICE = re.compile(r"cpu|cuda:\d+")
AUTO = "auto"
DEVICE_FORMS = "'auto' or a list of 'cpu' / 'cuda:N', e.g. [cuda:0, cuda:1]"


class Devices(tuple[str, ...]):
    """Where the attack computes (`attack.devices`): "auto", every visible GPU (the CPU on a
    host without one), or a list of "cpu" / "cuda:N" (one name alone stands for a list of
    one). The models and sources are dealt to them round-robin; an entry listed twice is
    two shards on one device."""

    @classmethod
    def parse_config_value(cls, value: Any) -> Devices:
        """The devices `value` stands for; ValueError (naming the accepted forms) otherwise."""
        items = [value] if isinstance(value, str) else value
        if items == [AUTO]:
            return cls((AUTO,))
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError(DEVICE_FORMS)
        for item in items:
            if item == AUTO:
                raise ValueError(f"{DEVICE_FORMS}; 'auto' stands alone, not in a list")
            if not isinstance(item, str) or not DEVICE.fullmatch(item):
                raise ValueError(f"{DEVICE_FORMS}; {item!r} is neither")
        return cls(items)

    @property
    def auto(self) -> bool:
        return tuple(self) == (AUTO,)


AUTO_DEVICES = Devices((AUTO,))


def eps_text(eps: float) -> str:
    """A budget in both units: "0.0157 (4/255)", "0.02 (5.1/255)"."""
    k = eps * 255
    units = f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{k:.1f}/255"
    return f"{eps:.3g} ({units})"


@dataclass(frozen=True)
class IterativeConfig:
    """The iterative attacks (BIM, PGD, MI-FGSM, DI-FGSM, MI-DI)."""

    steps: int = 10
    step_fraction: float = 0.25  # step size as a fraction of eps
    decay: float = 1.0  # momentum factor of MI-FGSM and MI-DI
    diversity_prob: float = 0.5  # probability of the resize-and-pad transform (DI)
    resize_rate: float = 0.9  # DI resizes to [rate * size, size) and pads back
    scale_copies: int = 5  # SI-NI-FGSM: gradients over x / 2^i, i < scale_copies
    variance_samples: int = 20  # VMI-FGSM: neighbours per step for the gradient variance
    variance_bound: float = 1.5  # VMI-FGSM: neighbours uniform in the (bound * eps) cube
    kernel_size: int = 15  # TI-FGSM: the Gaussian kernel's side (odd, at most the image side)
    kernel_sigma: float = 3.0  # TI-FGSM: the kernel spans [-sigma, sigma] standard deviations
    skip_gamma: float = 0.2  # SGM: the residual branches' gradient factor (the paper's ResNet value)
    block_copies: int = 20  # BSR: transformed copies per gradient
    blocks: int = 2  # BSR: blocks per side
    max_angle: float = 24.0  # BSR: each strip's rotation range in degrees

    def __post_init__(self) -> None:
        if min(self.scale_copies, self.variance_samples, self.block_copies) < 1 or self.blocks < 2:
            raise ValueError("scale_copies, variance_samples and block_copies: must be >= 1; blocks: >= 2")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size: {self.kernel_size} has no centre pixel; use an odd size such as 15 or 7"
            )
        if not 0.0 < self.skip_gamma <= 1.0:
            raise ValueError(f"skip_gamma: must be in (0, 1], got {self.skip_gamma}")
        if self.variance_bound <= 0 or self.kernel_sigma <= 0 or not 0 <= self.max_angle <= 180:
            raise ValueError("variance_bound and kernel_sigma: must be > 0; max_angle: in [0, 180] degrees")
        if self.steps < 1:
            raise ValueError(f"steps: must be at least 1, got {self.steps}")
        if not 0.0 < self.step_fraction <= 1.0:
            raise ValueError(
                f"step_fraction: {self.step_fraction} makes the step size larger than eps "
                "(or not positive); use a value in (0, 1]"
            )
        if self.decay < 0:
            raise ValueError(f"decay: must be >= 0, got {self.decay}")
        if not 0.0 <= self.diversity_prob <= 1.0:
            raise ValueError(f"diversity_prob: must be in [0, 1], got {self.diversity_prob}")
        if not 0.5 <= self.resize_rate < 1.0:
            raise ValueError(f"resize_rate: must be in [0.5, 1), got {self.resize_rate}")


@dataclass(frozen=True)
class UniversalConfig:
    """The universal perturbations (SGD-UAP): fit on part of the images, measured on the rest."""

    fit_fraction: float = 0.5
    epochs: int = 10
    batch_size: int = 32
    step_fraction: float = 0.1  # step size as a fraction of eps
    optimizer: Literal["sign", "adam"] = "sign"

    def __post_init__(self) -> None:
        if not 0.0 < self.fit_fraction < 1.0:
            raise ValueError(f"fit_fraction: must be in (0, 1), got {self.fit_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size: must be at least 1")
        if not 0.0 < self.step_fraction <= 1.0:
            raise ValueError(
                f"step_fraction: {self.step_fraction} makes the step size larger than eps "
                "(or not positive); use a value in (0, 1]"
            )


@dataclass(frozen=True)
class OutsiderConfig:
    """The outsider's own surrogates, trained on the public split (no federation weights)."""

    epochs: int = 6
    lr: float = 1e-3
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


@dataclass(frozen=True)
class SuiteConfig:
    """`fedattack attack --suite`: every attack under every threat model, and eps sweeps."""

    attacks: tuple[str, ...] = ("fgsm", "bim", "pgd", "mifgsm", "difgsm", "midi", "uap", "uap-targeted")
    threats: tuple[str, ...] = ("member", "insider", "outsider")
    # 1, 2, 4 and 8 /255 (the transfer literature's units) and the study's 0.02
    sweep_eps: tuple[Eps, ...] = (Eps(1 / 255), Eps(2 / 255), Eps(4 / 255), Eps(8 / 255), Eps(0.02))
    sweep_attacks: tuple[str, ...] = ("fgsm", "midi")
    # an ensemble's loss: CE of the mean of its members' logits (`logits`), of the mean of
    # their logits each divided by the sd of its margin on the attack images' fit part (`scaled`,
    # so no member's logit scale decides alone), or the mean of their CEs (`loss`); `svre`: the
    # iterative attacks step along SVRE's variance-reduced direction over the members' own losses
    ensemble: Literal["logits", "loss", "scaled", "svre"] = "scaled"
    # The suite's own share of the attack images (the first N pneumonia images of each test
    # set); null: every one, as the study's attack. Iterative attacks cost steps x what FGSM
    # costs, so CPU-sized runs may want fewer.
    max_images_per_dataset: int | None = None

    def __post_init__(self) -> None:
        if self.max_images_per_dataset is not None and self.max_images_per_dataset < 5:
            raise ValueError("max_images_per_dataset: must be >= 5 (or null for every image)")
        for e in self.sweep_eps:
            _check_eps(e, "sweep_eps")
        unknown = sorted(set(self.threats) - set(THREATS))
        if unknown:
            raise ValueError(f"threats: unknown threat model {unknown[0]!r}; known: {list(THREATS)}")


THREATS = ("member", "insider", "outsider")


def _check_eps(eps: float, key: str) -> None:
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"{key}: must be in (0, 1] (pixel space [0, 1]), got {eps}")


@dataclass(frozen=True)
class AttackConfig:
    """The study's attack (FGSM under the member threat) and the attack suite."""

    name: str = "fgsm"
    eps: Eps = STUDY_EPS
    batch_size: int = 32
    max_images_per_dataset: int | None = None
    # Clean predictions and probes decide the counts: float32 by default on every device;
    # bfloat16 (CUDA only) is an explicit option that results.json records.
    precision: Literal["float32", "bfloat16"] = "float32"
    control: bool = True  # random-sign noise at the same eps, beside every cell
    # the devices the sources and targets are sharded over (attack.measure.shards), with
    # the same counts as on one device; "auto": every visible GPU, else the CPU
    devices: Devices = AUTO_DEVICES
    # the largest model file the attack pulls from a store (the size its manifest records):
    # a store cannot make the attack host download or hold more
    max_file_mib: int = 512
    iterative: IterativeConfig = field(default_factory=IterativeConfig)
    universal: UniversalConfig = field(default_factory=UniversalConfig)
    outsider: OutsiderConfig = field(default_factory=OutsiderConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)

    def __post_init__(self) -> None:
        _check_eps(self.eps, "eps")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if self.max_file_mib < 1:
            raise ValueError(f"max_file_mib: must be >= 1, got {self.max_file_mib}")
        if self.max_images_per_dataset is not None and self.max_images_per_dataset < 1:
            raise ValueError("max_images_per_dataset: must be >= 1 (or null for every image)")
