"""What produced a result: the code's git commit, device, precision, batch sizes, torch's
thread count, library versions (Pillow decodes and resizes every image), the split."""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from attack.measure.core import Settings

LIBRARIES = ("torch", "torchvision", "timm", "numpy", "safetensors", "flwr", "pydicom", "pillow")
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root, when run from a checkout


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
    code_commit: str = "unknown"  # git commit of the code; "unknown" outside a checkout
    threads: int = 0  # torch.get_num_threads() when measured (0: not recorded)
    # every device the measurement was sharded over (attack.devices), in shard order
    devices: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "code_commit": self.code_commit,
            "threads": self.threads,
            "device": self.device,
            "devices": list(self.devices),
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


def _git_dir(root: Path) -> Path | None:
    """The checkout's git directory (.git, or where a worktree's .git file points)."""
    dot = root / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():
        text = dot.read_text().strip()
        if text.startswith("gitdir:"):
            return (root / text.removeprefix("gitdir:").strip()).resolve()
    return None


def _ref(git: Path, ref: str) -> str | None:
    """A ref's commit: its loose file, else its line in packed-refs (a worktree's refs
    live in the common directory)."""
    common = git / "commondir"
    places = [git] + ([(git / common.read_text().strip()).resolve()] if common.is_file() else [])
    for place in places:
        loose = place / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = place / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(f" {ref}"):
                    return line.split()[0]
    return None


def code_commit(root: Path = CHECKOUT) -> str:
    """The checkout's HEAD commit (40 hex digits), read from its git files (no process);
    "unknown" outside a git checkout (the attack's container ships no .git)."""
    try:
        git = _git_dir(root)
        if git is None:
            return "unknown"
        head = (git / "HEAD").read_text().strip()
        commit = _ref(git, head.removeprefix("ref:").strip()) if head.startswith("ref:") else head
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return commit if commit is not None and re.fullmatch(r"[0-9a-f]{40}", commit) else "unknown"


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
        code_commit=code_commit(),
        threads=torch.get_num_threads(),
        devices=tuple(str(d) for d in s.shards),
    )
