"""Cross-dataset duplicates found by content: the same radiograph in two datasets.

RSNA Pneumonia's images are NIH ChestX-ray14 images, windowed, resampled and re-encoded as
JPEG-baseline DICOM under new identifiers. Every image of every dataset is decoded once
(`decode_image`: 8- and 16-bit PNGs and DICOMs all stand for values in [0, 1], 8-bit ones
kept as uint8) into
- an exact hash: sha256 of the canonical pixels, the image resized to 64 x 64 and quantized
  to 8 bits (`resize_to_uint8`). An 8-bit PNG and its 16-bit copy (v * 257) decode to the
  same values and hash equal; so do an RGBA copy and a re-saved file;
- a perceptual hash: the DCT pHash (of the 32 x 32 box downsample, the 8 x 8 lowest
  frequencies, one bit each: above their median or not), robust to JPEG, bit depth,
  windowing and resampling;
- a 16 x 16 thumbnail (box mean of that downsample) stored as its ranks: their correlation
  (Spearman's rho) is blind to any monotone intensity change (window, gamma, bit depth).
Two images of different datasets are twins when their exact hashes are equal, or when the
pHashes differ in at most PHASH_MAX_BITS bits AND rho >= RANK_CORR_MIN.

Measured on the synthetic twin (NIH images re-encoded like RSNA: window [0-0.05, 0.92-1],
resampled to 70-90% and back, JPEG q95; shared.prep.synth.shared_radiographs) of tests/test_overlap.py:
seed 1, 200 patients per dataset, 128 px, 50 planted pairs and 78,550 other NIH x RSNA pairs:
    pHash bits: twins 0-2 (median 0); non-twins 4-34 (1st percentile 10, median 18): 9,048
        non-twin pairs pass the pHash test alone (the synthetic radiographs look alike);
    1 - rho: twins 0.0001-0.0005; non-twins 0.0215-0.30 (1st percentile 0.037).
Two more twins (seeds 2 and 7, 290,118 non-twin pairs): no non-twin below 0.0200 in 1 - rho,
non-twins down to 2 bits in pHash.
Harsher copies of 150 NIH images (6 variants: windows up to [0.1, 0.85], gamma 0.7-1.25,
2x or 4x resampling to 1024 px, JPEG q50-95): pHash <= 8 bits, 1 - rho <= 0.0112.
So RANK_CORR_MIN = 0.985 (1 - rho <= 0.015) lies between the harshest copies (0.0112) and
the closest non-twins (0.0200), and PHASH_MAX_BITS = 12, 4 bits above the harshest copies
and far below the non-twins' median, is the second, independent test. Real radiographs
differ more than synthetic ones; two alike images of one patient may pass, which links the
same patient: what the split's patient-level policy wants anyway (shared.prep.leakage).
Constant images (blank, fully clipped) have no rank correlation and are skipped.

The hashes are cached per dataset in `<splits>/hashes/<dataset>.npz`, keyed by each file's
size and mtime: a re-split decodes only new or changed files. The images are hashed in a
process pool (data.workers; -1: one per core) with progress lines (count, rate, ETA), and
the cache is written (atomically) every SAVE_EVERY images or SAVE_S seconds, so a killed
run loses at most that much.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zipfile
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.config.data import loader_workers
from shared.data.images import decode_image, resize_to_uint8
from shared.data.pool import Progress, run_jobs
from shared.data.records import DatasetIndex
from shared.errors import ImageReadError
from shared.io import atomic_path

log = logging.getLogger(__name__)
HASH_VERSION = 1
CANONICAL_SIZE = 64
PHASH_MAX_BITS = 12
RANK_CORR_MIN = 0.985
THUMB = 16
_N = 32
# Orthonormal DCT-II basis, its 8 lowest frequencies: pHash = top-left 8 x 8 of C A C^T.
_K, _I = np.meshgrid(np.arange(8), np.arange(_N), indexing="ij")
_DCT = (np.sqrt(np.where(_K == 0, 1.0, 2.0) / _N) * np.cos(np.pi * (2 * _I + 1) * _K / (2 * _N))).astype(
    np.float64
)
SAVE_EVERY = 2000  # images hashed between two saves of the hash cache
SAVE_S = 30.0  # ... or seconds
_PROGRESS_CHUNKS = 40  # chunks matched between two progress lines


@dataclass(frozen=True)
class Hashes:
    """The hashes of one dataset's hashable images (readable and not constant)."""

    dataset: str
    ids: tuple[str, ...]
    exact: np.ndarray  # S32: sha256 of the canonical pixels
    phash: np.ndarray  # uint64
    thumb: np.ndarray  # float32 [N, THUMB * THUMB]: the thumbnail's ranks, zero mean, unit norm
    skipped: int  # unreadable or constant images


@dataclass(frozen=True)
class Twin:
    """One image of dataset `a` that is the same radiograph as one image of dataset `b`."""

    a: str
    a_id: str
    b: str
    b_id: str
    method: str  # "exact" or "perceptual"
    bits: int  # pHash Hamming distance
    corr: float  # rank correlation of the thumbnails


def image_hashes(img: np.ndarray) -> tuple[bytes, int, np.ndarray] | None:
    """(sha256 of the canonical pixels, 64-bit pHash, float16 thumbnail) of a [0, 1] float
    image, or of a uint8 one standing for v / 255 (`decode_image`: 8-bit files never become
    float; the same hashes, up to float rounding in the box downsample); None for a constant
    image."""
    exact = hashlib.sha256(resize_to_uint8(img, CANONICAL_SIZE).tobytes()).digest()
    if img.dtype == np.uint8:
        small = Image.fromarray(np.ascontiguousarray(img), mode="L").convert("F")
        a = np.asarray(small.resize((_N, _N), Image.Resampling.BOX), dtype=np.float64) / 255.0
    else:
        small = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
        a = np.asarray(small.resize((_N, _N), Image.Resampling.BOX), dtype=np.float64)
    low = (_DCT @ a @ _DCT.T).ravel()
    bits = np.packbits(low > np.median(low))
    thumb = _ranks(a.reshape(THUMB, _N // THUMB, THUMB, _N // THUMB).mean(axis=(1, 3)).ravel())
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    if norm < 1e-6:
        return None
    return exact, int(bits.view(">u8")[0]), (thumb / norm).astype(np.float16)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of `x` (0-based), ties given their mean rank (clipped regions tie)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    first = np.flatnonzero(starts)
    mean_rank = first + (np.diff(np.r_[first, len(x)]) - 1) / 2.0
    out = np.empty(len(x), dtype=np.float64)
    out[order] = mean_rank[np.cumsum(starts) - 1]
    return out


def _hash_file(path: str) -> tuple[bytes, int, np.ndarray] | None:
    try:
        return image_hashes(decode_image(Path(path)))
    except ImageReadError:
        return None  # the cache and `data check` report unreadable files


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return -1, -1


def _load_cache(path: Path) -> dict[str, tuple[tuple[int, int], bool, bytes, int, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != HASH_VERSION:
                return {}
            rows = zip(
                *(z[k].tolist() for k in ("relpath", "stat", "ok", "exact", "phash")), z["thumb"], strict=True
            )
            return {r: ((s[0], s[1]), ok, e, int(p), t) for r, s, ok, e, p, t in rows}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return {}  # rebuilt


def hash_dataset(index: DatasetIndex, cache_file: Path, workers: int = 0) -> Hashes:
    """Hash every image of `index`, decoding only files not in `cache_file` (size + mtime).
    The cache is saved every SAVE_EVERY images or SAVE_S seconds (and when no file finished
    for a second): a run killed half-way and started again decodes only what was not saved."""
    cached = _load_cache(cache_file) if cache_file.exists() else {}
    samples = index.samples
    stats = [_stat(index.root / s.relpath) for s in samples]
    rows: list[tuple[bool, bytes, int, np.ndarray]] = []
    done = np.zeros(len(samples), dtype=bool)
    todo = []
    for i, s in enumerate(samples):
        hit = cached.get(s.relpath)
        if hit is not None and hit[0] == stats[i]:
            rows.append(hit[1:])
            done[i] = True
        else:
            rows.append((False, b"", 0, np.zeros(THUMB * THUMB, np.float16)))
            todo.append(i)
    if todo:
        log.info("hashing %d of %d %s images (the others are cached)", len(todo), len(samples), index.name)
        progress = Progress(log, f"hashing {index.name}", len(todo))
        relpaths = [s.relpath for s in samples]

        def save() -> None:
            keep = np.flatnonzero(done).tolist()
            _save_cache(
                cache_file, [relpaths[i] for i in keep], [stats[i] for i in keep], [rows[i] for i in keep]
            )

        paths = [str(index.root / samples[i].relpath) for i in todo]
        unsaved, saved_at = 0, time.monotonic()
        try:
            with closing(run_jobs(_hash_file, paths, loader_workers(workers))) as results:
                for item in results:
                    if item is not None:
                        k, h = item
                        i = todo[k]
                        rows[i] = (False, b"", 0, rows[i][3]) if h is None else (True, *h)
                        done[i] = True
                        unsaved += 1
                        progress.add()
                    due = item is None or unsaved >= SAVE_EVERY or time.monotonic() - saved_at >= SAVE_S
                    if unsaved and due:  # also when nothing finished for a second: a stalled file
                        save()
                        unsaved, saved_at = 0, time.monotonic()
        except BaseException:
            if unsaved:  # what is done survives an error, Ctrl-C or SIGTERM
                save()
            raise
        save()
        progress.finish()
    ok = [i for i, r in enumerate(rows) if r[0]]
    thumb = np.array([rows[i][3] for i in ok], dtype=np.float32).reshape(len(ok), THUMB * THUMB)
    return Hashes(
        index.name,
        tuple(samples[i].image_id for i in ok),
        np.array([rows[i][1] for i in ok], dtype="S32"),
        np.array([rows[i][2] for i in ok], dtype=np.uint64),
        thumb / np.maximum(np.linalg.norm(thumb, axis=1, keepdims=True), 1e-6),
        len(samples) - len(ok),
    )


def _save_cache(
    path: Path,
    relpaths: list[str],
    stats: list[tuple[int, int]],
    rows: list[tuple[bool, bytes, int, np.ndarray]],
) -> None:
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            version=np.int64(HASH_VERSION),
            relpath=np.array(relpaths, dtype=str),
            stat=np.array(stats, dtype=np.int64).reshape(len(stats), 2),
            ok=np.array([r[0] for r in rows], dtype=bool),
            exact=np.array([r[1] for r in rows], dtype="S32"),
            phash=np.array([r[2] for r in rows], dtype=np.uint64),
            thumb=np.array([r[3] for r in rows], dtype=np.float16).reshape(len(rows), THUMB * THUMB),
        )


def distances(a: Hashes, b: Hashes, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """pHash Hamming distances and thumbnail rank correlations of a's images `rows` against b's."""
    bits = np.bitwise_count(a.phash[rows, None] ^ b.phash[None, :])
    return bits, a.thumb[rows] @ b.thumb.T


def find_twins(a: Hashes, b: Hashes, chunk: int = 256) -> list[Twin]:
    """Every (image of a, image of b) pair that is the same radiograph."""
    exact_b: dict[bytes, list[int]] = {}
    for j, e in enumerate(b.exact.tolist()):
        exact_b.setdefault(e, []).append(j)
    out: list[Twin] = []
    for start in range(0, len(a.ids), chunk):
        if start and start % (chunk * _PROGRESS_CHUNKS) == 0:
            log.info("matching %s against %s: %d/%d images", a.dataset, b.dataset, start, len(a.ids))
        rows = slice(start, min(start + chunk, len(a.ids)))
        d, c = distances(a, b, rows)
        match = (d <= PHASH_MAX_BITS) & (c >= RANK_CORR_MIN)
        for k, e in enumerate(a.exact[rows].tolist()):
            match[k, exact_b.get(e, [])] = True
        for i, j in zip(*np.nonzero(match), strict=True):
            k = start + i
            how = "exact" if a.exact[k] == b.exact[j] else "perceptual"
            out.append(Twin(a.dataset, a.ids[k], b.dataset, b.ids[j], how, int(d[i, j]), float(c[i, j])))
    return out


def cross_dataset_twins(hashes: Iterable[Hashes]) -> list[Twin]:
    """The twins of every pair of datasets (in the order given)."""
    hs = list(hashes)
    return [t for i, a in enumerate(hs) for b in hs[i + 1 :] for t in find_twins(a, b)]


def cache_path(splits_dir: Path, dataset: str) -> Path:
    return Path(splits_dir) / "hashes" / f"{dataset}.npz"
