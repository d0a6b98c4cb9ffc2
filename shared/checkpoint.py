"""One checkpoint file of the store: its manifest entry, its bytes, their verification.

A file is a safetensors serialization of a state dict (never a pickle); its sha256 is
checked before anything parses it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from shared.errors import CheckpointError
from shared.models import InputSpec

KINDS = ("global", "local")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the store, as listed in the manifest."""

    name: str
    arch: str
    kind: str
    site: str | None
    round: int
    file: str
    sha256: str
    input: InputSpec
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "kind": self.kind,
            "site": self.site,
            "round": self.round,
            "file": self.file,
            "sha256": self.sha256,
            "input": self.input.to_json(),
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> ModelEntry:
        try:
            entry = cls(
                name=str(d["name"]),
                arch=str(d["arch"]),
                kind=str(d["kind"]),
                site=None if d["site"] is None else str(d["site"]),
                round=int(d["round"]),
                file=str(d["file"]),
                sha256=str(d["sha256"]),
                input=InputSpec.from_json(d["input"]),
                metrics={k: float(v) for k, v in dict(d.get("metrics", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: malformed model entry ({e!r}): {d}") from None
        if entry.kind not in KINDS:
            raise CheckpointError(f"{where}: model {entry.name}: kind must be one of {KINDS}")
        if "/" in entry.file or entry.file.startswith("."):
            raise CheckpointError(f"{where}: model {entry.name}: file must be a plain name")
        if len(entry.sha256) != 64:
            raise CheckpointError(f"{where}: model {entry.name}: sha256 must be 64 hex digits")
        return entry


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics as floats, without NaN entries (an undefined AUC, say): JSON has no NaN."""
    return {k: float(v) for k, v in metrics.items() if not math.isnan(float(v))}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The file's own description (architecture, input spec, ...) is one JSON value under one
# metadata key: safetensors writes a header with several metadata keys in an arbitrary
# order, so the same weights would hash differently from one run to the next.
METADATA_KEY = "fedattack"


def encode_state(state: dict[str, torch.Tensor], info: dict[str, Any]) -> bytes:
    """safetensors bytes of a state dict (contiguous CPU tensors)."""
    metadata = {METADATA_KEY: json.dumps(info, sort_keys=True)}
    return st_save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata)


def decode_state(data: bytes, sha256: str, where: str) -> dict[str, torch.Tensor]:
    """Verify the hash first, then parse safetensors (never pickle)."""
    got = sha256_bytes(data)
    if got != sha256:
        raise CheckpointError(
            f"{where}: sha256 mismatch (manifest {sha256[:12]}..., file {got[:12]}...): "
            "the file was altered or corrupted; refusing to load it"
        )
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{where}: not a valid safetensors file ({e})") from None
