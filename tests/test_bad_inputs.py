"""No traceback for any input: each bad input below ends in one line naming the file, key
or value and what to do (exit code 2), or, for unreadable images, in the count of
unreadable files that `data check` reports. The command-line rows run the real CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from shared.config.experiment import load_config
from shared.data.images import read_dicom, read_image
from shared.errors import ConfigError, ImageReadError
from tests.cli_helpers import fedattack, refused
from tests.conftest import write_config
from tests.test_readers import _raw_dicom

# --- images -------------------------------------------------------------------------


def png_bomb(path: Path, side: int) -> Path:
    """A few kilobytes of PNG declaring side x side pixels (1 bit each, all zero)."""
    Image.new("1", (side, side)).save(path)
    return path


def deflated_dicom(path: Path, rows: int, cols: int, pixel_bytes: int) -> Path:
    """A Deflated Explicit VR Little Endian DICOM declaring rows x cols 16-bit pixels whose
    (zero) pixel data inflates to `pixel_bytes`, written without ever holding them."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CR", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    head = body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = bytearray(z.compress(head))
    for _ in range(pixel_bytes >> 20):
        out += z.compress(bytes(1 << 20))
    out += z.compress(bytes(pixel_bytes & ((1 << 20) - 1))) + z.flush()
    m = DicomBytesIO()
    m.is_little_endian, m.is_implicit_VR = True, False
    write_file_meta_info(m, meta)
    path.write_bytes(b"\0" * 128 + b"DICM" + m.getvalue() + bytes(out))
    return path


@pytest.mark.unit
def test_png_decompression_bombs_are_unreadable_not_decoded(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png", 10_000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(
        ImageReadError, match=r"declares 10000x10000 = 100000000 pixels, more than data\.max_pixels"
    ):
        read_image(bomb)
    big = png_bomb(tmp_path / "big.png", 14_000)  # over Pillow's own bomb limit too
    with pytest.raises(ImageReadError, match="Pillow refuses it as a decompression bomb"):
        read_image(big, max_pixels=10**9)
    assert read_image(png_bomb(tmp_path / "small.png", 100), max_pixels=10_000).shape == (100, 100)


@pytest.mark.unit
def test_a_deflated_dicom_declaring_12000_squared_is_refused_without_inflating_it(tmp_path: Path) -> None:
    bomb = deflated_dicom(tmp_path / "bomb.dcm", 12_000, 12_000, 12_000 * 12_000 * 2)
    assert bomb.stat().st_size < 300_000  # 288 MB of pixels once inflated
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match=r"declares 12000x12000 = 144000000 pixels"):
            read_dicom(bomb)
        liar = deflated_dicom(tmp_path / "liar.dcm", 100, 100, 300 << 20)  # header: 20 KB of pixels
        tracemalloc.reset_peak()
        with pytest.raises(ImageReadError, match=r"inflates to more than .* than its header declares"):
            read_dicom(liar)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert read_dicom(deflated_dicom(tmp_path / "ok.dcm", 64, 64, 64 * 64 * 2)).shape == (64, 64)


@pytest.mark.unit
def test_a_window_width_of_zero_falls_back_to_the_stored_range(tmp_path: Path) -> None:
    """Width 0 defines no window (PS3.3 wants >= 1; pydicom raises): the image is still
    good, so it is read as if it had no window rather than refused."""
    px = np.array([[0, 4095], [2048, 1024]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    zero = read_dicom(_raw_dicom(tmp_path / "w0.dcm", px, 12, WindowCenter=1024, WindowWidth=0))
    plain = read_dicom(_raw_dicom(tmp_path / "plain.dcm", px, 12))
    np.testing.assert_array_equal(zero, plain)


@pytest.mark.unit
def test_max_pixels_is_validated(tmp_path: Path, synth_dir: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", synth_dir, tmp_path / "run", **{"data.max_pixels": 100})
    with pytest.raises(ConfigError, match=r"data\.max_pixels: must be at least image_size\^2"):
        load_config(cfg)


@pytest.mark.integration
def test_data_check_counts_bombs_and_broken_files_as_unreadable(tmp_path: Path, synth_dir: Path) -> None:
    """Also: no traceback from pydicom's own logger for a JPEG it cannot decode."""
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    png = sorted((data / "nih" / "images").glob("*.png"))[0]
    png_bomb(png, 10_000)
    dcms = sorted((data / "rsna" / "stage_2_train_images").glob("*.dcm"))
    deflated_dicom(dcms[0], 12_000, 12_000, 12_000 * 12_000 * 2)
    good = dcms[1].read_bytes()
    i = good.find(b"\xff\xd8")
    dcms[1].write_bytes(good[: i + 40] + b"\x00" * 200 + good[i + 240 :])  # corrupt JPEG
    px = (np.arange(64 * 64) % 4096).astype(np.uint16).reshape(64, 64)
    _raw_dicom(dcms[2], px, 12, WindowCenter=1024, WindowWidth=0)  # readable
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run")
    res = fedattack("data", "check", "--config", str(cfg))
    text = res.stdout + res.stderr
    assert res.returncode == 1, text[-3000:]  # unreadable images and skip_unreadable false
    assert "Traceback" not in text, text[-4000:]
    listed = "".join(p.read_text() for p in (tmp_path / "run" / "cache").rglob("unreadable.txt"))
    assert f"{png}: declares 10000x10000" in listed
    assert f"{dcms[0]}: declares 12000x12000" in listed
    assert f"{dcms[1]}: pixel data cannot be decoded" in listed
    assert str(dcms[2]) not in listed
    assert len(listed.splitlines()) == 3
    assert "data.skip_unreadable: true" in res.stderr


# --- the command line ---------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write into, root included (a read-only tmpfs when we are root)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot make a read-only folder as root here: {res.stderr!r}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.mark.integration
@pytest.mark.parametrize("command", ["attack", "federate", "demo", "data split"])
def test_an_unwritable_output_folder_stops_before_any_compute(
    command: str, read_only: Path, tmp_path: Path, synth_dir: Path
) -> None:
    out = read_only / "out"
    if command == "data split":  # no --out: the config's output_dir
        cfg = write_config(tmp_path / "cfg.yaml", synth_dir, out)
        res = fedattack("data", "split", "--config", str(cfg))
    else:
        cfg = write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run")
        extra = ["--checkpoints", str(tmp_path / "no-store")] if command == "attack" else []
        res = fedattack(command, "--config", str(cfg), "--out", str(out), *extra)
    refused(res, str(out), "not writable (Read-only file system)", "pick another path")
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
@pytest.mark.parametrize("command", ["attack", "federate"])
def test_an_output_folder_that_is_a_file(command: str, tmp_path: Path, synth_dir: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run")
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    refused(fedattack(command, "--config", str(cfg), "--out", str(out)), str(out), "is a file, not a folder")
    assert out.read_text() == "keep me"


@pytest.mark.integration
def test_a_config_path_that_is_a_folder_or_binary(tmp_path: Path) -> None:
    refused(fedattack("data", "split", "--config", str(tmp_path)), str(tmp_path), "is a folder")
    binary = tmp_path / "cfg.yaml"
    binary.write_bytes(bytes(range(256)))
    refused(fedattack("data", "split", "--config", str(binary)), str(binary), "not a text file")
    binary.write_bytes(b"seed: 1\x00\x01")
    refused(fedattack("data", "split", "--config", str(binary)), str(binary), "not valid YAML")


@pytest.mark.integration
def test_a_latin1_byte_in_the_nih_csv(tmp_path: Path, synth_dir: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    csv_path = data / "nih" / "Data_Entry_2017_v2020.csv"
    lines = csv_path.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b",M,", b",M\xe9,", 1) if b",M," in lines[4] else lines[4] + b"\xe9"
    csv_path.write_bytes(b"\n".join(lines))
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run")
    refused(
        fedattack("data", "split", "--config", str(cfg)), f"{csv_path}:5: byte 0xe9 is not UTF-8", "iconv"
    )


@pytest.mark.integration
def test_credentials_rerun_without_the_ca_key(tmp_path: Path) -> None:
    out = tmp_path / "creds"
    assert fedattack("deploy", "credentials", "--out", str(out), "--san", "fl.example").returncode == 0
    (out / "ca.key").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # the same names: nothing needs the CA key, the re-run keeps everything
    assert fedattack("deploy", "credentials", "--out", str(out), "--san", "fl.example").returncode == 0
    # a new name needs a new server certificate, signed by the CA: refused, nothing touched
    res = fedattack("deploy", "credentials", "--out", str(out), "--san", "other.example")
    refused(res, f"{out / 'ca.key'}: missing", "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.integration
@pytest.mark.parametrize("san", ["", "two words", "bad/name"])
def test_an_empty_or_malformed_san(tmp_path: Path, san: str) -> None:
    refused(fedattack("deploy", "credentials", "--out", str(tmp_path / "c"), "--san", san), f"--san {san!r}")
    with contextlib.suppress(FileNotFoundError):
        assert list((tmp_path / "c").iterdir()) == []
