"""MIMIC-CXR-JPG reader: the metadata, CheXpert-label and split CSVs (plain or gzipped).

One image per metadata row (`dicom_id,subject_id,study_id,...,ViewPosition,...`), labelled
by its study's row in the CheXpert-label CSV (`subject_id,study_id,<14 observations>`; the
`Pneumonia` column: 1.0, 0.0, -1.0 uncertain, blank not mentioned) under the uncertainty
policy; a study with no label row is left out. The JPEG is
`files/p<first two digits of subject_id>/p<subject_id>/s<study_id>/<dicom_id>.jpg`. The
patient is `subject_id`. With `official_split`, the patients of the split CSV's `test`
rows are pinned to the test set (and all others to the sites).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from shared.data.records import DatasetIndex, Sample, handle_missing, read_csv_rows
from shared.errors import DatasetError
from shared.prep.fields import OnceOnly, UncertainPolicy, chexpert_label, find_csv

log = logging.getLogger(__name__)

METADATA = ("mimic-cxr-2.0.0-metadata.csv",)
LABELS = ("mimic-cxr-2.0.0-chexpert.csv",)
SPLIT = ("mimic-cxr-2.0.0-split.csv",)
SPLITS = ("train", "validate", "test")
DEFAULT_VIEWS = ("PA", "AP")
_ID = re.compile(r"\d{1,12}")
_DICOM_ID = re.compile(r"[0-9A-Za-z-]{1,80}")


def _number(value: str, column: str, where: str) -> str:
    if not _ID.fullmatch(value):
        raise DatasetError(f"{where}: {column} {value!r} is not a number; expected e.g. 10000032")
    return value


def read_labels(path: Path, policy: UncertainPolicy) -> dict[tuple[str, str], int | None]:
    """(subject_id, study_id) -> label (None: uncertain and ignored)."""
    labels: dict[tuple[str, str], int | None] = {}
    for i, row in enumerate(read_csv_rows(path, ("subject_id", "study_id", "Pneumonia")), start=2):
        where = f"{path}:{i}"
        key = (_number(row["subject_id"], "subject_id", where), _number(row["study_id"], "study_id", where))
        if key in labels:
            raise DatasetError(f"{where}: study {key[1]} of subject {key[0]} has a second label row")
        labels[key] = chexpert_label(row["Pneumonia"], policy, where, "Pneumonia")
    return labels


def official_test(root: Path) -> dict[str, str]:
    """subject -> "test" for every subject with an image in the split CSV's test rows, and
    "site" for the others (shared.prep.splits pins them there)."""
    path = find_csv(root, SPLIT, "MIMIC-CXR-JPG split CSV (needed for official_split)")
    sides: dict[str, str] = {}
    for i, row in enumerate(read_csv_rows(path, ("dicom_id", "subject_id", "split")), start=2):
        if row["split"] not in SPLITS:
            raise DatasetError(
                f"{path}:{i}: unknown value {row['split']!r} in column 'split'; expected one of "
                f"{list(SPLITS)}"
            )
        pid = f"mimic:{_number(row['subject_id'], 'subject_id', f'{path}:{i}')}"
        if row["split"] == "test" or pid not in sides:
            sides[pid] = "test" if row["split"] == "test" else "site"
    return sides


def read_mimic(
    root: Path,
    allow_missing: bool = False,
    *,
    uncertain: UncertainPolicy = "ignore",
    views: tuple[str, ...] = DEFAULT_VIEWS,
    official_split: bool = False,
) -> DatasetIndex:
    """Read MIMIC-CXR-JPG at `root` (the folder holding the CSVs and files/)."""
    meta_path = find_csv(root, METADATA, "MIMIC-CXR-JPG metadata CSV")
    labels = read_labels(find_csv(root, LABELS, "MIMIC-CXR-JPG CheXpert-label CSV"), uncertain)
    rows = read_csv_rows(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    samples: list[Sample] = []
    missing: list[str] = []
    once = OnceOnly()
    dropped: Counter[str] = Counter()
    for i, row in enumerate(rows, start=2):
        where = f"{meta_path}:{i}"
        subject = _number(row["subject_id"], "subject_id", where)
        study = _number(row["study_id"], "study_id", where)
        dicom_id = row["dicom_id"]
        if not _DICOM_ID.fullmatch(dicom_id):
            raise DatasetError(f"{where}: dicom_id {dicom_id!r} is not a DICOM id (letters, digits, '-')")
        once.add(dicom_id, where)
        rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg"
        if row["ViewPosition"] not in views:
            dropped["view"] += 1
        elif (subject, study) not in labels:
            dropped["no label row"] += 1
        elif (label := labels[subject, study]) is None:
            dropped["uncertain"] += 1
        elif not (root / rel).is_file():
            missing.append(rel)
        else:
            samples.append(Sample(dicom_id, f"mimic:{subject}", rel, label))
    log.info("MIMIC-CXR-JPG at %s: %d images kept, left out: %s", root, len(samples), dict(dropped) or "none")
    pins = official_test(root) if official_split else {}
    kept = {s.patient_id for s in samples}
    return DatasetIndex(
        "mimic",
        root,
        tuple(samples),
        handle_missing("MIMIC-CXR-JPG", root, missing, allow_missing),
        {p: side for p, side in pins.items() if p in kept},
    )
