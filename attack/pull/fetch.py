"""Pulling a checkpoint store: a local directory, HTTP(S), or any fsspec URL.

The manifest's schema is checked; a file whose recorded size is over the attack's cap
(attack.max_file_mib) is refused before a byte of it moves; every file is downloaded to a
local folder within its limits (attack.pull.download: the size the manifest records plus
some slack, a deadline per file and one per run) and hashed on the way to disk, so a file
the manifest does not describe never enters memory; a download that ends early is reported
as incomplete. Only a file whose sha256 matches is read back, its own description checked
against the manifest and then parsed. Only safetensors is ever loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from attack.pull.download import Limits, MiB, is_url, join, stream
from shared.errors import CheckpointError
from shared.store.checkpoint import ModelEntry, verify_file
from shared.store.folder import MANIFEST

log = logging.getLogger(__name__)

MANIFEST_MAX_BYTES = 16 * MiB
SLACK_BYTES = 1 * MiB  # on top of the size the manifest records
DEFAULT_MAX_FILE_BYTES = 512 * MiB  # attack.max_file_mib's default: ~5x the largest model
MAX_FILE_SETTING = "attack.max_file_mib"
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
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # the largest file it may declare (or send)


def read_manifest(
    location: str,
    context: ssl.SSLContext | None = None,
    *,
    file_deadline_s: float = FILE_DEADLINE_S,
    run_deadline_s: float = RUN_DEADLINE_S,
    warn_plain_http: bool = True,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> StoreSnapshot:
    """Fetch and validate the manifest (schema, unique names, plain file names).
    `max_file_bytes`: the largest model file it may list (attack.max_file_mib)."""
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
    return StoreSnapshot(
        location, manifest, models, context, file_deadline_s, started + run_deadline_s, max_file_bytes
    )


def wait_for_complete(
    location: str,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    context: ssl.SSLContext | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> StoreSnapshot:
    """Block until the store's manifest says complete (the service mode)."""
    start = time.monotonic()
    announced = False
    while True:
        try:
            snap = read_manifest(
                location, context, warn_plain_http=not announced, max_file_bytes=max_file_bytes
            )
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
    """The cap (recorded size + slack; the attack's cap where no size is recorded) and the
    deadline (per file, within the run's) of one file. A recorded size over the attack's cap
    is refused here, before anything is downloaded."""
    cap_mib = snapshot.max_file_bytes / MiB
    if entry.bytes is not None and entry.bytes > snapshot.max_file_bytes:
        raise CheckpointError(
            f"{join(snapshot.location, entry.file)}: the manifest declares {entry.bytes} bytes, more "
            f"than {MAX_FILE_SETTING} ({cap_mib:g} MiB) allows: refusing to download it; raise "
            f"{MAX_FILE_SETTING} in the attack config if the model is genuinely that large"
        )
    if entry.bytes is not None:
        cap, size_rule = entry.bytes + SLACK_BYTES, f"the {entry.bytes} bytes the manifest records + 1 MiB"
    else:
        cap = snapshot.max_file_bytes
        size_rule = f"{MAX_FILE_SETTING} ({cap_mib:g} MiB; the manifest records no size)"
    own = time.monotonic() + snapshot.file_deadline_s
    if own <= snapshot.run_deadline:
        deadline, time_rule = own, f"{snapshot.file_deadline_s:.0f}s per file"
    else:
        deadline, time_rule = snapshot.run_deadline, "the deadline for all of the run's downloads"
    return Limits(cap, deadline, size_rule, time_rule, expected=entry.bytes)


def _disk_error(part: Path, e: OSError) -> CheckpointError:
    return CheckpointError(
        f"{part}: cannot write the download ({e.strerror}); the disk may be full: free "
        "space or point --out at a disk with room"
    )


class _Hashed:
    """A sink that hashes and counts what passes through it and writes it on to the file
    `to` (path, open file) if given: a file is hashed while it streams, never held whole."""

    def __init__(self, to: tuple[Path, IO[bytes]] | None = None) -> None:
        self.sha, self.got, self.to = hashlib.sha256(), 0, to
        self.announced: int | None = None  # the size the source announced (and delivered)

    def __call__(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.got += len(chunk)
        if self.to is not None:
            try:
                self.to[1].write(chunk)
            except OSError as e:
                raise _disk_error(self.to[0], e) from None


def _download(snapshot: StoreSnapshot, entry: ModelEntry, part: Path, limits: Limits) -> _Hashed:
    """Stream one file into `part`, hashing it on the way (any failure: the caller removes it)."""
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        fh = part.open("wb")
    except OSError as e:
        raise CheckpointError(f"{part}: cannot write the download ({e.strerror}); check --out") from None
    try:
        with fh:
            sink = _Hashed((part, fh))
            sink.announced = stream(snapshot.location, entry.file, sink, limits, snapshot.context)
    except OSError as e:  # buffered writes fail at the flush on closing (a full disk)
        raise _disk_error(part, e) from None
    return sink


def _check_received(entry: ModelEntry, sink: _Hashed, limits: Limits, where: str) -> None:
    """Fewer bytes than the manifest records from a source that announced no size: the
    transfer ended early (incomplete; a source that announced a size and sent less was
    already reported so). Otherwise the file must hash to what the manifest records."""
    if entry.bytes is not None and sink.got < entry.bytes and sink.announced is None:
        raise limits.incomplete(where, sink.got, "the transfer ended early")
    got = sink.sha.hexdigest()
    if got != entry.sha256:
        differs = entry.bytes is not None and sink.got != entry.bytes
        size = f"; {sink.got} bytes, the manifest records {entry.bytes}" if differs else ""
        raise CheckpointError(
            f"{where}: sha256 mismatch (manifest {entry.sha256[:12]}..., file {got[:12]}...{size}): "
            "the file was altered or corrupted; refusing to load it"
        )


def _hash_file(location: str, name: str, limits: Limits) -> _Hashed:
    sink = _Hashed()
    sink.announced = stream(location, name, sink, limits, None)
    return sink


def _read(location: str, name: str, limits: Limits) -> bytes:
    buf = io.BytesIO()
    stream(location, name, buf.write, limits, None)
    return buf.getvalue()


def _is_copy_of(local: Path, entry: ModelEntry, limits: Limits) -> bool:
    """A file downloaded before, still what the manifest records (hashed, not read whole)."""
    if not local.is_file() or local.stat().st_size > limits.max_bytes:
        return False
    return _hash_file(str(local.parent), local.name, limits).sha.hexdigest() == entry.sha256


def fetch_state(snapshot: StoreSnapshot, entry: ModelEntry, cache_dir: Path) -> dict[str, torch.Tensor]:
    """Download (or reuse a verified local copy of) one model file; verify its size and hash
    while it streams, then its own description against the manifest entry; parse. Only a
    file whose hash matches is ever read into memory (at most the attack's cap)."""
    entry.check()
    where = join(snapshot.location, entry.file)
    limits = file_limits(snapshot, entry)
    if not is_url(snapshot.location):
        _check_received(entry, _hash_file(snapshot.location, entry.file, limits), limits, where)
        return verify_file(entry, _read(snapshot.location, entry.file, limits), where)
    local = Path(cache_dir) / entry.file
    if _is_copy_of(local, entry, limits):
        return verify_file(entry, local.read_bytes(), where)
    part = local.with_name(local.name + ".part")
    try:
        _check_received(entry, _download(snapshot, entry, part, limits), limits, where)
        state = verify_file(entry, part.read_bytes(), where)
        part.replace(local)
        return state
    finally:
        part.unlink(missing_ok=True)
