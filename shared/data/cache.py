"""Preprocessing cache: decode and resize once, then read uint8 arrays from disk.

One folder per (manifest, part, image size) holding `images.npy` (N x S x S uint8, read
as a memory map), `meta.json` (labels, ids, the fingerprint of every source file) and
`unreadable.txt`. The cache is rebuilt when a source file (size or mtime) or the image
size changes. Writes are atomic: a half-built cache is never mistaken for a valid one.

A build is written into `<part>_<size>px.tmp<PID>` and renamed into place; one whose
process was killed is removed at the next start. Its decoding workers die with it (a
parent-death signal on Linux) and do not outlive a SIGTERM.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config.data import DEFAULT_MAX_PIXELS, loader_workers
from shared.data.images import read_resized
from shared.data.manifest import Manifest
from shared.errors import DatasetError, ImageReadError
from shared.io import DISK_FULL, disk_full

log = logging.getLogger(__name__)
CACHE_VERSION = 1
_TMP = re.compile(r".+px\.tmp(\d+)")  # a build in progress, or the debris of a killed one
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class CachedPart:
    """A decoded part of a manifest: images (memory-mapped), labels and ids."""

    images: np.ndarray  # uint8 [N, S, S]
    labels: np.ndarray  # int64 [N]
    ids: tuple[str, ...]
    unreadable: tuple[str, ...]
    folder: Path

    def __len__(self) -> int:
        return len(self.ids)


def _fingerprint(manifest: Manifest, part: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    # a non-default pixel limit may refuse other files: it keys the cache (the default keeps
    # the caches built before the limit existed)
    limit = "" if max_pixels == DEFAULT_MAX_PIXELS else f":max{max_pixels}"
    h = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{manifest.dataset}:{part}{limit}".encode())
    for s in manifest.part(part):
        p = manifest.data_root / s.relpath
        try:
            st = p.stat()
            h.update(f"{s.relpath}:{s.label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{s.relpath}:{s.label}:absent\n".encode())
    return h.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_builds(folder: Path) -> None:
    """Remove the temporary folders of builds whose process is gone (killed mid-build)."""
    if not folder.is_dir():
        return
    for tmp in folder.iterdir():
        m = _TMP.fullmatch(tmp.name)
        if m and tmp.is_dir() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            log.info("removing %s, left by a cache build that was killed", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _worker_start(parent: int) -> None:
    """In each decoding worker: killed when the parent dies (Linux), even mid-decode; the
    default SIGTERM (the parent's own handler, inherited by the fork, would be caught as a
    task's error and ignored); Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not _alive(parent):  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _decode(args: tuple[str, int, int]) -> tuple[np.ndarray | None, str | None]:
    path, size, max_pixels = args
    try:
        return read_resized(Path(path), size, max_pixels), None
    except ImageReadError as e:
        return None, str(e)


def load_cached(
    manifest: Manifest,
    part: str,
    size: int,
    cache_dir: Path,
    workers: int = 0,
    skip_unreadable: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CachedPart:
    """Return the cached part, building it first when absent or stale. `max_pixels`: images
    declaring more are unreadable (data.max_pixels)."""
    folder = Path(cache_dir) / manifest.name / f"{part}_{size}px"
    remove_stale_builds(folder.parent)
    key = _fingerprint(manifest, part, size, max_pixels)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                return _check_unreadable(_open(folder, meta), skip_unreadable)
        except (json.JSONDecodeError, OSError, ValueError):
            log.warning("cache %s unreadable; rebuilding", folder)
    return _build(manifest, part, size, folder, key, workers, skip_unreadable, max_pixels)


_SKIP_HINT = "Or set data.skip_unreadable: true to skip such files (they are counted and listed)."


def _check_unreadable(part: CachedPart, skip_unreadable: bool) -> CachedPart:
    if part.unreadable and not skip_unreadable:
        raise DatasetError(f"{part.unreadable[0]} ({len(part.unreadable)} unreadable). {_SKIP_HINT}")
    return part


def _open(folder: Path, meta: dict) -> CachedPart:
    images = np.load(folder / "images.npy", mmap_mode="r")
    return CachedPart(
        images,
        np.asarray(meta["labels"], dtype=np.int64),
        tuple(meta["ids"]),
        tuple(meta["unreadable"]),
        folder,
    )


def _build(
    manifest: Manifest,
    part: str,
    size: int,
    folder: Path,
    key: str,
    workers: int,
    skip_unreadable: bool,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CachedPart:
    samples = manifest.part(part)
    workers = loader_workers(workers)
    log.info("caching %s/%s: %d images at %d px", manifest.name, part, len(samples), size)
    jobs = [(str(manifest.data_root / s.relpath), size, max_pixels) for s in samples]
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        arr = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(samples), size, size)
        )
        keep: list[int] = []
        bad: list[str] = []
        if workers > 0 and len(jobs) > 1:
            _decode_in_pool(jobs, workers, arr, keep, bad, skip_unreadable)
        else:
            _collect(map(_decode, jobs), arr, keep, bad, skip_unreadable)
        if len(keep) < len(samples):
            compact = np.lib.format.open_memmap(
                tmp / "kept.npy", mode="w+", dtype=np.uint8, shape=(len(keep), size, size)
            )
            compact[:] = arr[: len(keep)]
            compact.flush()
            del arr, compact
            (tmp / "kept.npy").replace(tmp / "images.npy")
        else:
            arr.flush()
            del arr
        if not keep:
            raise DatasetError(f"{manifest.name}/{part}: no readable images")
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "size": size,
            "manifest": manifest.name,
            "part": part,
            "ids": [samples[i].image_id for i in keep],
            "labels": [samples[i].label for i in keep],
            "unreadable": bad,
        }
        (tmp / "unreadable.txt").write_text("".join(f"{b}\n" for b in bad))
        (tmp / "meta.json").write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise disk_full(e, folder) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if bad:
        log.warning(
            "%s/%s: skipped %d unreadable image(s), listed in %s",
            manifest.name,
            part,
            len(bad),
            folder / "unreadable.txt",
        )
    return _open(folder, meta)


def _decode_in_pool(
    jobs: list[tuple[str, int, int]],
    workers: int,
    arr: np.ndarray,
    keep: list[int],
    bad: list[str],
    skip: bool,
) -> None:
    """Decode in worker processes that die with this one; on any failure (an unreadable
    image, SIGTERM) the jobs not started are dropped instead of decoded first."""
    ex = ProcessPoolExecutor(max_workers=workers, initializer=_worker_start, initargs=(os.getpid(),))
    try:
        _collect(ex.map(_decode, jobs, chunksize=16), arr, keep, bad, skip)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()


def _collect(results, arr: np.ndarray, keep: list[int], bad: list[str], skip: bool) -> None:
    for i, (img, err) in enumerate(results):
        if err is not None:
            if not skip:
                raise DatasetError(f"{err}. {_SKIP_HINT}")
            bad.append(err)
            continue
        arr[len(keep)] = img
        keep.append(i)
