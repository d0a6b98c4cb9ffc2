"""The checkpoint store: `manifest.json` plus one safetensors file per model.

Writes are atomic (temp file + rename) and the manifest is written last, so a reader
never sees a manifest entry whose file is missing or half-written. Loading never
unpickles: safetensors only, and each file's sha256 is checked before use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import CheckpointError
from shared.io import atomic_write
from shared.ml.spec import InputSpec
from shared.store.checkpoint import (
    ModelEntry,
    decode_state,
    describe,
    encode_state,
    finite_metrics,
    nonfinite_problem,
    sha256_bytes,
)

if TYPE_CHECKING:  # tensors pass through; torch itself is imported where they are made
    import torch

# The store's layout. Other modules name these files only through this module.
MANIFEST = "manifest.json"
EVENTS_FILE = "metrics.jsonl"  # the ServerApp's event log (shared.events), beside the manifest
PLOT_FILE = "metrics.png"
CONFIG_FILE = "config.yaml"  # the resolved experiment config that trained the store
STORE_VERSION = 1


class CheckpointStore:
    """A local checkpoint store directory, for the writer (the ServerApp) and local readers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def events_path(self) -> Path:
        return self.root / EVENTS_FILE

    @property
    def plot_path(self) -> Path:
        return self.root / PLOT_FILE

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def begin(self, study: str, resume: bool) -> None:
        """Called by each run's ServerApp before it writes anything: the first run of a new
        study (a fresh submission, not a resume) clears an earlier study's manifest and
        event log; the study's other runs, concurrent or later, find its id and keep them."""
        with self._locked():
            m = self.read_manifest()
            if not resume and m.get("study") != study:
                self.manifest_path.unlink(missing_ok=True)
                self.events_path.unlink(missing_ok=True)
                m = self.read_manifest()
            if m.get("study") != study:
                m["study"] = study
                self._write_manifest(m)

    def record_split(self, digests: dict[str, str], resume: bool) -> None:
        """The fingerprint of the split the federation trains on (manifest -> digest); a
        resumed study must continue on the split it started with."""
        with self._locked():
            m = self.read_manifest()
            old = m.get("split")
            if resume and old and old != dict(sorted(digests.items())):
                changed = sorted(k for k in set(old) | set(digests) if old.get(k) != digests.get(k))
                raise CheckpointError(
                    f"{self.manifest_path}: the study was trained on another split ({', '.join(changed)} "
                    "differ); resume with the splits it started with, or start afresh without --resume"
                )
            m["split"] = dict(sorted(digests.items()))
            self._write_manifest(m)

    def record_devices(self, devices: dict[str, str]) -> None:
        """Where each site trained (site -> device), as the launcher placed it."""
        with self._locked():
            m = self.read_manifest()
            m["devices"] = dict(sorted(devices.items()))
            self._write_manifest(m)

    def reset(self) -> None:
        """Forget an earlier study: its manifest (complete or not) and its metrics log."""
        with self._locked():
            self.manifest_path.unlink(missing_ok=True)
            self.events_path.unlink(missing_ok=True)

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
        atomic_write(self.manifest_path, json.dumps(manifest, indent=1), durable=True)

    def _write_file(self, file: str, state: dict[str, torch.Tensor], info: dict[str, Any]) -> tuple[str, int]:
        """Write one checkpoint file carrying its own description; its sha256 and size. A
        model with a NaN or infinite value is refused: a store never holds a broken model."""
        problem = nonfinite_problem(state)
        if problem:
            raise CheckpointError(
                f"{self.root}: refusing to store {info.get('name', file)}: {problem}; a model that is "
                "not finite is never written (see the run's site-rejected events)"
            )
        data = encode_state(state, info)
        atomic_write(self.root / file, data, durable=True)
        return sha256_bytes(data), len(data)

    def save_round(
        self,
        arch: str,
        rnd: int,
        state: dict[str, torch.Tensor],
        spec: InputSpec,
        metrics: dict[str, float],
        sites: list[str],
        config: dict[str, Any],
    ) -> None:
        """Store the global model after round `rnd` (0 = initial) and which sites built it."""
        with self._locked():
            file = f"{arch}-round{rnd}.safetensors"
            info = describe(
                name=f"{arch}-round{rnd}", arch=arch, kind="round", site=None, round=rnd, spec=spec
            )
            digest, size = self._write_file(file, state, info)
            m = self.read_manifest()
            m["rounds"] = [r for r in m["rounds"] if not (r["arch"] == arch and r["round"] == rnd)]
            m["rounds"].append(
                {
                    "arch": arch,
                    "round": rnd,
                    "file": file,
                    "sha256": digest,
                    "bytes": size,
                    "input": spec.to_json(),
                    "metrics": metrics,
                    "sites": sites,
                }
            )
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

    def save_model(
        self,
        state: dict[str, torch.Tensor],
        *,
        name: str,
        arch: str,
        kind: str,
        site: str | None,
        round: int,
        input: InputSpec,
        metrics: dict[str, float],
        training: dict[str, str] | None = None,
    ) -> ModelEntry:
        """Store a final model (global, local or pooled) and list it in the manifest; `training`
        says how it was trained (strategy, adversarial training)."""
        with self._locked():
            file = f"{name}.safetensors"
            info = describe(name=name, arch=arch, kind=kind, site=site, round=round, spec=input)
            digest, size = self._write_file(file, state, info)
            entry = ModelEntry(
                name=name,
                arch=arch,
                kind=kind,
                site=site,
                round=round,
                file=file,
                sha256=digest,
                input=input,
                metrics=finite_metrics(metrics),
                bytes=size,
                training=dict(training or {}),
            )
            m = self.read_manifest()
            m["models"] = [e for e in m["models"] if e["name"] != entry.name] + [entry.to_json()]
            self._write_manifest(m)
            return entry

    def mark_complete(
        self,
        architectures: list[str],
        sites: list[str],
        min_sites: int | None = None,
        pooled: bool = False,
        site_archs: dict[str, str] | None = None,
    ) -> bool:
        """Set `complete` when every arch has its global and a local model from at least
        `min_sites` sites (default: every site), as the federation's own quorum allowed, and,
        with `pooled` (federation.pooled_baseline), its pooled baseline. Missing models are
        listed in the manifest (`missing`), what was expected beside them (`expected`)."""
        quorum = len(sites) if min_sites is None else min_sites
        with self._locked():
            m = self.read_manifest()
            have = {(e["arch"], e["kind"], e["site"]) for e in m["models"]}
            central = ("global", "pooled") if pooled else ("global",)  # one per arch, required
            missing = [f"{a}-{k}" for k in central for a in architectures if (a, k, None) not in have]
            enough = not missing
            for a in architectures:  # feddf (`site_archs`): a site's local is of its architecture only
                group = [s for s in sites if site_archs is None or site_archs.get(s) == a]
                absent = [s for s in group if (a, "local", s) not in have]
                missing += [f"{a}-local-{s}" for s in absent]
                enough &= len(group) - len(absent) >= quorum - (len(sites) - len(group))
            m["complete"] = enough
            m["missing"] = missing
            m["expected"] = {"architectures": architectures, "sites": sites, "min_sites": quorum}
            if pooled:
                m["expected"]["pooled"] = True
            self._write_manifest(m)
            return bool(m["complete"])

    def is_complete(self) -> bool:
        """Whether the manifest says every expected model is stored."""
        return bool(self.read_manifest().get("complete"))

    def check_complete(self) -> None:
        """Raise unless the store is complete (after all runs of a study)."""
        m = self.read_manifest()
        if not m.get("complete"):
            missing = m.get("missing") or []
            named = f" (missing: {', '.join(missing)})" if missing else ""
            raise CheckpointError(f"{self.root}: the store is incomplete after all runs{named}")

    def last_round(self, arch: str) -> dict[str, Any] | None:
        """The latest stored round of `arch`, if any."""
        rounds = [r for r in self.read_manifest()["rounds"] if r["arch"] == arch]
        return max(rounds, key=lambda r: r["round"]) if rounds else None

    def models(self) -> list[ModelEntry]:
        return [ModelEntry.from_json(d, str(self.manifest_path)) for d in self.read_manifest()["models"]]

    def load(self, file: str, sha256: str) -> dict[str, torch.Tensor]:
        """Read, verify and parse one stored file; a model that is not finite is refused."""
        path = self.root / file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: listed in the manifest but missing") from None
        except OSError as e:  # a folder, unreadable, ...
            raise CheckpointError(f"{path}: listed in the manifest but unreadable ({e.strerror})") from None
        state = decode_state(data, sha256, str(path))
        problem = nonfinite_problem(state)
        if problem:  # written by an older version, or by hand: never resumed from
            raise CheckpointError(f"{path}: refusing a broken model: {problem}")
        return state
