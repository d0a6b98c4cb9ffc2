"""Pulling a checkpoint store: a local directory, HTTP(S), or any fsspec URL.

The manifest's schema is checked; every file is downloaded to a local folder within its
limits (attack.pull.download: the size the manifest records plus some slack, a deadline per
file and one per run) and its sha256 and its own description checked against the
manifest before anything parses it. Only safetensors is ever loaded.
"""

from __future__ import annotations

import io
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attack.pull.download import Limits, MiB, is_url, join, stream
from shared.errors import CheckpointError
from shared.store.checkpoint import ModelEntry, sha256_bytes, verify_file
from shared.store.folder import MANIFEST

log = logging.getLogger(__name__)

MANIFEST_MAX_BYTES = 16 * MiB
SLACK_BYTES = 1 * MiB  # on top of the size the manifest records
UNRECORDED_MAX_BYTES = 2048 * MiB  # files of stores written before sizes were recorded
MANIFEST_DEADLINE_S = 120.0
FILE_DEADLINE_S = 1800.0
RUN_DEADLINE_S = 4 * 3600.0


def tls_context(
    root_certificates: Path | None, client_cert: Path | None = None, client_key: Path | None = None
) -> ssl.SSLContext | None:
    """Trust for https:// stores: the system's CAs, or only the deployment's own CA; and the
    attack host's client certificate (`attack.crt`/`attack.key`) where the store asks for one."""
    if root_certificates is None and client_cert is None:
        return None
    if root_certificates is not None and not Path(root_certificates).is_file():
        raise CheckpointError(f"{root_certificates}: CA certificate not found")
    try:
        ctx = ssl.create_default_context(cafile=str(root_certificates) if root_certificates else None)
    except ssl.SSLError as e:
        raise CheckpointError(f"{root_certificates}: not a usable CA certificate ({e.reason})") from None
    if client_cert is not None:
        for f in (client_cert, client_key):
            if f is None or not Path(f).is_file():
                raise CheckpointError(f"{f}: client certificate or key not found (give both)")
        try:
            ctx.load_cert_chain(str(client_cert), str(client_key))
        except (ssl.SSLError, OSError) as e:
            raise CheckpointError(
                f"{client_cert}, {client_key}: not a usable client certificate and key "
                f"({getattr(e, 'reason', None) or e}); use attack.crt and attack.key from "
                "`fedattack deploy credentials`"
            ) from None
    return ctx


def read_bytes(
    location: str,
    name: str,
    timeout: float = 60.0,
    context: ssl.SSLContext | None = None,
    *,
    max_bytes: int = MANIFEST_MAX_BYTES,
    deadline_s: float = MANIFEST_DEADLINE_S,
) -> bytes:
    """Bytes of `name` inside the store at `location` (path, http(s):// or fsspec URL), at
    most `max_bytes` within `deadline_s` in all (`timeout`: one read)."""
    buf = io.BytesIO()
    limits = Limits(
        max_bytes,
        time.monotonic() + deadline_s,
        f"the limit of {max_bytes} bytes",
        f"{deadline_s:.0f}s",
        min(timeout, deadline_s),
    )
    stream(location, name, buf.write, limits, context)
    return buf.getvalue()


def _run_deadline() -> float:
    return time.monotonic() + RUN_DEADLINE_S


@dataclass(frozen=True)
class StoreSnapshot:
    """A validated manifest and where its files are."""

    location: str
    manifest: dict[str, Any]
    models: tuple[ModelEntry, ...]
    context: ssl.SSLContext | None = None  # https trust
    file_deadline_s: float = FILE_DEADLINE_S  # each file's download, in all
    run_deadline: float = field(default_factory=_run_deadline)  # every download (monotonic)


def read_manifest(
    location: str,
    context: ssl.SSLContext | None = None,
    *,
    file_deadline_s: float = FILE_DEADLINE_S,
    run_deadline_s: float = RUN_DEADLINE_S,
    warn_plain_http: bool = True,
) -> StoreSnapshot:
    """Fetch and validate the manifest (schema, unique names, plain file names)."""
    if warn_plain_http and location.startswith("http://"):
        log.warning(
            "%s: pulling the store over plain http://: no confidentiality and no integrity (the "
            "manifest and its hashes could be rewritten on the way); use https:// for anything "
            "but loopback",
            location,
        )
    started = time.monotonic()
    raw = read_bytes(location, MANIFEST, context=context)
    where = join(location, MANIFEST)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where}: not valid JSON ({e})") from None
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
    return StoreSnapshot(location, manifest, models, context, file_deadline_s, started + run_deadline_s)


def wait_for_complete(
    location: str, poll_s: float = 10.0, timeout_s: float | None = None, context: ssl.SSLContext | None = None
) -> StoreSnapshot:
    """Block until the store's manifest says complete (the service mode)."""
    start = time.monotonic()
    announced = False
    while True:
        try:
            snap = read_manifest(location, context, warn_plain_http=not announced)
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


def file_limits(snapshot: StoreSnapshot, entry: ModelEntry) -> Limits:
    """The cap (recorded size + slack) and the deadline (per file, within the run's) of one file."""
    if entry.bytes is not None:
        cap, size_rule = entry.bytes + SLACK_BYTES, f"the {entry.bytes} bytes the manifest records + 1 MiB"
    else:
        cap, size_rule = UNRECORDED_MAX_BYTES, f"{UNRECORDED_MAX_BYTES // MiB} MiB (no size recorded)"
    own = time.monotonic() + snapshot.file_deadline_s
    if own <= snapshot.run_deadline:
        return Limits(cap, own, size_rule, f"{snapshot.file_deadline_s:.0f}s per file")
    return Limits(cap, snapshot.run_deadline, size_rule, "the deadline for all of the run's downloads")


def _download(snapshot: StoreSnapshot, entry: ModelEntry, part: Path, limits: Limits) -> None:
    """Stream one file into `part` (any failure: the caller removes it)."""
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        fh = part.open("wb")
    except OSError as e:
        raise CheckpointError(f"{part}: cannot write the download ({e.strerror}); check --out") from None

    def write(chunk: bytes) -> None:
        try:
            fh.write(chunk)
        except OSError as e:
            raise CheckpointError(
                f"{part}: cannot write the download ({e.strerror}); the disk may be full: free "
                "space or point --out at a disk with room"
            ) from None

    try:
        with fh:
            stream(snapshot.location, entry.file, write, limits, snapshot.context)
    except OSError as e:  # buffered writes fail at the flush on closing (a full disk)
        raise CheckpointError(
            f"{part}: cannot write the download ({e.strerror}); the disk may be full: free "
            "space or point --out at a disk with room"
        ) from None


def fetch_state(snapshot: StoreSnapshot, entry: ModelEntry, cache_dir: Path) -> dict[str, torch.Tensor]:
    """Download (or reuse a verified local copy of) one model file; verify its hash and its
    own description against the manifest entry; parse."""
    entry.check()
    where = join(snapshot.location, entry.file)
    limits = file_limits(snapshot, entry)
    if not is_url(snapshot.location):
        buf = io.BytesIO()
        stream(snapshot.location, entry.file, buf.write, limits, None)
        return verify_file(entry, buf.getvalue(), where)
    local = Path(cache_dir) / entry.file
    if local.is_file() and local.stat().st_size <= limits.max_bytes:
        data = local.read_bytes()
        if sha256_bytes(data) == entry.sha256:
            return verify_file(entry, data, where)
    part = local.with_name(local.name + ".part")
    try:
        _download(snapshot, entry, part, limits)
        state = verify_file(entry, part.read_bytes(), where)
        part.replace(local)
        return state
    finally:
        part.unlink(missing_ok=True)
