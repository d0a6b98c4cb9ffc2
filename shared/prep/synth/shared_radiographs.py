"""Shared radiographs in the synthetic twin: NIH images re-released as RSNA patients.

The real RSNA Pneumonia images are NIH ChestX-ray14 images, windowed, resampled and
re-encoded as JPEG-baseline DICOM under new identifiers. The twin plants the same kind of
copies so the overlap detector can be measured against known pairs, and stores a few NIH
PNGs as 16-bit to exercise the 8/16-bit path. The planted pairs are written to
`<out>/planted_twins.csv` (`patientId,Image Index`): ground truth for tests only, outside
both dataset roots, and in the mapping-file format `data.overlap.mapping_file` accepts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PLANTED_FILE = "planted_twins.csv"


@dataclass(frozen=True)
class NihImage:
    """What the NIH writer drew for one image: enough to re-release it as an RSNA patient."""

    name: str
    relpath: str
    positive: bool
    distractor: str | None
    boxes: tuple[tuple[float, float, float, float], ...]  # x, y, w, h of each opacity
    age: int
    sex: str
    view: str


def rsna_copy(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An NIH image the way RSNA re-released it: a mild contrast window and a resampling
    (RSNA's images are 1024 px like NIH's; here down to 70-90% and back up), in [0, 1]."""
    lo, hi = rng.uniform(0.0, 0.05), rng.uniform(0.92, 1.0)
    img = np.clip((pixels - lo) / (hi - lo), 0.0, 1.0)
    size = img.shape[0]
    small = max(8, round(size * rng.uniform(0.7, 0.9)))
    pil = Image.fromarray(np.rint(img * 255.0).astype(np.uint8), mode="L")
    pil = pil.resize((small, small), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.float32) / 255.0


def choose_twins(
    n_rsna: int, nih: list[NihImage], fraction: float, rng: np.random.Generator
) -> dict[int, NihImage]:
    """RSNA patient index -> the NIH image it re-releases (distinct images, any patients)."""
    n = min(round(n_rsna * fraction), n_rsna, len(nih))
    if n <= 0:
        return {}
    rsna_idx = sorted(rng.choice(n_rsna, size=n, replace=False).tolist())
    nih_idx = rng.choice(len(nih), size=n, replace=False).tolist()
    return {r: nih[k] for r, k in zip(rsna_idx, nih_idx, strict=True)}


def to_16bit(path: Path) -> None:
    """Rewrite an 8-bit PNG as 16-bit (v * 257: the same radiograph, other bit depth)."""
    with Image.open(path) as im:
        u8 = np.asarray(im.convert("L"), dtype=np.uint16)
    Image.fromarray(u8 * 257).save(path)


def store_16bit(
    root: Path, nih: list[NihImage], planted: list[NihImage], fraction: float, rng: np.random.Generator
) -> list[str]:
    """Store `fraction` of the NIH images (at least one planted one) as 16-bit PNGs."""
    k = min(len(nih), round(len(nih) * fraction))
    chosen = {nih[i].name: nih[i] for i in rng.choice(len(nih), size=k, replace=False).tolist()}
    if planted and fraction > 0 and not any(p.name in chosen for p in planted):
        chosen[planted[0].name] = planted[0]
    for rec in chosen.values():
        to_16bit(root / rec.relpath)
    return sorted(chosen)


def write_planted(path: Path, twins: dict[str, NihImage]) -> None:
    """The ground truth: one row per planted pair (RSNA patientId, NIH image name)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patientId", "Image Index"])
        w.writerows([pid, rec.name] for pid, rec in sorted(twins.items()))
