"""The training section of the experiment config: local optimisation at each site, its
per-architecture exceptions, and federated adversarial training."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")

# Smallest input some timm architectures accept (shared.ml.models upsamples smaller images
# inside the model; per_arch.<arch>.net_size may ask for a larger size).
MIN_INPUT = {"inception_v3": 75}


def pick(value: T | None, default: T) -> T:
    return default if value is None else value


# Name prefixes of timm's vision transformers (ViT, DeiT, Swin, BEiT, EVA, CaiT, XCiT, PiT,
# MaxViT): the transformer family of the transfer report. Every other name is a CNN
# (ConvNeXt included: a convolutional network with LayerNorm).
TRANSFORMER_PREFIXES = ("vit_", "deit", "swin", "beit", "eva", "cait", "xcit", "pit_", "maxvit", "flexivit")


def arch_family(arch: str) -> str:
    """ "transformer" for a vision transformer's timm name, "CNN" for every other name."""
    return "transformer" if arch.startswith(TRANSFORMER_PREFIXES) else "CNN"


def patch_size(arch: str) -> int | None:
    """The patch size a timm transformer's name states (vit_small_patch16_224: 16), or None."""
    found = re.search(r"patch(\d+)", arch)
    return int(found.group(1)) if found else None


def patch_problem(arch: str, net_size: int) -> str | None:
    """Why a patch-based network (ViT, DeiT, Swin) cannot see `net_size` (None when it can):
    a patch size that does not divide it would silently drop the image's last rows and columns."""
    patch = patch_size(arch)
    if patch and net_size % patch:
        fits = net_size - net_size % patch or patch
        return (
            f"{arch}'s patch size {patch} does not divide its net size {net_size}; "
            f"use {fits} or {fits + patch}"
        )
    return None


def net_size_problem(arch: str, net_size: int) -> str | None:
    """Why `net_size` cannot be `arch`'s internal input size (None when it can)."""
    low = MIN_INPUT.get(arch, 1)
    if net_size < low:
        return (
            f"per_arch.{arch}.net_size: {net_size} is below the smallest input {arch} "
            f"accepts ({low}); use at least {low}"
        )
    patch = patch_problem(arch, net_size)
    return f"per_arch.{arch}.net_size: {patch}" if patch else None


@dataclass(frozen=True)
class OptimizerConfig:
    """Local optimizer settings, used for both the FedAvg rounds and fine-tuning."""

    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


@dataclass(frozen=True)
class ArchTraining:
    """Per-architecture exceptions to the training settings (unset: the general ones)."""

    local_epochs: int | None = None
    lr: float | None = None
    finetune_epochs: int | None = None
    finetune_lr: float | None = None
    # The size the network sees: images of data.image_size are resized to it inside the
    # model (shared.ml.models), so every model still takes the same adversarial image.
    net_size: int | None = None

    def __post_init__(self) -> None:
        if self.net_size is not None and self.net_size < 1:
            raise ValueError(f"net_size: must be a positive pixel size, got {self.net_size}")
        if self.local_epochs is not None and self.local_epochs < 1:
            raise ValueError("local_epochs: must be >= 1")
        if self.finetune_epochs is not None and self.finetune_epochs < 0:
            raise ValueError("finetune_epochs: must be >= 0")
        for name in ("lr", "finetune_lr"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name}: must be > 0, got {v}")


@dataclass(frozen=True)
class AdversarialTraining:
    """Federated adversarial training: every site replaces a share of each training batch
    by adversarial versions crafted on its current model, on its own data, in the ClientApp.

    fgsm: fast adversarial training (Wong et al., 2020): a uniform random start in the eps
    ball, one signed-gradient step of eps * step_fraction (1.25 there), projected back.
    pgd: Madry et al. (2018): random start, `steps` steps of eps * step_fraction.
    BatchNorm: crafting passes leave the running statistics untouched, and the training
    step normalizes the mixed batch (clean and adversarial images together), so the
    statistics describe the mixture the weights are fitted to (shared.ml.adversarial)."""

    attack: Literal["fgsm", "pgd"] = "fgsm"
    eps: float = 0.02
    steps: int = 1
    step_fraction: float = 1.25
    share: float = 0.5  # of each batch replaced by its adversarial version
    start_round: int = 1  # the first FedAvg round trained adversarially (fine-tuning too)

    def __post_init__(self) -> None:
        if self.attack not in ("fgsm", "pgd"):
            raise ValueError(f"attack: must be fgsm or pgd, got {self.attack!r}")
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps: must be in (0, 1] (pixel scale), got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if self.attack == "fgsm" and self.steps != 1:
            raise ValueError("steps: fgsm takes one step; use attack: pgd for more")
        if self.step_fraction <= 0:
            raise ValueError(f"step_fraction: must be > 0, got {self.step_fraction}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share: must be in (0, 1], got {self.share}")
        if self.start_round < 1:
            raise ValueError(f"start_round: must be >= 1, got {self.start_round}")


@dataclass(frozen=True)
class TrainingConfig:
    """Local training at each site."""

    batch_size: int = 16
    local_epochs: int = 1
    finetune_epochs: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    finetune_lr: float | None = None  # None: the optimizer's lr
    threads: int = 0  # torch threads per site; 0 keeps torch's default
    # recalibrate: a site re-estimates a received model's BatchNorm statistics on its own
    # data, and the server pools them into the stored global (shared.ml.batchnorm);
    # restart: statistics restart as a cumulative average at every local training
    # (the behaviour before recalibration, kept for comparison).
    batchnorm: Literal["recalibrate", "restart"] = "recalibrate"
    # Weigh the loss so both classes count alike at every site (shared.ml.training.balanced_weights).
    class_balance: bool = False
    pretrained: dict[str, Path] = field(default_factory=dict)  # arch -> local weights file
    per_arch: dict[str, ArchTraining] = field(default_factory=dict)  # arch -> exceptions
    adversarial: AdversarialTraining | None = None  # None: clean training
    # youden: every stored model predicts at a decision threshold calibrated on validation
    # data (a local on its site's, the global on all sites' pooled counts) and folded into
    # its head, so the argmax every consumer uses is the calibrated rule
    # (shared.ml.calibration); none: argmax of the trained logits.
    calibration: Literal["none", "youden"] = "none"
    # torch.compile the model for the sites' training passes only: validation, the stored
    # weights and the attack use the model itself.
    compile: bool = False
    # The sites' training passes on CUDA (the CPU trains in float32): bf16 autocast (no loss
    # scaling needed), fp16 autocast with a GradScaler, or fp32. Decisions and attacks stay fp32.
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    # Train-time augmentation for chest X-rays (shared.ml.augment): a random resized crop of
    # 85-100% of the image area and a rotation within +-5 degrees, per image, on the device.
    augment: bool = False

    @property
    def finetune_rate(self) -> float:
        """The fine-tuning learning rate: finetune_lr, else the optimizer's."""
        return pick(self.finetune_lr, self.optimizer.lr)

    def for_arch(self, arch: str) -> TrainingConfig:
        """These settings as `arch` trains with them: its per_arch exceptions applied, the
        fine-tuning rate resolved, no per-architecture tables left (what one Flower run
        carries, shared.config.run; the run holds its net_size and pretrained file)."""
        a = self.per_arch.get(arch, ArchTraining())
        optimizer = replace(self.optimizer, lr=pick(a.lr, self.optimizer.lr))
        return replace(
            self,
            local_epochs=pick(a.local_epochs, self.local_epochs),
            finetune_epochs=pick(a.finetune_epochs, self.finetune_epochs),
            optimizer=optimizer,
            finetune_lr=pick(a.finetune_lr, pick(self.finetune_lr, optimizer.lr)),
            pretrained={},
            per_arch={},
        )

    def net_size(self, arch: str) -> int:
        """The size `arch`'s network sees (per_arch.<arch>.net_size; 0: its default)."""
        a = self.per_arch.get(arch)
        return (a.net_size or 0) if a else 0

    def __post_init__(self) -> None:
        for arch, a in self.per_arch.items():
            problem = None if a.net_size is None else net_size_problem(arch, a.net_size)
            if problem:
                raise ValueError(problem)
        if self.batch_size < 2:
            raise ValueError("batch_size: must be at least 2 (BatchNorm)")
        if self.local_epochs < 1 or self.finetune_epochs < 0:
            raise ValueError("local_epochs must be >= 1 and finetune_epochs >= 0")
