"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every output of the project (checkpoints, manifests, caches, reports, credentials) goes
through here: write a temporary file beside the target, flush it, rename it over the
target; on any failure the temporary file is removed and the target is untouched. A full
disk (or quota, or file-size limit) is an OutputError that names the file being written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shared.errors import OutputError

# what a write fails with when the disk (or the user's quota, or a file-size limit) is full
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full(e: OSError, path: Path | str | None = None) -> OutputError:
    """The error a write that found no room ends in: the file it was writing and what to free."""
    where = path if path is not None else e.filename
    what = f"{where}: cannot write it" if where is not None else "a write failed"
    folder = f" ({Path(where).parent})" if where is not None else ""
    return OutputError(
        f"{what} ({e.strerror}): free space on the disk that holds it{folder}, or point the output "
        "at a disk with room, then run again"
    )


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to (by any library); renamed over `path`
    when the block succeeds, removed when it fails (a full disk: an OutputError naming
    `path`). `suffix` keeps an extension some writers need (matplotlib picks the format
    from it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        tmp.replace(path)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise disk_full(e, path) from None
        raise
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
