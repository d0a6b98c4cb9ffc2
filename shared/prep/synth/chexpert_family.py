"""Synthetic twins of CheXpert and MIMIC-CXR-JPG in their published layouts.

Both carry the CheXpert labeller's encoding (1.0, 0.0, -1.0 uncertain, blank), frontal and
lateral views, several studies per patient. Each writer returns what the reader must yield
with its defaults (uncertain ignored, frontal views only): image id -> label; the planted
edge cases (uncertain labels, lateral views, a MIMIC study without a label row) are absent
from it because the reader leaves them out.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.prep.synth.dicom import to_u8
from shared.prep.synth.image import chest_image

OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
DISTRACTOR_COLUMN = {"Nodule": "Lung Lesion", "Effusion": "Pleural Effusion", "Cardiomegaly": "Cardiomegaly"}
DISTRACTORS = tuple(DISTRACTOR_COLUMN)


@dataclass(frozen=True)
class Study:
    """One study's drawn findings: the Pneumonia cell as written and what the image shows."""

    cell: str  # "1.0" | "0.0" | "-1.0" | ""
    shows_pneumonia: bool
    distractor: str | None


def draw_study(rng: np.random.Generator, positive_rate: float) -> Study:
    """Positive at `positive_rate`; of the rest, 15% uncertain (half of those show an
    opacity), and the negatives are written 0.0 or left blank (not mentioned)."""
    if rng.random() < positive_rate:
        return Study("1.0", True, None)
    distractor = DISTRACTORS[int(rng.integers(0, 3))] if rng.random() < 0.4 else None
    if rng.random() < 0.15:
        return Study("-1.0", bool(rng.random() < 0.5), distractor)
    return Study("0.0" if rng.random() < 0.5 else "", False, distractor)


def observation_cells(study: Study) -> dict[str, str]:
    """All 14 observation cells of a study, consistent with its Pneumonia cell."""
    cells = dict.fromkeys(OBSERVATIONS, "")
    cells["Pneumonia"] = study.cell
    if study.shows_pneumonia:
        cells["Lung Opacity"] = "1.0"
    if study.distractor:
        cells[DISTRACTOR_COLUMN[study.distractor]] = "1.0"
    if study.cell in ("0.0", "") and not study.distractor:
        cells["No Finding"] = "1.0"
    return cells


def default_label(study: Study) -> int | None:
    """The label the readers give under their default policy (uncertain: ignored)."""
    return {"1.0": 1, "0.0": 0, "": 0, "-1.0": None}[study.cell]


def save_jpeg(path: Path, rng: np.random.Generator, size: int, study: Study) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img, _ = chest_image(rng, size, study.shows_pneumonia, study.distractor)
    Image.fromarray(to_u8(img), mode="L").save(path, format="JPEG", quality=92)


def write_chexpert(
    out: Path, patients: int, size: int, rng: np.random.Generator, positive_rate: float
) -> dict[str, int]:
    """CheXpert-v1.0-small layout: train.csv, valid.csv, train|valid/patientNNNNN/studyN/viewN_*.jpg."""
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
    rows: dict[str, list[list[str]]] = {"train": [], "valid": []}
    truth: dict[str, int] = {}
    n_valid = max(1, patients // 10)
    for k in range(1, patients + 1):
        part = "valid" if k > patients - n_valid else "train"
        sex, age = ("Male" if rng.random() < 0.55 else "Female"), str(int(rng.integers(18, 91)))
        for s in range(1, int(rng.integers(1, 3)) + 1):
            study = draw_study(rng, positive_rate)
            views = [("Frontal", "PA" if rng.random() < 0.4 else "AP")]
            if rng.random() < 0.3:
                views.append(("Lateral", ""))
            for v, (fl, appa) in enumerate(views, start=1):
                rel = f"{part}/patient{k:05d}/study{s}/view{v}_{fl.lower()}.jpg"
                save_jpeg(out / rel, rng, size, study)
                cells = observation_cells(study)
                rows[part].append([f"CheXpert-v1.0-small/{rel}", sex, age, fl, appa, *cells.values()])
                label = default_label(study)
                if fl == "Frontal" and label is not None:
                    truth[rel] = label
    for part, part_rows in rows.items():
        with (out / f"{part}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(part_rows)
    return truth


def write_gz_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """A gzipped CSV, byte for byte the same for the same rows (no time stamp)."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))


MIMIC_META = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(rng.integers(0, 2**32)):08x}" for _ in range(5))


def write_mimic(
    out: Path, patients: int, size: int, rng: np.random.Generator, positive_rate: float
) -> dict[str, int]:
    """MIMIC-CXR-JPG 2.0.0 layout: the three gzipped CSVs and files/pXX/pXXXXXXXX/sXXXXXXXX/*.jpg.
    The last patient's last study has no label row (the real CSV lacks a few studies)."""
    meta, labels, split = [], [], []
    truth: dict[str, int] = {}
    for k in range(patients):
        subject = str(10_000_032 + k * 1_000_003 % 9_000_000)
        part = "test" if k % 10 == 9 else ("validate" if k % 10 == 8 else "train")
        n_studies = int(rng.integers(1, 3))
        for s in range(n_studies):
            study_id = str(50_000_000 + int(rng.integers(0, 10_000_000)))
            study = draw_study(rng, positive_rate)
            unlabelled = k == patients - 1 and s == n_studies - 1
            if not unlabelled:
                labels.append([subject, study_id, *_mimic_cells(study)])
            views = ["PA" if rng.random() < 0.4 else "AP", *(["LATERAL"] if rng.random() < 0.3 else [])]
            for view in views:
                dicom_id = _dicom_id(rng)
                rel = f"files/p{subject[:2]}/p{subject}/s{study_id}/{dicom_id}.jpg"
                save_jpeg(out / rel, rng, size, study)
                desc = "CHEST (PA AND LAT)" if len(views) > 1 else f"CHEST ({view})"
                orient = "Erect" if view != "AP" else "Recumbent"
                meta.append(
                    [
                        dicom_id,
                        subject,
                        study_id,
                        desc,
                        view,
                        str(size),
                        str(size),
                        "21800506",
                        "213014.531",
                        desc,
                        "lateral" if view == "LATERAL" else "postero-anterior",
                        orient,
                    ]
                )
                split.append([dicom_id, study_id, subject, part])
                label = default_label(study)
                if view != "LATERAL" and label is not None and not unlabelled:
                    truth[dicom_id] = label
    out.mkdir(parents=True, exist_ok=True)
    write_gz_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_META, meta)
    write_gz_csv(out / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *MIMIC_ORDER], labels)
    write_gz_csv(out / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split)
    return truth


MIMIC_ORDER = sorted(OBSERVATIONS)  # the MIMIC CSV lists the 14 observations alphabetically


def _mimic_cells(study: Study) -> list[str]:
    cells = observation_cells(study)
    return [cells[c] for c in MIMIC_ORDER]
