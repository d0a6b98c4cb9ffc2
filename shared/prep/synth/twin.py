"""Synthetic twins of NIH ChestX-ray14 and RSNA Pneumonia, written in the real layouts.

The images are chest-like (body, dark lung fields, ribs, mediastinum, noise, varied
exposure). Pneumonia is a patchy opacity inside a lung; negatives carry distractors
(nodules, effusions, an enlarged heart) so the signal is learnable but not trivial.
"""

from __future__ import annotations

import csv
import logging
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from shared.data.images import read_image
from shared.prep.synth.dicom import dicom_bytes, to_u8
from shared.prep.synth.image import Lesion, chest_image
from shared.prep.synth.shared_radiographs import (
    PLANTED_FILE,
    NihImage,
    choose_twins,
    rsna_copy,
    store_16bit,
    write_planted,
)

log = logging.getLogger(__name__)

NIH_HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]
DISTRACTORS = ("Nodule", "Effusion", "Cardiomegaly")


def write_nih(
    out: Path,
    patients: int,
    size: int,
    rng: np.random.Generator,
    positive_rate: float,
    layout: str = "flat",
    rgba_rate: float = 0.01,
) -> list[NihImage]:
    """NIH layout: Data_Entry_2017_v2020.csv, images/ (or images_0XX/images/), split lists."""
    rows: list[list[object]] = []
    names: list[str] = []
    drawn: list[NihImage] = []
    for pid in range(1, patients + 1):
        has_pneumonia = rng.random() < positive_rate
        age, sex = int(rng.integers(1, 95)), ("M" if rng.random() < 0.55 else "F")
        for follow_up in range(int(rng.integers(1, 4))):
            positive = has_pneumonia and (follow_up == 0 or rng.random() < 0.6)
            distractor = DISTRACTORS[int(rng.integers(0, 3))] if rng.random() < 0.4 else None
            img, lesions = chest_image(rng, size, positive, distractor)
            findings = [f for f in ("Pneumonia" if positive else None, distractor) if f]
            name = f"{pid:08d}_{follow_up:03d}.png"
            folder = "images" if layout == "flat" else f"images_{1 + len(names) // 500:03d}/images"
            (out / folder).mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(to_u8(img), mode="L")
            if rng.random() < rgba_rate:
                pil = pil.convert("RGBA")
            pil.save(out / folder / name)
            view = "PA" if rng.random() < 0.6 else "AP"
            rows.append(
                [
                    name,
                    "|".join(sorted(findings)) or "No Finding",
                    follow_up,
                    pid,
                    age,
                    sex,
                    view,
                    size,
                    size,
                    0.143,
                    0.143,
                ]
            )
            names.append(name)
            boxes = tuple((b.x, b.y, b.w, b.h) for b in lesions)
            drawn.append(NihImage(name, f"{folder}/{name}", positive, distractor, boxes, age, sex, view))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "Data_Entry_2017_v2020.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(NIH_HEADER)
        w.writerows(rows)
    cut = int(len(names) * 0.8)
    (out / "train_val_list.txt").write_text("".join(n + "\n" for n in names[:cut]))
    (out / "test_list.txt").write_text("".join(n + "\n" for n in names[cut:]))
    return drawn


def write_rsna(
    out: Path,
    patients: int,
    size: int,
    rng: np.random.Generator,
    positive_rate: float,
    twins: dict[int, NihImage] | None = None,
    nih_root: Path | None = None,
    twin_rng: np.random.Generator | None = None,
) -> dict[str, NihImage]:
    """RSNA layout: labels CSV (one row per box), detailed class CSV, DICOM images.

    Patient i in `twins` re-releases that NIH image (read from `nih_root`, windowed and
    resampled with `twin_rng`) with its label, boxes and metadata; the others are drawn
    from `rng` exactly as without twins. Returns patientId -> NIH image of the planted ones.
    """
    images = out / "stage_2_train_images"
    images.mkdir(parents=True, exist_ok=True)
    label_rows, class_rows = [], []
    planted: dict[str, NihImage] = {}
    for i in range(patients):
        pid = str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63))))
        positive = rng.random() < positive_rate
        distractor = None
        if not positive and rng.random() < 0.5:
            distractor = DISTRACTORS[int(rng.integers(0, 3))]
        img, lesions = chest_image(rng, size, positive, distractor)
        view = "PA" if rng.random() < 0.5 else "AP"
        age, sex = int(rng.integers(1, 92)), ("M" if rng.random() < 0.55 else "F")
        twin = (twins or {}).get(i)
        if twin is not None:
            if nih_root is None or twin_rng is None:
                raise ValueError("write_rsna: twins need nih_root and twin_rng")
            img = rsna_copy(read_image(nih_root / twin.relpath), twin_rng)
            positive, distractor, lesions = twin.positive, twin.distractor, [Lesion(*b) for b in twin.boxes]
            view, age, sex = twin.view, twin.age, twin.sex
            planted[pid] = twin
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
    return planted


def synthesize(
    out: Path,
    patients: int = 400,
    size: int = 256,
    seed: int = 0,
    positive_rate: float = 0.35,
    nih_layout: str = "flat",
    *,
    twin_fraction: float = 0.05,
    sixteen_bit_fraction: float = 0.02,
) -> dict[str, int]:
    """Write DIR/nih and DIR/rsna; return the number of images of each (and of twins).

    `twin_fraction` of the RSNA patients are NIH images re-released the way RSNA did it
    (listed in DIR/planted_twins.csv); `sixteen_bit_fraction` of the NIH PNGs are 16-bit.
    """
    rng = np.random.default_rng(seed)
    nih = write_nih(out / "nih", patients, size, rng, positive_rate, nih_layout)
    twin_rng = np.random.default_rng([seed, 0x7717])  # its own stream: the rest is drawn as before
    twins = choose_twins(patients, nih, twin_fraction, twin_rng)
    planted = write_rsna(out / "rsna", patients, size, rng, positive_rate, twins, out / "nih", twin_rng)
    store_16bit(out / "nih", nih, list(planted.values()), sixteen_bit_fraction, twin_rng)
    write_planted(out / PLANTED_FILE, planted)
    log.info(
        "synthetic twin in %s: %d NIH images, %d RSNA images, %d shared",
        out,
        len(nih),
        patients,
        len(planted),
    )
    return {"nih": len(nih), "rsna": patients, "twins": len(planted)}
