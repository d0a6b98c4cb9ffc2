"""The checkpoint store: `manifest.json` plus one safetensors file per model.

Writes are atomic (temp file + rename) and the manifest is written last, so a reader
never sees a manifest entry whose file is missing or half-written. Loading never
unpickles: safetensors only, and each file's sha256 is checked before use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from shared.errors import CheckpointError
from shared.models import InputSpec

MANIFEST = "manifest.json"
METRICS_FILE = "metrics.jsonl"  # the ServerApp's event log, beside the manifest
STORE_VERSION = 1
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
            "name": self.name, "arch": self.arch, "kind": self.kind, "site": self.site,
            "round": self.round, "file": self.file, "sha256": self.sha256,
            "input": self.input.to_json(), "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> ModelEntry:
        try:
            entry = cls(
                name=str(d["name"]), arch=str(d["arch"]), kind=str(d["kind"]),
                site=None if d["site"] is None else str(d["site"]), round=int(d["round"]),
                file=str(d["file"]), sha256=str(d["sha256"]),
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


def encode_state(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of a state dict (contiguous CPU tensors)."""
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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class CheckpointStore:
    """A local checkpoint store directory, for the writer (the ServerApp) and local readers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def reset(self) -> None:
        """Forget an earlier study: its manifest (complete or not) and its metrics log."""
        with self._locked():
            self.manifest_path.unlink(missing_ok=True)
            (self.root / METRICS_FILE).unlink(missing_ok=True)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or an empty incomplete one when the store is new."""
        if not self.manifest_path.exists():
            return {"version": STORE_VERSION, "complete": False, "models": [], "rounds": []}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.manifest_path}: not valid JSON ({e})") from None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _atomic_write(self.manifest_path, json.dumps(manifest, indent=1).encode())

    def _write_file(self, name: str, state: dict[str, torch.Tensor], spec: InputSpec,
                    arch: str) -> str:
        data = encode_state(state, {"arch": arch, "input": json.dumps(spec.to_json())})
        _atomic_write(self.root / name, data)
        return sha256_bytes(data)

    def save_round(self, arch: str, rnd: int, state: dict[str, torch.Tensor], spec: InputSpec,
                   metrics: dict[str, float], sites: list[str], config: dict[str, Any]) -> None:
        """Store the global model after round `rnd` (0 = initial) and which sites built it."""
        with self._locked():
            file = f"{arch}-round{rnd}.safetensors"
            digest = self._write_file(file, state, spec, arch)
            m = self.read_manifest()
            m["rounds"] = [r for r in m["rounds"] if not (r["arch"] == arch and r["round"] == rnd)]
            m["rounds"].append({"arch": arch, "round": rnd, "file": file, "sha256": digest,
                                "input": spec.to_json(), "metrics": metrics, "sites": sites})
            m.setdefault("config", {})[arch] = config
            self._write_manifest(m)

    def update_round_metrics(self, arch: str, rnd: int, metrics: dict[str, float]) -> None:
        """Attach the (later measured) evaluation of round `rnd`'s global model."""
        with self._locked():
            m = self.read_manifest()
            for r in m["rounds"]:
                if r["arch"] == arch and r["round"] == rnd:
                    r["metrics"] = finite_metrics(metrics)
            self._write_manifest(m)

    def save_model(self, entry_fields: dict[str, Any], state: dict[str, torch.Tensor]) -> ModelEntry:
        """Store a final model (global or local) and list it in the manifest."""
        with self._locked():
            spec: InputSpec = entry_fields["input"]
            file = f"{entry_fields['name']}.safetensors"
            digest = self._write_file(file, state, spec, entry_fields["arch"])
            entry = ModelEntry(file=file, sha256=digest, **entry_fields)
            m = self.read_manifest()
            m["models"] = [e for e in m["models"] if e["name"] != entry.name] + [entry.to_json()]
            self._write_manifest(m)
            return entry

    def mark_complete(self, architectures: list[str], sites: list[str]) -> bool:
        """Set `complete` when every arch has its global and one local per site."""
        with self._locked():
            m = self.read_manifest()
            have = {(e["arch"], e["kind"], e["site"]) for e in m["models"]}
            need = {(a, "global", None) for a in architectures}
            need |= {(a, "local", s) for a in architectures for s in sites}
            m["complete"] = need <= have
            m["expected"] = {"architectures": architectures, "sites": sites}
            self._write_manifest(m)
            return bool(m["complete"])

    def last_round(self, arch: str) -> dict[str, Any] | None:
        """The latest stored round of `arch`, if any."""
        rounds = [r for r in self.read_manifest()["rounds"] if r["arch"] == arch]
        return max(rounds, key=lambda r: r["round"]) if rounds else None

    def models(self) -> list[ModelEntry]:
        return [ModelEntry.from_json(d, str(self.manifest_path)) for d in self.read_manifest()["models"]]

    def load(self, file: str, sha256: str) -> dict[str, torch.Tensor]:
        """Read, verify and parse one stored file."""
        path = self.root / file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: listed in the manifest but missing") from None
        return decode_state(data, sha256, str(path))
