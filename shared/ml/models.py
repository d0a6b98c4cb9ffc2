"""The one model factory. Models take [0, 1] images at the experiment size and carry their
own normalization (and resizing, where the architecture needs larger inputs), so one
adversarial image is valid input for every model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from shared.config.training import MIN_INPUT, net_size_problem, patch_problem
from shared.errors import CheckpointError, ConfigError
from shared.ml.spec import InputSpec
from shared.ml.weights import check_weights_file

NUM_CLASSES = 2
# timm modules whose networks are built for one input size (positional embeddings, window
# grids): build_model passes them img_size = the net size. The rest (CNNs, ConvNeXt) take any.
SIZED_MODULES = (
    "vision_transformer",
    "deit",
    "swin_transformer",
    "swin_transformer_v2",
    "beit",
    "eva",
    "cait",
    "vision_transformer_relpos",
)


class Classifier(nn.Module):
    """A timm network behind [0,1] -> normalized (-> resized) input handling."""

    def __init__(self, arch: str, net: nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.arch = arch
        self.spec = spec
        self.net = net
        shape = (1, spec.channels, 1, 1)
        self.register_buffer("mean", torch.tensor(spec.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(shape), persistent=False)
        self.net_size = spec.net_size or default_net_size(arch, spec.size)

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if x.shape[-1] != self.net_size or x.shape[-2] != self.net_size:
            x = F.interpolate(x, size=(self.net_size, self.net_size), mode="bilinear", align_corners=False)
        return self.net(x)


def default_net_size(arch: str, image_size: int) -> int:
    """The size `arch`'s network sees when the config asks for none: the image size, or the
    architecture's minimum input where that is larger."""
    return max(image_size, MIN_INPUT.get(arch, 0))


def build_model(
    arch: str,
    image_size: int,
    channels: int = 1,
    pretrained_file: Path | None = None,
    net_size: int = 0,
) -> Classifier:
    """Create `arch` (any timm name) with a 2-class head, random init or a local weights file.

    net_size (0: default_net_size) is the size its network sees: [0, 1] images of
    image_size are resized to it inside the model, so every model still takes the same
    adversarial image."""
    if not timm.is_model(arch):
        raise ConfigError(f"unknown architecture {arch!r}: not a timm model name")
    problem = net_size_problem(arch, net_size) if net_size else None
    if problem:
        raise ConfigError(f"training.{problem}")
    size = net_size or default_net_size(arch, image_size)
    if not net_size and (problem := patch_problem(arch, size)):
        raise ConfigError(f"data.image_size: {problem}; set training.per_arch.{arch}.net_size")
    kwargs: dict[str, Any] = {"num_classes": NUM_CLASSES, "in_chans": channels}
    if timm.models.is_model_in_modules(arch, SIZED_MODULES):  # positional embeddings at the net size
        kwargs["img_size"] = size
    if pretrained_file is not None:
        with torch.random.fork_rng(devices=[]):  # the check's model leaves the seeded init alone
            check_weights_file(arch, Path(pretrained_file), timm.create_model(arch, **kwargs))
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)})
    net = timm.create_model(arch, **kwargs)
    cfg: dict[str, Any] = dict(net.pretrained_cfg)  # type: ignore[arg-type]
    mean, std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3))
    if channels == 1:  # grayscale: the mean of the RGB statistics
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    spec = InputSpec(
        image_size,
        channels,
        tuple(map(float, mean)),
        tuple(map(float, std)),
        size,
    )
    return Classifier(arch, net, spec)


def model_from_state(arch: str, spec: InputSpec, state: dict[str, torch.Tensor]) -> Classifier:
    """Rebuild a model from a state dict and its recorded input spec; shape mismatches raise."""
    model = build_model(arch, spec.size, spec.channels, net_size=spec.net_size)
    if model.spec != spec:
        model = Classifier(arch, model.net, spec)
    check_state(model, state, where=arch)
    model.load_state_dict(state)
    return model


def check_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError naming the first key whose presence or shape does not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{where}: weights do not fit the architecture (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); was it trained with another arch?"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: tensor {k} has shape {tuple(state[k].shape)}, the model expects "
                f"{tuple(v.shape)}; image channels or architecture differ"
            )
