"""Every DICOM transfer syntax a hospital archive hands out decodes through the project's
reader (shared.data.images): pydicom's bundled grayscale test files (JPEG Extended 12-bit,
JPEG-LS lossless and near-lossless, JPEG 2000, RLE, deflated, big endian, implicit and
explicit little endian), JPEG Baseline files made with Pillow, and JPEG Lossless files
with each of the seven predictors, written by a small encoder here (the decoded pixels
must equal the encoded ones exactly). The steps after decoding (modality LUT, VOI LUT,
MONOCHROME1) in their documented order, the uint8 path equal to the float one, and a file
that cannot be decoded named with its transfer syntax."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    generate_uid,
)

from shared.data.images import decode_image, read_dicom, read_image, read_resized, resize_to_uint8
from shared.errors import ImageReadError

BUNDLED = {  # file -> its transfer syntax's name (checked, so a renamed file cannot pass silently)
    "JPGExtended.dcm": "JPEG Extended (Process 2 and 4)",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS Lossless Image Compression",
    "JPEGLSNearLossless_08.dcm": "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "JPEGLSNearLossless_16.dcm": "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "JPEG2000.dcm": "JPEG 2000 Image Compression",
    "MR_small_jp2klossless.dcm": "JPEG 2000 Image Compression (Lossless Only)",
    "MR_small_RLE.dcm": "RLE Lossless",
    "image_dfl.dcm": "Deflated Explicit VR Little Endian",
    "MR_small_bigendian.dcm": "Explicit VR Big Endian",
    "MR_small_implicit.dcm": "Implicit VR Little Endian",
    "MR_small.dcm": "Explicit VR Little Endian",
    "CT_small.dcm": "Explicit VR Little Endian",
}


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_pydicoms_bundled_grayscale_files_decode(name: str) -> None:
    path = Path(get_testdata_file(name))
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name == BUNDLED[name]
    img = read_image(path)
    assert img.ndim == 2 and img.dtype == np.float32 and img.shape[0] >= 10
    assert 0 <= img.min() < img.max() <= 1


@pytest.mark.unit
def test_lossless_syntaxes_give_the_uncompressed_pixels() -> None:
    """MR_small in five syntaxes: the same image, value for value."""
    ref = read_image(Path(get_testdata_file("MR_small.dcm")))
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(read_image(Path(get_testdata_file(name))), ref, err_msg=name)
    for name in ("MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        np.testing.assert_array_equal(read_image(Path(get_testdata_file(name))), ref, err_msg=name)


def _write(path: Path, pixels: bytes, syntax: UID, rows: int, cols: int, bits: int, **tags: object) -> Path:
    """A minimal single-frame grayscale DICOM file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8 if bits <= 8 else 16), bits, bits - 1
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = encapsulate([pixels]) if syntax.is_compressed else pixels
    if syntax.is_compressed:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.unit
def test_jpeg_baseline_decodes_as_pillow_decodes_the_same_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = (np.add.outer(np.arange(48), np.arange(40)) * 2 + rng.integers(0, 20, (48, 40))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="JPEG", quality=90)
    path = _write(tmp_path / "b.dcm", buf.getvalue(), JPEGBaseline8Bit, 48, 40, 8)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.uint8)
    assert decode_image(path).dtype == np.uint8, "8-bit without LUTs: no float round trip"
    np.testing.assert_array_equal(decode_image(path), expected)


class _Bits:
    """A JPEG entropy-coded segment writer (MSB first, 0xFF stuffed, padded with ones)."""

    def __init__(self) -> None:
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value: int, length: int) -> None:
        for i in range(length - 1, -1, -1):
            self.acc, self.n = (self.acc << 1) | ((value >> i) & 1), self.n + 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc, self.n = 0, 0

    def done(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)
        return bytes(self.out)


def _predict(a: int, b: int, c: int, sv: int) -> int:
    return [0, a, b, c, a + b - c, a + ((b - c) >> 1), b + ((a - c) >> 1), (a + b) >> 1][sv]


def lossless_jpeg(img: np.ndarray, precision: int, sv: int) -> bytes:
    """ITU T.81 process 14 (lossless, Huffman), one component, predictor `sv`: every one of
    the 17 difference categories coded in 5 bits."""
    h, w = img.shape
    seg = _Bits()
    x = img.astype(np.int64)
    for r in range(h):
        for c in range(w):
            if r == 0 and c == 0:
                pred = 1 << (precision - 1)
            elif r == 0:
                pred = x[r, c - 1]
            elif c == 0:
                pred = x[r - 1, c]
            else:
                pred = _predict(x[r, c - 1], x[r - 1, c], x[r - 1, c - 1], sv)
            diff = (int(x[r, c]) - int(pred)) % 65536
            diff = diff - 65536 if diff > 32768 else diff
            ssss = abs(diff).bit_length()
            seg.put(ssss, 5)
            if 0 < ssss < 16:
                seg.put(diff if diff > 0 else diff - 1 + (1 << ssss), ssss)

    def marker(code: int, body: bytes) -> bytes:
        return bytes([0xFF, code]) + (len(body) + 2).to_bytes(2, "big") + body

    sof = bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)
    dht = bytes([0x00]) + counts + bytes(range(17))
    sos = bytes([1, 1, 0x00, sv, 0, 0])
    return b"\xff\xd8" + marker(0xC3, sof) + marker(0xC4, dht) + marker(0xDA, sos) + seg.done() + b"\xff\xd9"


@pytest.mark.unit
@pytest.mark.parametrize("sv", range(1, 8))
def test_jpeg_lossless_every_predictor_gives_the_pixels_back(tmp_path: Path, sv: int) -> None:
    rng = np.random.default_rng(sv)
    ramp = np.add.outer(np.arange(24) * 90, np.arange(20) * 60)
    img = np.clip(ramp + rng.integers(-300, 300, ramp.shape), 0, 4095).astype(np.uint16)
    img[0, 0], img[5, 7] = 4095, 0
    syntax = JPEGLosslessSV1 if sv == 1 else JPEGLossless
    path = _write(tmp_path / f"sv{sv}.dcm", lossless_jpeg(img, 12, sv), syntax, 24, 20, 12)
    np.testing.assert_array_equal(read_dicom(path), img.astype(np.float32) / 4095)


@pytest.mark.unit
def test_rescale_then_window_then_monochrome1_in_that_order(tmp_path: Path) -> None:
    """Stored 0..1000 (12 bits); rescale 2x - 1000 gives -1000..1000; the window (center 0,
    width 1001) maps -500.. 500 onto 0..1 (PS3.3 C.11.2.1.2.1, linear); MONOCHROME1 inverts."""
    stored = np.array([[0, 250, 500], [750, 1000, 500]], dtype=np.uint16)
    tags = {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 0, "WindowWidth": 1001}
    plain = _write(tmp_path / "m2.dcm", stored.tobytes(), ExplicitVRLittleEndian, 2, 3, 12, **tags)
    hu = stored.astype(np.float64) * 2 - 1000
    windowed = np.clip((hu - (0 - 0.5)) / (1001 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(read_dicom(plain), windowed, atol=1e-6)
    inverted = _write(
        tmp_path / "m1.dcm", stored.tobytes(), ExplicitVRLittleEndian, 2, 3, 12,
        PhotometricInterpretation="MONOCHROME1", **tags,
    )  # fmt: skip
    np.testing.assert_allclose(read_dicom(inverted), 1 - windowed, atol=1e-6)


@pytest.mark.unit
def test_8bit_files_skip_the_float_round_trip_with_the_same_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    Image.fromarray(img, mode="L").save(tmp_path / "g.png")
    Image.fromarray(np.stack([img] * 3, -1), mode="RGB").save(tmp_path / "c.jpg")
    Image.fromarray(img.astype(np.uint16) * 257).save(tmp_path / "w.png")
    m1 = _write(tmp_path / "m1.dcm", img.tobytes(), ExplicitVRLittleEndian, 70, 90, 8)
    ds = pydicom.dcmread(m1)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inv.dcm")
    for name in ("g.png", "c.jpg", "w.png", "m1.dcm", "inv.dcm"):
        p = tmp_path / name
        assert decode_image(p).dtype == (np.float32 if name == "w.png" else np.uint8), name
        for size in (32, 70):
            np.testing.assert_array_equal(read_resized(p, size), resize_to_uint8(read_image(p), size), name)
    np.testing.assert_array_equal(decode_image(tmp_path / "inv.dcm"), 255 - img)


@pytest.mark.unit
def test_an_undecodable_file_is_named_with_its_transfer_syntax(tmp_path: Path) -> None:
    path = Path(get_testdata_file("JPEG-lossy.dcm"))  # 'misplaced marker' in every installed decoder
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    text = str(e.value)
    assert (
        str(path) in text
        and "transfer syntax JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in text
    )
    assert text.endswith(
        "convert it to an uncompressed transfer syntax (gdcmconv --raw, dcmdjpeg), or replace it"
    )
    private = _write(tmp_path / "p.dcm", b"\x00" * 16, ExplicitVRLittleEndian, 4, 4, 8)
    ds = pydicom.dcmread(private)
    ds.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.2.9999.1")  # a vendor's private syntax
    ds.save_as(private)
    with pytest.raises(
        ImageReadError, match=r"an unknown transfer syntax \(1\.2\.826\.0\.1\.3680043\.2\.9999\.1\)"
    ):
        read_image(private)
