"""Preprocessing cache: decode and resize once, then read uint8 arrays from disk.

One folder per (manifest, part, image size) holding `images.npy` (N x S x S uint8, read
as a memory map), `meta.json` (labels, ids, the fingerprint of every source file) and
`unreadable.txt`. The cache is rebuilt when a source file (size or mtime) or the image
size changes. Writes are atomic: a half-built cache is never mistaken for a valid one.

A build decodes in a process pool (data.workers; -1: one per core) into
`<part>_<size>px.tmp<PID>`, one row per source file, and saves which rows are done (with
each file's size and mtime) every SAVE_EVERY images or SAVE_S seconds, and whenever no
file finished for a second; when it completes the folder is renamed into place. A build
whose process was killed (or failed) leaves that folder: the next build of the same part
takes it over and decodes only the files it had not saved (or that changed since), and
the result is the same as an uninterrupted build's. A killed build's folder that saved
nothing is removed at the next start. Its decoding workers die with it (a parent-death
signal on Linux) and do not outlive a SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config.data import DEFAULT_MAX_PIXELS, loader_workers
from shared.data.images import read_resized
from shared.data.manifest import Manifest
from shared.data.pool import Progress, alive, run_jobs
from shared.errors import DatasetError, ImageReadError
from shared.io import DISK_FULL, atomic_path, disk_full

log = logging.getLogger(__name__)
CACHE_VERSION = 1
# a build in progress (or the debris of a killed one), and its last step
_TMP = re.compile(r"(.+px)\.tmp(\d+)(\.final)?")
PROGRESS_FILE = "progress.npz"  # in a build's folder: the rows decoded so far
SAVE_EVERY = 1000  # images decoded between two saves of a build's progress
SAVE_S = 30.0  # ... or seconds
Stat = tuple[int, int]  # a source file's (size, mtime_ns); (-1, -1) when absent


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


def _stats(manifest: Manifest, part: str) -> list[Stat]:
    out = []
    for s in manifest.part(part):
        try:
            st = (manifest.data_root / s.relpath).stat()
            out.append((st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append((-1, -1))
    return out


def _fingerprint(
    manifest: Manifest,
    part: str,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stats: list[Stat] | None = None,
) -> str:
    # a non-default pixel limit may refuse other files: it keys the cache (the default keeps
    # the caches built before the limit existed)
    limit = "" if max_pixels == DEFAULT_MAX_PIXELS else f":max{max_pixels}"
    h = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{manifest.dataset}:{part}{limit}".encode())
    for s, st in zip(manifest.part(part), stats or _stats(manifest, part), strict=True):
        if st[0] < 0:
            h.update(f"{s.relpath}:{s.label}:absent\n".encode())
        else:
            h.update(f"{s.relpath}:{s.label}:{st[0]}:{st[1]}\n".encode())
    return h.hexdigest()


def _plan(manifest: Manifest, part: str, size: int, max_pixels: int) -> str:
    """What a build's rows are: the files in order, the size and the pixel limit (not their
    stats: a resumed build checks those row by row)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{max_pixels}\n".encode())
    for s in manifest.part(part):
        h.update(f"{s.relpath}\n".encode())
    return h.hexdigest()


def remove_stale_builds(folder: Path) -> None:
    """Remove the temporary folders of killed builds (their process is gone) that saved
    nothing to resume from; those that did are taken over by the next build of their part."""
    if not folder.is_dir():
        return
    for tmp in folder.iterdir():
        m = _TMP.fullmatch(tmp.name)
        if not m or not tmp.is_dir() or int(m.group(2)) == os.getpid() or alive(int(m.group(2))):
            continue
        if m.group(3) or not (tmp / PROGRESS_FILE).is_file():
            log.info("removing %s, left by a cache build that was killed", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _take_over(folder: Path) -> Path:
    """This process's build folder for `folder`: a killed build's (renamed) when one is left."""
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    if (tmp / PROGRESS_FILE).is_file():  # this process's own, after a failure
        return tmp
    for old in sorted(folder.parent.glob(f"{folder.name}.tmp*")):
        m = _TMP.fullmatch(old.name)
        if not m or m.group(1) != folder.name or m.group(3) or old == tmp or alive(int(m.group(2))):
            continue
        try:
            if (old / PROGRESS_FILE).is_file() and not (tmp / PROGRESS_FILE).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                old.rename(tmp)  # atomic: of two builds starting at once, one takes it
                log.info("resuming the cache build that %s left", old.name)
            else:
                shutil.rmtree(old)
        except FileNotFoundError:  # another build took it first
            continue
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


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
    stats = _stats(manifest, part)
    key = _fingerprint(manifest, part, size, max_pixels, stats)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                return _check_unreadable(_open(folder, meta), skip_unreadable)
        except (json.JSONDecodeError, OSError, ValueError):
            log.warning("cache %s unreadable; rebuilding", folder)
    build = _Build(manifest, part, size, folder, stats, max_pixels)
    return build.run(key, workers, skip_unreadable)


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


def _decode(args: tuple[str, int, int]) -> tuple[np.ndarray | None, str | None]:
    path, size, max_pixels = args
    try:
        return read_resized(Path(path), size, max_pixels), None
    except ImageReadError as e:
        return None, str(e)


class _Build:
    """One build of a part: its rows (one per source file, by position in the part), those
    done with their file's stat, the errors of the unreadable ones."""

    def __init__(
        self, manifest: Manifest, part: str, size: int, folder: Path, stats: list[Stat], max_pixels: int
    ) -> None:
        self.manifest, self.part, self.size, self.folder = manifest, part, size, folder
        self.samples = manifest.part(part)
        self.stats, self.max_pixels = stats, max_pixels
        self.plan = _plan(manifest, part, size, max_pixels)
        n = len(self.samples)
        self.done = np.zeros(n, dtype=bool)
        self.bad: dict[int, str] = {}
        self.tmp = folder  # set by run()
        self.arr: np.memmap  # the rows, opened by _resume()

    def run(self, key: str, workers: int, skip: bool) -> CachedPart:
        name = f"{self.manifest.name}/{self.part}"
        try:
            self.tmp = _take_over(self.folder)
            resumed = self._resume()
            todo = np.flatnonzero(~self.done).tolist()
            log.info(
                "caching %s: %d images at %d px%s",
                name,
                len(self.samples),
                self.size,
                f", {resumed} decoded by an interrupted build, decoding the other {len(todo)}"
                if resumed
                else "",
            )
            self._decode(todo, loader_workers(workers), skip, Progress(log, f"caching {name}", len(todo)))
            return self._finish(key)
        except OSError as e:
            if e.errno in DISK_FULL:
                raise disk_full(e, self.folder) from None
            raise

    def _resume(self) -> int:
        """Take the saved rows whose file is unchanged; start afresh when nothing matches."""
        n, path = len(self.samples), self.tmp / "images.npy"
        try:
            with np.load(self.tmp / PROGRESS_FILE, allow_pickle=False) as z:
                if str(z["plan"]) != self.plan:
                    raise ValueError("another plan")
                same = np.all(z["stat"] == np.asarray(self.stats, dtype=np.int64).reshape(n, 2), axis=1)
                done = z["done"] & same
                bad = dict(zip(z["bad_index"].tolist(), z["bad_error"].tolist(), strict=True))
            arr = np.load(path, mmap_mode="r+")
            if (
                not isinstance(arr, np.memmap)
                or arr.shape != (n, self.size, self.size)
                or arr.dtype != np.uint8
            ):
                raise ValueError("another shape")
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            (self.tmp / PROGRESS_FILE).unlink(missing_ok=True)
            self.arr = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.uint8, shape=(n, self.size, self.size)
            )
            return 0
        self.arr, self.done = arr, done
        self.bad = {i: e for i, e in bad.items() if done[i]}
        return int(done.sum())

    def _save(self) -> None:
        self.arr.flush()
        with atomic_path(self.tmp / PROGRESS_FILE, ".npz") as tmp, open(tmp, "wb") as fh:
            bad = sorted(self.bad.items())
            np.savez(
                fh,
                plan=np.array(self.plan),
                done=self.done,
                stat=np.asarray(self.stats, dtype=np.int64).reshape(len(self.samples), 2),
                bad_index=np.array([i for i, _ in bad], dtype=np.int64),
                bad_error=np.array([e for _, e in bad], dtype=str),
            )

    def _decode(self, todo: list[int], workers: int, skip: bool, progress: Progress) -> None:
        root = self.manifest.data_root
        jobs = [(str(root / self.samples[i].relpath), self.size, self.max_pixels) for i in todo]
        unsaved, saved_at = 0, time.monotonic()
        try:
            with closing(run_jobs(_decode, jobs, workers)) as results:
                for item in results:
                    if item is not None:
                        k, (img, err) = item
                        self._row(todo[k], img, err, skip)
                        unsaved += 1
                        progress.add()
                    due = item is None or unsaved >= SAVE_EVERY or time.monotonic() - saved_at >= SAVE_S
                    if unsaved and due:  # also when nothing finished for a second: a stalled file
                        self._save()
                        unsaved, saved_at = 0, time.monotonic()
        except BaseException:
            if unsaved:  # what is done survives an error, Ctrl-C or SIGTERM
                self._save()
            raise
        if todo:
            progress.finish()

    def _row(self, i: int, img: np.ndarray | None, err: str | None, skip: bool) -> None:
        if err is not None:
            if not skip:
                raise DatasetError(f"{err}. {_SKIP_HINT}")
            self.bad[i] = err
        else:
            self.arr[i] = img
        self.done[i] = True

    def _finish(self, key: str) -> CachedPart:
        keep = np.flatnonzero(~np.isin(np.arange(len(self.samples)), list(self.bad)))
        if not len(keep):
            self._save()
            raise DatasetError(f"{self.manifest.name}/{self.part}: no readable images")
        final = self.folder.with_name(f"{self.folder.name}.tmp{os.getpid()}.final")
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir()
        try:
            if len(keep) < len(self.samples):
                compact = np.lib.format.open_memmap(
                    final / "images.npy", mode="w+", dtype=np.uint8, shape=(len(keep), self.size, self.size)
                )
                for b in range(0, len(keep), 1024):  # in blocks: the part may not fit in memory
                    compact[b : b + 1024] = self.arr[keep[b : b + 1024]]
                compact.flush()
                del compact
            else:
                self.arr.flush()
                (self.tmp / "images.npy").rename(final / "images.npy")
            bad = [e for _, e in sorted(self.bad.items())]
            meta = {
                "version": CACHE_VERSION,
                "key": key,
                "size": self.size,
                "manifest": self.manifest.name,
                "part": self.part,
                "ids": [self.samples[i].image_id for i in keep.tolist()],
                "labels": [self.samples[i].label for i in keep.tolist()],
                "unreadable": bad,
            }
            (final / "unreadable.txt").write_text("".join(f"{b}\n" for b in bad))
            (final / "meta.json").write_text(json.dumps(meta))
            if self.folder.exists():
                shutil.rmtree(self.folder)
            final.replace(self.folder)
        finally:
            shutil.rmtree(final, ignore_errors=True)
        del self.arr
        shutil.rmtree(self.tmp, ignore_errors=True)
        if bad:
            log.warning(
                "%s/%s: skipped %d unreadable image(s), listed in %s",
                self.manifest.name,
                self.part,
                len(bad),
                self.folder / "unreadable.txt",
            )
        return _open(self.folder, meta)
