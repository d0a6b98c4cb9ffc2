"""One checkpoint file of the store: its manifest entry, its bytes, their verification.

A file is a safetensors serialization of a state dict (never a pickle) that carries its
own description (name, architecture, kind, site, round, input spec) in its metadata. A
reader checks the sha256 first, then that the manifest entry says what the hashed file
says about itself, and only then parses the tensors: the manifest alone is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.errors import CheckpointError
from shared.ml.spec import InputSpec

if TYPE_CHECKING:  # torch is imported where tensors are made (safetensors.torch): the
    # store's manifest, entries and hashes are read without it (the CLI, the deploy hosts)
    import torch

# the models of the manifest ("pooled": the centrally trained baseline, shared.pooled);
# "round" files are per-round globals
KINDS = ("global", "local", "pooled")


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
    bytes: int | None = None  # the file's size; None in stores written before it was recorded
    # How it was trained: strategy (fedavg, fedprox, fedbn) and adversarial training
    # ("" or e.g. "pgd eps 0.02 steps 3 share 0.5 from round 1"); empty in older stores.
    training: dict[str, str] = field(default_factory=dict)  # + calibration (none, youden)

    def to_json(self) -> dict[str, Any]:
        size = {} if self.bytes is None else {"bytes": self.bytes}
        training = {"training": self.training} if self.training else {}
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
            **size,
            **training,
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
                bytes=None if d.get("bytes") is None else _size(d["bytes"]),
                training={str(k): str(v) for k, v in dict(d.get("training", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: malformed model entry ({e!r}): {d}") from None
        if entry.kind not in KINDS:
            raise CheckpointError(f"{where}: model {entry.name}: kind must be one of {KINDS}")
        problem = file_name_problem(entry.file)
        if problem:
            raise CheckpointError(
                f"{where}: model {entry.name}: 'file' {entry.file!r} {problem}; fix the manifest"
            )
        if len(entry.sha256) != 64:
            raise CheckpointError(f"{where}: model {entry.name}: sha256 must be 64 hex digits")
        return entry

    def check(self) -> None:
        """Refuse an entry whose input spec cannot describe a model (mean/std of the wrong
        length, std not positive). Checked per model when it is loaded, not when the manifest
        is read, so that a reader can skip this one model and keep the others."""
        problem = spec_problem(self.input)
        if problem:
            raise CheckpointError(f"refusing {self.name}: manifest {problem}; the entry is malformed")


def _size(value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 0:
        raise ValueError(f"bytes must be a non-negative integer, got {value!r}")
    return int(value)


def file_name_problem(file: str) -> str | None:
    """Why `file` is not a plain file name inside the store (None when it is one)."""
    if not file:
        return "is empty: it must name the model's safetensors file"
    if "\0" in file:
        return "contains a NUL character"
    if "/" in file or "\\" in file or file.startswith("."):
        return "must be a plain name (no folders, not hidden)"
    return None


def spec_problem(spec: InputSpec) -> str | None:
    """Why an input spec cannot describe a model (None when it can)."""
    if spec.size < 1 or spec.channels < 1:
        return f"input.size {spec.size} / input.channels {spec.channels} must be positive"
    if spec.net_size < 0:
        return f"input.net_size {spec.net_size} must be positive (or 0: the architecture's default)"
    for key, values in (("mean", spec.mean), ("std", spec.std)):
        if len(values) != spec.channels:
            return (
                f"input.{key} has {len(values)} value(s) {list(values)} but input.channels is "
                f"{spec.channels}: one value per channel"
            )
        if not all(math.isfinite(v) for v in values):
            return f"input.{key} {list(values)} must be finite numbers"
    if not all(v > 0 for v in spec.std):
        return f"input.std {list(spec.std)} must be positive"
    return None


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics as floats, without NaN entries (an undefined AUC, say): JSON has no NaN."""
    return {k: float(v) for k, v in metrics.items() if not math.isnan(float(v))}


def nonfinite_problem(state: dict[str, torch.Tensor]) -> str | None:
    """What in a state dict is NaN or infinite ("3 tensors hold NaN or infinite values:
    net.fc.weight (12 of 1,024), ..."), None when every value is finite."""
    bad = {}
    for k, v in state.items():
        if v.dtype.is_floating_point:
            n = int((~v.isfinite()).sum())
            if n:
                bad[k] = f"{k[:80]} ({n:,} of {v.numel():,})"
    if not bad:
        return None
    shown = ", ".join(list(bad.values())[:3]) + (", ..." if len(bad) > 3 else "")
    return f"{len(bad)} tensor(s) hold NaN or infinite values: {shown}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The file's own description (architecture, input spec, ...) is one JSON value under one
# metadata key: safetensors writes a header with several metadata keys in an arbitrary
# order, so the same weights would hash differently from one run to the next.
METADATA_KEY = "fedattack"


def describe(
    *, name: str, arch: str, kind: str, site: str | None, round: int, spec: InputSpec
) -> dict[str, Any]:
    """What a file says about itself (its metadata; `kind` is "global", "local", "pooled" or
    "round")."""
    return {"name": name, "arch": arch, "kind": kind, "site": site, "round": round, "input": spec.to_json()}


def encode_state(state: dict[str, torch.Tensor], info: dict[str, Any]) -> bytes:
    """safetensors bytes of a state dict (contiguous CPU tensors)."""
    from safetensors.torch import save as st_save

    metadata = {METADATA_KEY: json.dumps(info, sort_keys=True)}
    return st_save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata)


def _check_hash(data: bytes, sha256: str, where: str) -> None:
    got = sha256_bytes(data)
    if got != sha256:
        raise CheckpointError(
            f"{where}: sha256 mismatch (manifest {sha256[:12]}..., file {got[:12]}...): "
            "the file was altered or corrupted; refusing to load it"
        )


def _parse(data: bytes, where: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as st_load

    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{where}: not a valid safetensors file ({e})") from None


def decode_state(data: bytes, sha256: str, where: str) -> dict[str, torch.Tensor]:
    """Verify the hash first, then parse safetensors (never pickle)."""
    _check_hash(data, sha256, where)
    return _parse(data, where)


def file_description(data: bytes, where: str) -> dict[str, Any]:
    """The description a safetensors file carries under METADATA_KEY (read from its header
    without parsing any tensor)."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < n <= len(data) - 8:
        raise CheckpointError(f"{where}: not a valid safetensors file (bad header length)")
    try:
        info = json.loads(json.loads(data[8 : 8 + n])["__metadata__"][METADATA_KEY])
    except (ValueError, KeyError, TypeError):
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("input"), dict) or "arch" not in info:
        raise CheckpointError(
            f"{where}: the file carries no description of itself (metadata {METADATA_KEY!r}); "
            "it was not written by this project's store: refusing it"
        )
    return info


def _said(entry: ModelEntry) -> dict[str, Any]:
    spec = entry.input
    return {
        "name": entry.name,
        "arch": entry.arch,
        "kind": entry.kind,
        "site": entry.site,
        "round": entry.round,
        "input.size": spec.size,
        "input.channels": spec.channels,
        "input.mean": list(spec.mean),
        "input.std": list(spec.std),
    }


def check_description(entry: ModelEntry, info: dict[str, Any]) -> None:
    """The manifest entry must say what the hashed file says about itself. Files written
    before the store recorded name, kind, site and round carry only arch and input; those
    two are always compared."""
    spec = info["input"]
    told = {**{k: v for k, v in info.items() if k != "input"}, **{f"input.{k}": v for k, v in spec.items()}}
    for key, ours in _said(entry).items():
        if key not in told and key in ("name", "kind", "site", "round"):
            continue
        theirs = told.get(key)
        if isinstance(ours, list):
            same = (
                isinstance(theirs, list)
                and all(isinstance(v, (int, float)) for v in theirs)
                and [float(v) for v in ours] == [float(v) for v in theirs]
            )
        else:
            same = ours == theirs
        if not same:
            raise CheckpointError(
                f"refusing {entry.name}: manifest says {key} {json.dumps(ours)} but the file says "
                f"{json.dumps(theirs)}; the manifest does not describe the hashed file (edited or "
                "swapped): restore the store's manifest"
            )


def verify_file(entry: ModelEntry, data: bytes, where: str) -> dict[str, torch.Tensor]:
    """Hash, then the file's own description against the manifest entry, then the tensors."""
    entry.check()
    _check_hash(data, entry.sha256, where)
    check_description(entry, file_description(data, where))
    return _parse(data, where)
