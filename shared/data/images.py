"""Decoding one image file (PNG/JPEG or DICOM) into a float32 grayscale array in [0, 1].

Every reader refuses an image whose header declares more than `max_pixels` pixels before
it decodes anything (data.max_pixels): a small compressed file can declare gigabytes.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.config.data import DEFAULT_MAX_PIXELS
from shared.errors import ImageReadError

if TYPE_CHECKING:
    import pydicom

# pydicom (and shared.data.dicomhead, which imports it) are imported where a file is decoded:
# a ClientApp process whose cache is built never decodes, and pydicom costs it ~0.1 s to import.

_DICOM_REQUIRED = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation")
# pydicom logs each decoder failure with a full traceback through its own logger, even when
# the caller catches the error; the failure is reported as an ImageReadError instead.
logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a 2-D float32 array in [0, 1] (DICOM by suffix, else Pillow)."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return read_dicom(path, max_pixels)
    return read_raster(path, max_pixels)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def read_raster(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """PNG/JPEG via Pillow; RGB(A) is converted to grayscale, 16-bit PNG scaled by 65535."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 M pixels; our own limit, checked below, decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > max_pixels:
                from shared.data.dicomhead import too_many_pixels

                raise ImageReadError(str(path), too_many_pixels(f"{w}x{h}", w * h, max_pixels))
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                return np.clip(arr / 65535.0, 0.0, 1.0)
            gray = im if im.mode == "L" else im.convert("L")
            return np.asarray(gray, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise ImageReadError(
            str(path), "file is listed but absent; restore it or remove it from the CSV"
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            str(path), f"Pillow refuses it as a decompression bomb ({_one_line(e)}); replace the file"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(str(path), f"not a readable image ({_one_line(e)}); replace the file") from None


def _usable_window(ds: pydicom.Dataset) -> bool:
    """A VOI LUT sequence, or a window whose width is at least 1 (PS3.3 C.11.2.1.2): a width
    of 0 (seen in the wild) defines no window, so the stored range is used instead."""
    from pydicom.multival import MultiValue

    if "VOILUTSequence" in ds:
        return True
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return False
    width = ds.WindowWidth
    first = width[0] if isinstance(width, MultiValue) else width
    try:
        return float(first) >= 1
    except (TypeError, ValueError):
        return False


def read_dicom(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """DICOM via pydicom: modality LUT, VOI LUT/window, MONOCHROME1 inversion, range scaling.

    The result is scaled by the range the stored bits can take after the LUTs, so 8-, 12-
    and 16-bit images all land in [0, 1] the way the LUTs intend.
    """
    import pydicom.pixels  # binds pydicom too
    from pydicom.errors import InvalidDicomError

    from shared.data.dicomhead import check_dicom_header

    try:
        problem = check_dicom_header(path, max_pixels)
        if problem:
            raise ImageReadError(str(path), problem)
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise ImageReadError(
            str(path), "file is listed but absent; restore it or remove it from the CSV"
        ) from None
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ImageReadError(
            str(path), f"not a readable DICOM file ({_one_line(e)}); replace the file"
        ) from None
    # A truncated file can come back as a partial dataset without an error: check it.
    missing = [t for t in _DICOM_REQUIRED if t not in ds]
    if "PixelData" not in ds:
        missing.append("PixelData")
    if missing:
        raise ImageReadError(
            str(path), f"DICOM is missing {', '.join(missing)} (truncated?); replace the file"
        )
    try:
        stored = ds.pixel_array
    except Exception as e:  # pydicom raises ValueError/RuntimeError/others by codec
        raise ImageReadError(
            str(path), f"pixel data cannot be decoded ({_one_line(e)}); replace the file"
        ) from None
    if stored.ndim != 2:
        if stored.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
            stored = stored[0]  # multi-frame: take the first frame
        else:
            raise ImageReadError(str(path), f"expected a grayscale image, got shape {stored.shape}")
    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo_in, hi_in = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    bounds = np.array([lo_in, hi_in], dtype=stored.dtype if signed else np.int64)
    arr = pydicom.pixels.apply_modality_lut(stored, ds)
    bounds = pydicom.pixels.apply_modality_lut(bounds, ds)
    if _usable_window(ds):
        arr = pydicom.pixels.apply_voi_lut(arr, ds)
        bounds = pydicom.pixels.apply_voi_lut(bounds, ds)
    lo, hi = float(np.min(bounds)), float(np.max(bounds))
    if hi <= lo:
        raise ImageReadError(str(path), "degenerate intensity range after the LUTs")
    out = np.clip((arr.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32, copy=False)


def resize_to_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a [0,1] float image to size x size (area/bicubic) and quantize to uint8."""
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if u8.shape == (size, size):
        return u8
    pil = Image.fromarray(u8, mode="L")
    # Reduce by an integer factor first (fast box filter), then a bicubic finish.
    factor = max(1, min(pil.size) // (2 * size))
    if factor > 1:
        pil = pil.reduce(factor)
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
