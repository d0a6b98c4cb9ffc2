"""What produced a result: device, precision, batch sizes, library versions, the split."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from attack.measure.core import Settings

LIBRARIES = ("torch", "torchvision", "timm", "numpy", "safetensors", "flwr", "pydicom")


@dataclass(frozen=True)
class Provenance:
    """results.json's `provenance` and report.md's last section."""

    device: str
    dtype: str  # of the predictions that decide counts
    crafting_dtype: str
    batch_size: int
    control: str
    python: str
    versions: Mapping[str, str]  # library -> version ("not installed")
    split_fingerprint: str

    def to_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "crafting_dtype": self.crafting_dtype,
            "batch_size": self.batch_size,
            "control": self.control,
            "python": self.python,
            "versions": dict(self.versions),
            "split_fingerprint": self.split_fingerprint,
        }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(s: Settings, split: str) -> Provenance:
    return Provenance(
        device=s.device.type,
        dtype=str(s.dtype).removeprefix("torch."),
        crafting_dtype="float32 (TF32 off)",
        batch_size=s.batch,
        control="random sign per pixel at the same eps, seeded per image" if s.control else "off",
        python=platform.python_version(),
        versions={name: _version(name) for name in LIBRARIES},
        split_fingerprint=split,
    )
