"""Decoding one image file (PNG/JPEG or DICOM) into a grayscale array: float32 in [0, 1]
(`read_image`), or straight to the cache's uint8 at a size (`read_resized`: an 8-bit image
that needs no lookup table never becomes float on the way).

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


def decode_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a 2-D grayscale array: uint8 where the file holds 8-bit values that
    map to [0, 1] as v / 255 (8-bit PNG/JPEG, 8-bit DICOM without LUTs), float32 in [0, 1]
    otherwise. DICOM by suffix, else Pillow."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return _decode_dicom(path, max_pixels)
    return _decode_raster(path, max_pixels)


def as_unit_float(img: np.ndarray) -> np.ndarray:
    """A decoded image as float32 in [0, 1] (uint8 v becomes v / 255)."""
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a 2-D float32 array in [0, 1] (DICOM by suffix, else Pillow)."""
    return as_unit_float(decode_image(path, max_pixels))


def read_resized(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` and resize it to the cache's uint8 size x size; the same pixels as
    resize_to_uint8(read_image(path), size), without the float round trip for 8-bit files."""
    return resize_to_uint8(decode_image(path, max_pixels), size)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def read_raster(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """PNG/JPEG via Pillow as float32 in [0, 1]; RGB(A) is converted to grayscale, 16-bit
    PNG scaled by 65535."""
    return as_unit_float(_decode_raster(path, max_pixels))


def _decode_raster(path: Path, max_pixels: int) -> np.ndarray:
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
            return np.asarray(gray, dtype=np.uint8)
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
    """DICOM via pydicom as float32 in [0, 1] (the order of the steps: _decode_dicom)."""
    return as_unit_float(_decode_dicom(path, max_pixels))


def _decode_dicom(path: Path, max_pixels: int) -> np.ndarray:
    """DICOM via pydicom (every transfer syntax its decoders and pylibjpeg's plugins take),
    in this order: (1) the stored values, first frame of a multi-frame file; (2) the modality
    LUT (RescaleSlope/RescaleIntercept, or a Modality LUT Sequence); (3) the VOI LUT (a VOI
    LUT Sequence, or WindowCenter/WindowWidth when the width is at least 1); (4) scaling to
    [0, 1] by the range the stored bits can take after those LUTs, so 8-, 12- and 16-bit
    images all land in [0, 1] the way the LUTs intend; (5) MONOCHROME1 inverted (1 - v).
    An 8-bit image with none of the LUTs comes back as its uint8 values (the same as
    steps 4-5 would give, times 255); everything else as float32."""
    import pydicom.pixels  # binds pydicom too
    from pydicom.errors import InvalidDicomError

    from shared.data.dicomhead import read_dicom_header

    try:
        ds, problem = read_dicom_header(path, max_pixels)
        if problem:
            raise ImageReadError(str(path), problem)
    except FileNotFoundError:
        raise ImageReadError(
            str(path), "file is listed but absent; restore it or remove it from the CSV"
        ) from None
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ImageReadError(
            str(path), f"not a readable DICOM file ({_one_line(e)}); replace the file"
        ) from None
    assert ds is not None
    # A truncated file can come back as a partial dataset without an error: check it.
    missing = [t for t in _DICOM_REQUIRED if t not in ds]
    if "PixelData" not in ds:
        missing.append("PixelData")
    if missing:
        raise ImageReadError(
            str(path), f"DICOM is missing {', '.join(missing)} (truncated?); replace the file"
        )
    try:
        stored = _pixels(ds)
    except Exception as e:  # pydicom raises ValueError/RuntimeError/NotImplementedError by codec
        raise ImageReadError(
            str(path), f"pixel data cannot be decoded ({_syntax(ds)}: {_one_line(e)[:300]}); {_fix(ds)}"
        ) from None
    if stored.ndim != 2:
        if stored.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
            stored = stored[0]  # multi-frame: take the first frame
        else:
            raise ImageReadError(str(path), f"expected a grayscale image, got shape {stored.shape}")
    monochrome1 = str(ds.PhotometricInterpretation).upper() == "MONOCHROME1"
    if _plain_8bit(ds, stored):
        return 255 - stored if monochrome1 else np.ascontiguousarray(stored)
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
    if monochrome1:
        out = 1.0 - out
    return out.astype(np.float32, copy=False)


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The stored values. JPEG Baseline through Pillow first (libjpeg-turbo, the decoder
    every cache was built with before pylibjpeg came; pylibjpeg's libjpeg differs by one
    grey level here and there), any other installed decoder if Pillow cannot."""
    from pydicom.uid import JPEGBaseline8Bit

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax == JPEGBaseline8Bit:
        try:
            ds.pixel_array_options(decoding_plugin="pillow")
            return ds.pixel_array
        except Exception:  # the other decoders get their turn
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _syntax(ds: pydicom.Dataset) -> str:
    """The file's transfer syntax by name and UID (as its file meta declares it)."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "an undeclared transfer syntax"
    name = uid.name if uid.is_transfer_syntax else "an unknown transfer syntax"
    return f"transfer syntax {name} ({uid})" if name != str(uid) else f"transfer syntax {uid}"


def _fix(ds: pydicom.Dataset) -> str:
    """What to do with a file whose pixel data does not decode."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is not None and (not uid.is_transfer_syntax or uid.is_compressed):
        return "convert it to an uncompressed transfer syntax (gdcmconv --raw, dcmdjpeg), or replace it"
    return "replace the file"


def _plain_8bit(ds: pydicom.Dataset, stored: np.ndarray) -> bool:
    """8-bit unsigned values with no modality or VOI LUT: v / 255 is the [0, 1] image."""
    if stored.dtype != np.uint8 or int(ds.BitsStored) != 8 or int(ds.get("PixelRepresentation", 0)):
        return False
    if "ModalityLUTSequence" in ds or _usable_window(ds):
        return False
    slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    try:
        return float(slope if slope is not None else 1) == 1 and float(intercept or 0) == 0
    except (TypeError, ValueError):
        return False


def resize_to_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a [0,1] float image (or a uint8 one, as is) to size x size (area/bicubic),
    quantized to uint8 first."""
    u8 = img if img.dtype == np.uint8 else np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if u8.shape == (size, size):
        return u8
    pil = Image.fromarray(u8, mode="L")
    # Reduce by an integer factor first (fast box filter), then a bicubic finish.
    factor = max(1, min(pil.size) // (2 * size))
    if factor > 1:
        pil = pil.reduce(factor)
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
