"""An image's declared size, checked before anything big is allocated (data.max_pixels).

pydicom reads a Deflated Explicit VR Little Endian file by inflating all of it into memory
first (also with stop_before_pixels), so a 280 KB file declaring 12000 x 12000 pixels
becomes hundreds of megabytes before a single tag can be checked. Here such a file is
inflated in bounded steps: its header from the first megabyte, the rest only counted,
never kept, and refused when it inflates to more than its header declares. The loop ends at
the end of the deflate stream (what follows it, such as the pad byte that keeps the file's
length even, is ignored), and every step must consume input or yield output, so no file
can keep it turning: it reads each byte of the file once and inflates at most the cap.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

HEAD_BYTES = 1 << 20  # the header of a deflated file is parsed from this much inflated data
_STEP = 1 << 16
_PIXEL_DATA = 0x7FE00010
_SLACK = 16 << 20  # inflated bytes beyond the declared pixels (other elements, overlays)
_DEFER = 1 << 16  # elements larger than this (the pixel data) are read only when used


def declared_pixels(ds: Dataset) -> int:
    """Rows x Columns x frames as the header says (0 when absent)."""
    try:
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames
    except (TypeError, ValueError):
        return 0


def too_many_pixels(what: str, n: int, max_pixels: int) -> str:
    """The reason an image over the limit is refused (any format)."""
    return (
        f"declares {what} = {n} pixels, more than data.max_pixels ({max_pixels}): a decompression "
        "bomb or an unusually large image; replace it, or raise data.max_pixels if it is genuine"
    )


def _over(ds: Dataset, max_pixels: int) -> str | None:
    n = declared_pixels(ds)
    if n <= max_pixels:
        return None
    frames = ds.get("NumberOfFrames", 1) or 1
    what = f"{ds.get('Rows')}x{ds.get('Columns')}" + (f"x{frames} frames" if str(frames) != "1" else "")
    return too_many_pixels(what, n, max_pixels)


def read_dicom_header(path: Path, max_pixels: int) -> tuple[Dataset | None, str | None]:
    """The file's dataset with its pixel data not yet read (pydicom reads it when asked:
    one parse of the header per file), or why the file must not be decoded (too many pixels
    declared, a deflate bomb). A deflated file is checked in bounded steps first and then
    read whole (its pixel data cannot be deferred). Errors reading the file are raised."""
    try:
        meta = read_file_meta_info(path)  # the small group 2 only
    except FileNotFoundError:
        raise
    except Exception:  # no file meta: not deflated; the full read reports what is wrong
        meta = None
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        problem = _check_deflated(path, meta, max_pixels)
        return (None, problem) if problem else (pydicom.dcmread(path), None)
    ds = pydicom.dcmread(path, defer_size=_DEFER)
    problem = _over(ds, max_pixels)
    return (None, problem) if problem else (ds, None)


def check_dicom_header(path: Path, max_pixels: int) -> str | None:
    """Why the file must not be decoded, or None (read_dicom_header's check alone)."""
    return read_dicom_header(path, max_pixels)[1]


def _check_deflated(path: Path, meta: Dataset, max_pixels: int) -> str | None:
    if "FileMetaInformationGroupLength" not in meta:
        return "deflated DICOM without a file meta group length; replace the file"
    start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, the length
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head, total, cap = bytearray(), 0, None
    with open(path, "rb") as fh:
        fh.seek(start)
        pending = b""
        while not inflater.eof:  # past the stream's end zlib hands the rest back unconsumed
            if not pending:
                pending = fh.read(_STEP)
                if not pending:
                    break
            try:
                out = inflater.decompress(pending, _STEP)
            except zlib.error as e:
                return f"deflated data is corrupt ({e}); replace the file"
            if not out and len(inflater.unconsumed_tail) == len(pending) and not inflater.eof:
                return "deflated data makes no progress when inflated; replace the file"
            pending = inflater.unconsumed_tail
            total += len(out)
            if cap is None:
                head += out
                if len(head) >= HEAD_BYTES:
                    cap, problem = _header_cap(bytes(head), max_pixels)
                    if problem:
                        return problem
                    head = bytearray()
            elif total > cap:
                return f"inflates to more than {cap} bytes, more than its header declares: replace the file"
    if cap is None:
        _, problem = _header_cap(bytes(head), max_pixels)
        return problem
    return None


def _header_cap(head: bytes, max_pixels: int) -> tuple[int, str | None]:
    """The inflated size the header allows, and why the file is refused (or None)."""
    try:
        ds = read_dataset(io.BytesIO(head), False, True, stop_when=lambda tag, vr, length: tag >= _PIXEL_DATA)
    except Exception as e:  # any parse failure of untrusted bytes
        return 0, f"deflated header cannot be read ({' '.join(str(e).split())}); replace the file"
    problem = _over(ds, max_pixels)
    per_pixel = int(ds.get("SamplesPerPixel", 1) or 1) * -(-int(ds.get("BitsAllocated", 16) or 16) // 8)
    return declared_pixels(ds) * per_pixel + _SLACK, problem
