"""Readers against real layouts: both NIH CSV versions and image layouts, RSNA CSVs, DICOM."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from shared.data.images import read_dicom, read_image
from shared.errors import DatasetError, ImageReadError
from shared.prep.nih import read_nih
from shared.prep.rsna import read_rsna
from shared.prep.synth.dicom import dicom_bytes
from shared.prep.synth.twin import write_nih

pytestmark = pytest.mark.unit


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_nih_v2020_flat(synth_dir: Path) -> None:
    idx = read_nih(synth_dir / "nih")
    rows = list(csv.DictReader((synth_dir / "nih" / "Data_Entry_2017_v2020.csv").open()))
    assert len(idx.samples) == len(rows)
    truth = {r["Image Index"]: int("Pneumonia" in r["Finding Labels"].split("|")) for r in rows}
    assert {s.image_id: s.label for s in idx.samples} == truth
    assert all(s.relpath.startswith("images/") for s in idx.samples)
    # several images per patient, with follow-up numbers in the name
    per_patient = {}
    for s in idx.samples:
        per_patient.setdefault(s.patient_id, []).append(s)
    assert max(len(v) for v in per_patient.values()) > 1


def test_nih_old_csv_with_trailing_comma_and_kaggle_layout(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    write_nih(root, 30, 64, np.random.default_rng(0), 0.4, layout="kaggle")
    new = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    (root / "Data_Entry_2017_v2020.csv").unlink()
    # The original release: trailing comma on every line -> an extra empty column.
    (root / "Data_Entry_2017.csv").write_text("".join(line + ",\n" for line in new))
    idx = read_nih(root)
    assert len(idx.samples) == len(new) - 1
    assert all("/images/" in s.relpath and s.relpath.startswith("images_0") for s in idx.samples)
    assert any(s.label == 1 for s in idx.samples)


def test_nih_rgba_png_is_converted_to_gray(tmp_path: Path) -> None:
    arr = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    Image.fromarray(arr, "L").convert("RGBA").save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    assert out.shape == (64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, arr / 255.0, atol=1 / 255)


def test_nih_unknown_label_and_missing_column(tmp_path: Path, synth_dir: Path) -> None:
    root = _copy(synth_dir / "nih", tmp_path / "nih")
    csv_path = root / "Data_Entry_2017_v2020.csv"
    text = csv_path.read_text().splitlines()
    first = text[1].split(",")
    first[1] = "Pneumonia|Covid"
    csv_path.write_text("\n".join([text[0], ",".join(first), *text[2:]]) + "\n")
    with pytest.raises(DatasetError, match=r"unknown value.*'Covid'.*Finding Labels") as e:
        read_nih(root)
    assert f"{csv_path}:2" in str(e.value)
    csv_path.write_text("\n".join([text[0].replace("Finding Labels", "Findings"), *text[1:]]))
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['Finding Labels'\]"):
        read_nih(root)


def test_listed_but_absent_file_is_an_error_or_reported(tmp_path: Path, synth_dir: Path) -> None:
    root = _copy(synth_dir / "nih", tmp_path / "nih")
    victim = sorted((root / "images").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=victim.name):
        read_nih(root)
    idx = read_nih(root, allow_missing=True)
    assert idx.missing == (victim.name,)


def test_rsna_box_rows_collapse_to_one_label(synth_dir: Path) -> None:
    root = synth_dir / "rsna"
    rows = list(csv.DictReader((root / "stage_2_train_labels.csv").open()))
    idx = read_rsna(root)
    pids = {r["patientId"] for r in rows}
    assert len(idx.samples) == len(pids) < len(rows)  # several box rows per positive
    truth = {r["patientId"]: int(r["Target"]) for r in rows}
    assert {s.image_id: s.label for s in idx.samples} == truth
    classes = {
        r["patientId"]: r["class"] for r in csv.DictReader((root / "stage_2_detailed_class_info.csv").open())
    }
    assert all((classes[s.image_id] == "Lung Opacity") == bool(s.label) for s in idx.samples)


def test_rsna_bad_target_and_contradicting_class(tmp_path: Path, synth_dir: Path) -> None:
    root = _copy(synth_dir / "rsna", tmp_path / "rsna")
    labels = root / "stage_2_train_labels.csv"
    lines = labels.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",2"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"unknown value '2' in column 'Target'"):
        read_rsna(root)
    shutil.copy(synth_dir / "rsna" / "stage_2_train_labels.csv", labels)
    classes = root / "stage_2_detailed_class_info.csv"
    cl = classes.read_text().splitlines()
    pid, cls = cl[1].split(",", 1)
    cl[1] = f"{pid},{'Normal' if cls == 'Lung Opacity' else 'Lung Opacity'}"
    classes.write_text("\n".join(cl) + "\n")
    with pytest.raises(DatasetError, match="contradicts"):
        read_rsna(root)


def test_dicom_jpeg_baseline_roundtrip(tmp_path: Path) -> None:
    img = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    p = tmp_path / "a.dcm"
    p.write_bytes(dicom_bytes(img, "pid", 40, "M", "PA"))
    ds = pydicom.dcmread(p)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.PatientAge == "40"
    np.testing.assert_allclose(read_dicom(p), img, atol=0.03)


def _raw_dicom(path: Path, pixels: np.ndarray, bits: int, **attrs) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel = "CR", 1
    ds.PhotometricInterpretation = attrs.pop("photometric", "MONOCHROME2")
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16 if bits > 8 else np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    px = np.array([[0, 255], [128, 64]], dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    m2 = read_dicom(_raw_dicom(tmp_path / "m2.dcm", px, 8))
    m1 = read_dicom(_raw_dicom(tmp_path / "m1.dcm", px, 8, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m2.max() == 1.0 and m2.min() == 0.0


def test_dicom_16_bit_rescale_and_window(tmp_path: Path) -> None:
    px = np.array([[0, 4095], [2048, 1024]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    plain = read_dicom(_raw_dicom(tmp_path / "p.dcm", px, 12))
    np.testing.assert_allclose(plain[0, 8], 1.0)
    np.testing.assert_allclose(plain[8, 0], 2048 / 4095, atol=1e-6)
    # Modality rescale (slope 2, intercept -1024) keeps relative scaling.
    rescaled = read_dicom(_raw_dicom(tmp_path / "r.dcm", px, 12, RescaleSlope=2, RescaleIntercept=-1024))
    np.testing.assert_allclose(rescaled, plain, atol=1e-5)
    # A VOI window centred at 1024, width 1024: 0 -> black, >=1536 -> white, 1024 -> mid.
    win = read_dicom(_raw_dicom(tmp_path / "w.dcm", px, 12, WindowCenter=1024, WindowWidth=1024))
    assert win[0, 0] == 0.0 and win[0, 8] == 1.0 and win[8, 0] == 1.0
    assert 0.4 < win[8, 8] < 0.6


@pytest.mark.parametrize("damage", ["not_dicom", "truncated", "short_pixels", "corrupt_jpeg"])
def test_bad_dicom_files_raise_typed_errors_naming_the_file(tmp_path: Path, damage: str) -> None:
    good = dicom_bytes(np.random.default_rng(0).random((64, 64)), "p", 30, "F", "AP")
    p = tmp_path / f"{damage}.dcm"
    if damage == "not_dicom":
        p.write_bytes(b"hello, this is not a DICOM file" * 10)
    elif damage == "truncated":
        p.write_bytes(good[: len(good) // 3])
    elif damage == "short_pixels":
        px = np.zeros((16, 16), dtype=np.uint8)
        _raw_dicom(p, px, 8)
        data = p.read_bytes()
        p.write_bytes(data[:-100])
    else:
        i = good.find(b"\xff\xd8")
        p.write_bytes(good[: i + 40] + b"\x00" * 200 + good[i + 240 :])
    with pytest.raises(ImageReadError) as e:
        read_dicom(p)
    assert str(p) in str(e.value)


def test_corrupt_png_and_absent_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(ImageReadError, match=r"bad\.png"):
        read_image(p)
    with pytest.raises(ImageReadError, match="absent"):
        read_image(tmp_path / "gone.png")
