"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every output of the project (checkpoints, manifests, caches, reports, credentials) goes
through here: write a temporary file beside the target, flush it, rename it over the
target; on any failure the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shared.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to (by any library); renamed over `path`
    when the block succeeds, removed when it fails. `suffix` keeps an extension some
    writers need (matplotlib picks the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str, private: bool = False, durable: bool = False) -> None:
    """Write `data` to `path` atomically. `private` creates the file 0600 from the start
    (keys: never readable by others, not even briefly); `durable` fsyncs before the rename
    (checkpoints, manifests)."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Make sure `path` is a folder this process can write into (creating it if needed),
    before any compute is spent; raise OutputError naming it otherwise. `what` says what
    the folder is for, e.g. "output folder (--out)"."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: the {what} is a file, not a folder; pick another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{path}: the {what} is not writable ({e.strerror}); pick another path or fix its permissions"
        ) from None
    return path
