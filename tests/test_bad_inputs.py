"""No traceback for any input: each bad input below ends in one line naming the file, key
or value and what to do (exit code 2), or, for unreadable images, in the count of
unreadable files that `data check` reports. The command-line rows run the real CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from cli.main import build_parser
from shared.config.experiment import load_config
from shared.data.images import read_dicom, read_image
from shared.errors import ConfigError, FedAttackError, ImageReadError
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


def pydicom_deflated(path: Path, side: int, padding: bytes) -> Path:
    """A DICOM that pydicom itself writes in Deflated Explicit VR Little Endian (it pads the
    deflated stream to an even length), with `padding` appended after the stream."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = f"1.2.3.{side}.{len(padding)}"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CR", 1, "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.arange(side * side) % 251).astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as fh:
        fh.write(padding)
    return path


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block (pure Python loops included) after `seconds`."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.unit
def test_a_deflated_dicom_with_trailing_padding_decodes_in_bounded_time(tmp_path: Path) -> None:
    """Past the end of the deflate stream zlib hands the trailing bytes back as unconsumed
    input on every call: the header check looped on them forever at 100% CPU."""
    padded_by_pydicom = 0
    for side in (64, 255, 256, 300, 513):
        for padding in (b"", b"\0", b"\0" * 4096, b"\xff" * 70_000):
            path = pydicom_deflated(tmp_path / f"d{side}-{len(padding)}.dcm", side, padding)
            start = 128 + 4 + 12 + int(read_file_meta_info(path).FileMetaInformationGroupLength)
            z = zlib.decompressobj(-zlib.MAX_WBITS)
            z.decompress(path.read_bytes()[start:])
            assert z.eof and len(z.unused_data) >= len(padding)
            padded_by_pydicom += not padding and bool(z.unused_data)
            with time_limit(10):
                img = read_dicom(path)
            assert img.shape == (side, side)
            expected = (np.arange(side * side) % 251).reshape(side, side) / 255
            np.testing.assert_allclose(img, expected, atol=1e-6)
    assert padded_by_pydicom  # pydicom's own pad byte, not only ours


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


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with no room left: a 256 KiB tmpfs filled up (as root; skipped
    where mount is not permitted)."""
    d = tmp_path / "full"
    d.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr!r}")
    try:
        fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while os.write(fd, bytes(4096)):
                pass
        os.close(fd)
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.mark.integration
def test_a_full_disk_names_the_file_and_what_to_free(full_disk: Path) -> None:
    """ENOSPC from a real full filesystem: the store writer and the CLI (one `error:` line)
    name the file being written and say to free space, and leave no temporary file."""
    from shared.errors import OutputError
    from shared.store.folder import CheckpointStore

    store = CheckpointStore(full_disk / "checkpoints")
    with pytest.raises(OutputError) as e:
        store.begin("study-1", resume=False)
    assert str(e.value).startswith(f"{store.manifest_path}: cannot write it (No space left on device)")
    assert "free space on the disk that holds it" in str(e.value)
    assert sorted(p.name for p in store.root.iterdir()) == [".lock"]  # no .manifest.json.tmp*
    out = full_disk / "credentials"
    last = refused(fedattack("deploy", "credentials", "--out", str(out), "--san", "fl.example"))
    assert last.startswith(f"error: {out}/") and "cannot write it (No space left on device)" in last
    assert "free space on the disk that holds it" in last


def _attack_cli(cfg: Path, out: Path, store: Path, *extra: str) -> None:
    """`fedattack attack ...` as the command line runs it, in this process (what main()
    adds around it: printing the error and the exit code)."""
    args = build_parser().parse_args(
        ["attack", "--config", str(cfg), "--out", str(out), "--checkpoints", str(store), *extra]
    )
    args.func(args)


@pytest.mark.unit
def test_attack_settings_are_checked_before_any_compute_or_folder(tmp_path: Path, synth_dir: Path) -> None:
    """Each refusal comes before any data is read (no FGSM study first: the outsider without
    a public split failed after 41 s of it) and leaves no output folder: an unknown attack,
    an empty list, the outsider without a public split; and a refusal found later (no store
    at all, after the test sets are read) leaves no empty folder either."""
    cfg = write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run")
    out, store = tmp_path / "attack-out", tmp_path / "none"
    cases = [
        (["--attack", "nope"], "unknown attack 'nope'"),
        (["--eps", ","], "--eps ',': names nothing; expected a comma-separated list of numbers"),
        (["--attack", ""], "--attack '': names nothing"),
        (["--attack", "fgsm"], "data.split.public_fraction is 0: the outsider threat trains"),
        (["--threat", "outsider", "--attack", "fgsm"], "or --threat member,insider"),
    ]
    for extra, needle in cases:
        with pytest.raises(FedAttackError) as e:
            _attack_cli(cfg, out, store, *extra)
        assert needle in str(e.value) and "\n" not in str(e.value)
        assert not out.exists() and not (tmp_path / "run").exists(), extra  # nothing read or made
    with pytest.raises(FedAttackError, match=str(store)):
        _attack_cli(cfg, out, store, "--threat", "member")
    assert (tmp_path / "run").is_dir() and not out.exists()


@pytest.mark.unit
def test_transfer_attack_settings_are_checked_before_any_model_loads(tmp_path: Path, synth_dir: Path) -> None:
    """An unknown loss or ensemble mode lists the known ones; an eps in /255 outside (0, 255];
    a TI kernel that is even or larger than the images: one line, nothing read or made."""
    out, store = tmp_path / "attack-out", tmp_path / "none"
    member = ["--threat", "member"]
    cases: list[tuple[dict, list[str], str]] = [
        (
            {},
            ["--attack", "pgd+hinge", *member],
            "unknown loss 'hinge' in attack 'pgd+hinge'; known: ce, margin",
        ),
        ({}, ["--eps", "300/255", *member], "--eps '300/255': '300/255' is outside 0 < k <= 255"),
        ({}, ["--eps=-2/255", *member], "is outside 0 < k <= 255"),
        ({"attack.suite.ensemble": "mean"}, member, "one of ['logits', 'loss', 'scaled', 'svre']"),
        ({"attack.eps": "256/255"}, member, "attack.eps' must be"),
        ({"attack.iterative.kernel_size": 4}, member, "kernel_size: 4 has no centre pixel; use an odd size"),
        (
            {"attack.iterative.kernel_size": 99},
            ["--attack", "tifgsm", *member],
            "attack.iterative.kernel_size 99 is larger than the images (data.image_size 64)",
        ),
    ]
    for overrides, extra, needle in cases:
        cfg = write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run", **overrides)
        with pytest.raises(FedAttackError) as e:
            _attack_cli(cfg, out, store, *extra)
        assert needle in str(e.value) and "\n" not in str(e.value), (needle, str(e.value))
        assert not out.exists() and not (tmp_path / "run").exists(), extra


@pytest.mark.unit
def test_a_file_error_without_a_typed_wrapper_is_one_line_naming_the_file() -> None:
    """What the CLI prints for an OSError that reaches it (a container whose home is not
    writable gave a traceback): the file, the reason, what to do."""
    import errno

    from cli.main import os_error

    denied = os_error(PermissionError(errno.EACCES, "Permission denied", "/home/fedattack/.flwr"))
    assert denied.startswith("/home/fedattack/.flwr: Permission denied; this user (uid ")
    assert "volume or tmpfs" in denied and "\n" not in denied
    assert "read-only filesystem" in os_error(OSError(errno.EROFS, "Read-only file system", "/app/x"))
    assert os_error(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == (
        "/a -> /b: Invalid cross-device link"
    )
