"""Synthetic twins of NIH ChestX-ray14 and RSNA Pneumonia, written in the real layouts.

The images are chest-like (body, dark lung fields, ribs, mediastinum, noise, varied
exposure). Pneumonia is a patchy opacity inside a lung; negatives carry distractors
(nodules, effusions, an enlarged heart) so the signal is learnable but not trivial.
"""

from __future__ import annotations

import csv
import io
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

NIH_HEADER = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
    "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
    "OriginalImagePixelSpacing[x", "y]",
]
DISTRACTORS = ("Nodule", "Effusion", "Cardiomegaly")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


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


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def write_nih(
    out: Path, patients: int, size: int, rng: np.random.Generator, positive_rate: float,
    layout: str = "flat", rgba_rate: float = 0.01,
) -> int:
    """NIH layout: Data_Entry_2017_v2020.csv, images/ (or images_0XX/images/), split lists."""
    rows: list[list[object]] = []
    names: list[str] = []
    for pid in range(1, patients + 1):
        has_pneumonia = rng.random() < positive_rate
        age, sex = int(rng.integers(1, 95)), ("M" if rng.random() < 0.55 else "F")
        for follow_up in range(int(rng.integers(1, 4))):
            positive = has_pneumonia and (follow_up == 0 or rng.random() < 0.6)
            distractor = DISTRACTORS[int(rng.integers(0, 3))] if rng.random() < 0.4 else None
            img, _ = chest_image(rng, size, positive, distractor)
            findings = [f for f in ("Pneumonia" if positive else None, distractor) if f]
            name = f"{pid:08d}_{follow_up:03d}.png"
            folder = "images" if layout == "flat" else f"images_{1 + len(names) // 500:03d}/images"
            (out / folder).mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(_u8(img), mode="L")
            if rng.random() < rgba_rate:
                pil = pil.convert("RGBA")
            pil.save(out / folder / name)
            view = "PA" if rng.random() < 0.6 else "AP"
            rows.append([name, "|".join(sorted(findings)) or "No Finding", follow_up, pid,
                         age, sex, view, size, size, 0.143, 0.143])
            names.append(name)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "Data_Entry_2017_v2020.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(NIH_HEADER)
        w.writerows(rows)
    cut = int(len(names) * 0.8)
    (out / "train_val_list.txt").write_text("".join(n + "\n" for n in names[:cut]))
    (out / "test_list.txt").write_text("".join(n + "\n" for n in names[cut:]))
    return len(rows)


def dicom_bytes(img: np.ndarray, patient_id: str, age: int, sex: str, view: str) -> bytes:
    """An RSNA-like DICOM: CR, MONOCHROME2, 8-bit, Secondary Capture, JPEG Baseline."""
    import pydicom.config
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    jpeg = io.BytesIO()
    Image.fromarray(_u8(img), mode="L").save(jpeg, format="JPEG", quality=95)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, "sop"])
    meta.TransferSyntaxUID = UID(JPEG_BASELINE)
    ds = FileDataset(f"{patient_id}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.PatientID, ds.PatientName = patient_id, patient_id
    # The real files carry a bare number here, which is not a valid AS value.
    settings = pydicom.config.settings
    modes = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds.PatientAge = str(age)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = modes
    ds.PatientSex = sex
    ds.Modality, ds.ConversionType, ds.BodyPartExamined = "CR", "WSD", "CHEST"
    ds.ViewPosition, ds.SeriesDescription = view, f"view: {view}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = img.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.PixelSpacing = [0.168, 0.168]
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_rsna(
    out: Path, patients: int, size: int, rng: np.random.Generator, positive_rate: float
) -> int:
    """RSNA layout: labels CSV (one row per box), detailed class CSV, DICOM images."""
    images = out / "stage_2_train_images"
    images.mkdir(parents=True, exist_ok=True)
    label_rows, class_rows = [], []
    for _ in range(patients):
        pid = str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63))))
        positive = rng.random() < positive_rate
        distractor = None
        if not positive and rng.random() < 0.5:
            distractor = DISTRACTORS[int(rng.integers(0, 3))]
        img, lesions = chest_image(rng, size, positive, distractor)
        view = "PA" if rng.random() < 0.5 else "AP"
        age, sex = int(rng.integers(1, 92)), ("M" if rng.random() < 0.55 else "F")
        (images / f"{pid}.dcm").write_bytes(dicom_bytes(img, pid, age, sex, view))
        if positive:
            for b in lesions:
                label_rows.append([pid, f"{b.x:.1f}", f"{b.y:.1f}", f"{b.w:.1f}", f"{b.h:.1f}", 1])
            class_rows.append([pid, "Lung Opacity"])
        else:
            label_rows.append([pid, "", "", "", "", 0])
            class_rows.append([pid, "No Lung Opacity / Not Normal" if distractor else "Normal"])
    with (out / "stage_2_train_labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patientId", "x", "y", "width", "height", "Target"])
        w.writerows(label_rows)
    with (out / "stage_2_detailed_class_info.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patientId", "class"])
        w.writerows(class_rows)
    return patients


def synthesize(
    out: Path, patients: int = 400, size: int = 256, seed: int = 0,
    positive_rate: float = 0.35, nih_layout: str = "flat",
) -> dict[str, int]:
    """Write DIR/nih and DIR/rsna; return the number of images of each."""
    rng = np.random.default_rng(seed)
    n_nih = write_nih(out / "nih", patients, size, rng, positive_rate, nih_layout)
    n_rsna = write_rsna(out / "rsna", patients, size, rng, positive_rate)
    log.info("synthetic twin in %s: %d NIH images, %d RSNA images", out, n_nih, n_rsna)
    return {"nih": n_nih, "rsna": n_rsna}
