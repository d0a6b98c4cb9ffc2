"""One synthetic radiograph: a chest-like image and the boxes of its pneumonia opacities.

Body, dark lung fields, ribs, mediastinum, noise and varied exposure; pneumonia is a patchy
opacity inside a lung; negatives may carry a distractor (nodule, effusion, enlarged heart).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Lesion:
    """One pneumonia opacity, as a box in pixel coordinates."""

    x: float
    y: float
    w: float
    h: float


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bicubic upsampling of a coarse random grid)."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(coarse, mode="L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def chest_image(
    rng: np.random.Generator, size: int, pneumonia: bool, distractor: str | None
) -> tuple[np.ndarray, list[Lesion]]:
    """One synthetic radiograph in [0, 1] and the boxes of its opacities."""
    g = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    img = np.full((size, size), 0.08 + 0.05 * rng.random(), dtype=np.float32)
    body = ((xx / 0.9) ** 2 + ((yy - 0.05) / 1.0) ** 2) < 1.0
    img += 0.45 * body
    lung_cx = 0.36 + 0.04 * rng.standard_normal()
    lungs = []
    for side in (-1, 1):
        cx, cy = side * lung_cx, -0.05 + 0.03 * rng.standard_normal()
        rx, ry = 0.26 + 0.02 * rng.random(), 0.55 + 0.05 * rng.random()
        m = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) < 1.0
        lungs.append((cx, cy, rx, ry, m))
        img -= 0.28 * m
    heart_r = 0.22 if distractor == "Cardiomegaly" else 0.15
    heart = (((xx + 0.08) / (heart_r * 1.2)) ** 2 + ((yy - 0.3) / heart_r) ** 2) < 1.0
    img = np.where(heart, np.maximum(img, 0.45), img)
    img += 0.10 * (np.abs(xx) < 0.08) * body  # spine / mediastinum
    phase = rng.random() * np.pi
    ribs = np.maximum(0.0, np.sin((yy + 0.25 * xx**2) * 17.0 + phase)) ** 6
    img += 0.08 * ribs * (lungs[0][4] | lungs[1][4])
    img += 0.10 * (_smooth_noise(rng, size, 6) - 0.5)

    lesions: list[Lesion] = []
    if pneumonia:
        for _ in range(int(rng.integers(1, 3))):
            cx, cy, rx, ry, mask = lungs[int(rng.integers(0, 2))]
            lx = cx + rx * 0.5 * rng.uniform(-1, 1)
            ly = cy + ry * 0.55 * rng.uniform(-1, 1)
            r = rng.uniform(0.12, 0.22)
            blob = np.exp(-(((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * r**2)))
            texture = 0.4 + 0.6 * _smooth_noise(rng, size, 24)
            img += rng.uniform(0.25, 0.4) * blob * texture * mask
            half = 2 * r * size / 2
            px, py = (lx + 1) * size / 2, (ly + 1) * size / 2
            lesions.append(Lesion(max(0.0, px - half), max(0.0, py - half), 2 * half, 2 * half))
    if distractor == "Nodule":
        cx, cy, rx, ry, _mask = lungs[int(rng.integers(0, 2))]
        nx, ny = cx + rx * 0.5 * rng.uniform(-1, 1), cy + ry * 0.5 * rng.uniform(-1, 1)
        img += 0.3 * np.exp(-(((xx - nx) ** 2 + (yy - ny) ** 2) / (2 * 0.025**2)))
    elif distractor == "Effusion":
        _cx, lung_cy, _rx, lung_ry, lung_mask = lungs[int(rng.integers(0, 2))]
        base = np.clip((yy - (lung_cy + lung_ry * 0.35)) / 0.2, 0.0, 1.0)
        img += 0.2 * base * lung_mask

    img += 0.025 * rng.standard_normal((size, size)).astype(np.float32)
    lo, hi = rng.uniform(0.0, 0.08), rng.uniform(0.85, 1.0)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    return np.clip(lo + (hi - lo) * img, 0.0, 1.0), lesions
