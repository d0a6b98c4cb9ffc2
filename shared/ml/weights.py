"""Pretrained weights from a local file (training.pretrained), checked before timm loads
them: timm's loader skips keys it cannot place with only a warning, so a file for another
architecture would leave a model at its random init. Formats users have: timm's
safetensors and .pth files, torchvision's .pth state dicts (the same key names as timm's
ResNet, DenseNet and InceptionV3; DenseNet's older 'norm.1' names mapped as timm maps
them), training checkpoints holding the weights under 'state_dict' or 'model', and
DataParallel's 'module.' prefix. The classifier is replaced by the 2-class head and the
first convolution is adapted to the image channels (timm's), so neither must match."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from shared.errors import ConfigError

# torchvision's DenseNet files: features.denseblock1.denselayer1.norm.1.weight -> ...norm1.weight
_DENSENET_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
_IGNORED = ("AuxLogits.",)  # torchvision InceptionV3's auxiliary head: timm's has none
_SHOWN = 3


def read_weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The file's tensors by name (unwrapped, 'module.' stripped); ConfigError naming `key`
    and the file when it holds no state dict."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(path)
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure of a user's file
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(
            f"{key}: {path} is not a weights file torch or safetensors can read ({reason})"
        ) from None
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConfigError(f"{key}: {path} holds no state dict (a mapping of tensor names to tensors)")
    return {_DENSENET_OLD.sub(r"\1\2", k.removeprefix("module.")): v for k, v in raw.items()}


def check_weights_file(arch: str, path: Path, net: nn.Module) -> None:
    """Refuse `path` unless its tensors fit `net` (a timm model of `arch`) key for key and
    shape for shape, the classifier and the first convolution's input channels aside."""
    key = f"training.pretrained.{arch}"
    if not path.is_file():
        raise ConfigError(f"{key}: weights file {path} not found")
    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    heads = cfg.get("classifier", ())
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    first = cfg.get("first_conv", ())
    first = (first,) if isinstance(first, str) else tuple(first)

    def kept(k: str) -> bool:
        return not k.startswith(_IGNORED) and not any(k.startswith(h + ".") for h in heads)

    own = {k: v for k, v in net.state_dict().items() if kept(k)}
    got = {k: v for k, v in read_weights(path, key).items() if kept(k)}
    missing, extra = sorted(set(own) - set(got)), sorted(set(got) - set(own))
    if missing:
        raise ConfigError(
            f"{key}: {path} is not a {arch} weights file: {len(missing)} of its {len(own)} tensors are "
            f"missing ({', '.join(missing[:_SHOWN])}, ...)"
            + (f" and it holds others ({', '.join(extra[:_SHOWN])}, ...)" if extra else "")
            + f"; give a {arch} file (timm safetensors or a torchvision .pth state dict)"
        )
    for k, v in own.items():
        if tuple(got[k].shape) != tuple(v.shape) and not any(k == f + ".weight" for f in first):
            raise ConfigError(
                f"{key}: {path}: tensor {k} has shape {tuple(got[k].shape)}, {arch} has {tuple(v.shape)}; "
                f"is it a file for another variant of {arch}?"
            )
