"""What produced a result: device, precision, batch sizes, library versions, the split."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from attack.measure.core import Settings

LIBRARIES = ("torch", "torchvision", "timm", "numpy", "safetensors", "flwr", "pydicom")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(s: Settings, split: str) -> dict[str, Any]:
    return {
        "device": s.device.type,
        "dtype": str(s.dtype).removeprefix("torch."),
        "crafting_dtype": "float32 (TF32 off)",
        "batch_size": s.batch,
        "control": "random sign per pixel at the same eps, seeded per image" if s.control else "off",
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in LIBRARIES},
        "split_fingerprint": split,
    }
