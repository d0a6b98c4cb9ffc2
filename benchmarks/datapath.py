"""The data path at 1024 px: CPU time per image of the cache build's decode+resize
(shared.data.images.read_resized) and of the overlap hashing, against a bare decode+resize
of the same files (Pillow for PNG, pydicom with Pillow's JPEG decoder for JPEG Baseline
DICOM, the same box reduce and bicubic finish), and the float round trip it replaced.
CPU time (process_time, best of 3), so other load on the machine does not count.

    .venv/bin/python -m benchmarks.datapath [--files 12] [--size 224]"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from shared.data.images import read_image, read_resized, resize_to_uint8
from shared.prep.overlap import image_hashes
from shared.prep.synth.dicom import dicom_bytes


def make_files(out: Path, n: int) -> None:
    """n radiograph-like 1024 px images as 8-bit PNG and as RSNA-like JPEG Baseline DICOM."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:1024] / 1024
    for i in range(n):
        img = np.clip(0.5 + 0.3 * np.sin(6 * xx + i) * np.cos(4 * yy) + rng.normal(0, 0.05, xx.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8), mode="L").save(out / f"{i}.png")
        (out / f"{i}.dcm").write_bytes(dicom_bytes(img.astype(np.float32), f"p{i}", 40, "M", "PA"))


def bare(path: Path, size: int) -> np.ndarray:
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        ds.pixel_array_options(decoding_plugin="pillow")
        im = Image.fromarray(ds.pixel_array, mode="L")
    else:
        im = Image.open(path)
        im.load()
    factor = max(1, min(im.size) // (2 * size))
    if factor > 1:
        im = im.reduce(factor)
    return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC))


def cpu_ms(fn: Callable[[Path], object], files: list[Path], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for p in files:
            fn(p)
        best = min(best, (time.process_time() - t) / len(files))
    return best * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=12)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_files(Path(tmp), args.files)
        print("format | bare ms | cache build ms (ratio) | float round trip ms (ratio) | hashing ms (ratio)")
        for suffix in (".png", ".dcm"):
            files = sorted(Path(tmp).glob("*" + suffix))
            b = cpu_ms(lambda f: bare(f, args.size), files)
            ours = cpu_ms(lambda f: read_resized(f, args.size), files)
            old = cpu_ms(lambda f: resize_to_uint8(read_image(f), args.size), files)
            hashed = cpu_ms(lambda f: image_hashes(read_image(f)), files)
            print(
                f"{suffix[1:]} | {b:.2f} | {ours:.2f} ({ours / b:.2f}x) | {old:.2f} ({old / b:.2f}x) | "
                f"{hashed:.2f} ({hashed / b:.2f}x)"
            )


if __name__ == "__main__":
    main()
