"""Pulling a checkpoint store: a local directory, HTTP(S), or any fsspec URL.

The manifest's schema is checked; every file is downloaded to a local folder and its
sha256 checked before anything parses it. Only safetensors is ever loaded.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.checkpoint import ModelEntry, decode_state, sha256_bytes
from shared.errors import CheckpointError
from shared.io import atomic_write
from shared.store import MANIFEST

log = logging.getLogger(__name__)


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def tls_context(root_certificates: Path | None) -> ssl.SSLContext | None:
    """Trust for https:// stores: the system's CAs, or only the deployment's own CA."""
    if root_certificates is None:
        return None
    if not Path(root_certificates).is_file():
        raise CheckpointError(f"{root_certificates}: CA certificate not found")
    try:
        return ssl.create_default_context(cafile=str(root_certificates))
    except ssl.SSLError as e:
        raise CheckpointError(f"{root_certificates}: not a usable CA certificate ({e.reason})") from None


def read_bytes(
    location: str, name: str, timeout: float = 60.0, context: ssl.SSLContext | None = None
) -> bytes:
    """Bytes of `name` inside the store at `location` (path, http(s):// or fsspec URL)."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    if not _is_url(location):
        path = Path(location) / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: not found") from None
    url = location.rstrip("/") + "/" + name
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise CheckpointError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise CheckpointError(f"{url}: unreachable ({getattr(e, 'reason', e)})") from None
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise CheckpointError(f"{url}: not found") from None
    except (OSError, ValueError, ImportError) as e:
        raise CheckpointError(f"{url}: cannot read ({e})") from None


@dataclass(frozen=True)
class StoreSnapshot:
    """A validated manifest and where its files are."""

    location: str
    manifest: dict[str, Any]
    models: tuple[ModelEntry, ...]
    context: ssl.SSLContext | None = None  # https trust


def read_manifest(location: str, context: ssl.SSLContext | None = None) -> StoreSnapshot:
    """Fetch and validate the manifest (schema, unique names, plain file names)."""
    raw = read_bytes(location, MANIFEST, context=context)
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{location}/{MANIFEST}: not valid JSON ({e})") from None
    where = f"{location}/{MANIFEST}"
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{where}: the top level must be an object")
    if not isinstance(manifest.get("complete"), bool):
        raise CheckpointError(f"{where}: 'complete' must be true or false")
    if not isinstance(manifest.get("models"), list):
        raise CheckpointError(f"{where}: 'models' must be a list")
    models = tuple(ModelEntry.from_json(d, where) for d in manifest["models"])
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{where}: model names must be unique")
    return StoreSnapshot(location, manifest, models, context)


def wait_for_complete(
    location: str, poll_s: float = 10.0, timeout_s: float | None = None, context: ssl.SSLContext | None = None
) -> StoreSnapshot:
    """Block until the store's manifest says complete (the service mode)."""
    start = time.monotonic()
    announced = False
    while True:
        try:
            snap = read_manifest(location, context)
            if snap.manifest["complete"]:
                return snap
            state = f"{len(snap.models)} model(s) so far"
        except CheckpointError as e:
            state = str(e)
        if not announced:
            log.info("waiting for a complete checkpoint store at %s (%s)", location, state)
            announced = True
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise CheckpointError(f"{location}: not complete after {timeout_s:.0f}s ({state})")
        time.sleep(poll_s)


def fetch_state(snapshot: StoreSnapshot, entry: ModelEntry, cache_dir: Path) -> dict[str, torch.Tensor]:
    """Download (or reuse a verified local copy of) one model file; verify; parse."""
    local = cache_dir / entry.file
    if _is_url(snapshot.location):
        if local.exists() and sha256_bytes(local.read_bytes()) == entry.sha256:
            data = local.read_bytes()
        else:
            data = read_bytes(snapshot.location, entry.file, context=snapshot.context)
            atomic_write(local, data)
    else:
        data = read_bytes(snapshot.location, entry.file)
    return decode_state(data, entry.sha256, f"{snapshot.location}/{entry.file}")
