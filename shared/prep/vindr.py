"""VinDr-CXR reader (PhysioNet 1.0.0): per-radiologist label rows, DICOM images.

`annotations/image_labels_train.csv` has one row per image and radiologist (`image_id,
rad_id,<28 findings and diagnoses, 0 or 1>`; three radiologists per training image);
`annotations/image_labels_test.csv`, if present, one consensus row per test image (no
`rad_id`). Images: `train/<image_id>.dicom` and `test/<image_id>.dicom`, MONOCHROME1 or 2.
The training label of the `Pneumonia` column is pooled over the image's radiologists by the
policy: `majority` (more than half of them said 1) or `any` (at least one did). VinDr-CXR
publishes no patient identity: each image is its own patient for the split.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Literal

from shared.data.records import DatasetIndex, Sample, handle_missing, read_csv_rows
from shared.errors import DatasetError
from shared.prep.fields import OnceOnly

log = logging.getLogger(__name__)

RadiologistPolicy = Literal["any", "majority"]
TRAIN_CSV = "annotations/image_labels_train.csv"
TEST_CSV = "annotations/image_labels_test.csv"
_IMAGE_ID = re.compile(r"[0-9A-Za-z_-]{1,80}")
_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


def _value(raw: str, where: str) -> int:
    try:
        return _VALUES[raw.strip()]
    except KeyError:
        raise DatasetError(f"{where}: unknown value {raw!r} in column 'Pneumonia'; expected 0 or 1") from None


def _image_id(raw: str, where: str) -> str:
    if not _IMAGE_ID.fullmatch(raw):
        raise DatasetError(f"{where}: image_id {raw!r} is not a VinDr image id (letters and digits)")
    return raw


def pooled(votes: list[int], policy: RadiologistPolicy) -> int:
    """One label from the radiologists' votes."""
    return int(any(votes)) if policy == "any" else int(2 * sum(votes) > len(votes))


def read_votes(path: Path) -> dict[str, list[int]]:
    """image_id -> each radiologist's Pneumonia vote; a radiologist twice on one image is refused."""
    votes: dict[str, list[int]] = defaultdict(list)
    once = OnceOnly()
    for i, row in enumerate(read_csv_rows(path, ("image_id", "rad_id", "Pneumonia")), start=2):
        where = f"{path}:{i}"
        image_id = _image_id(row["image_id"], where)
        if not row["rad_id"]:
            raise DatasetError(f"{where}: empty 'rad_id'")
        once.add(f"{image_id} by {row['rad_id']}", where)
        votes[image_id].append(_value(row["Pneumonia"], where))
    return votes


def read_vindr(
    root: Path, allow_missing: bool = False, *, radiologists: RadiologistPolicy = "majority"
) -> DatasetIndex:
    """Read VinDr-CXR at `root` (the folder holding annotations/, train/ and test/)."""
    labels = {(i, "train"): pooled(v, radiologists) for i, v in read_votes(root / TRAIN_CSV).items()}
    test_path = root / TEST_CSV
    if test_path.is_file():
        for i, row in enumerate(read_csv_rows(test_path, ("image_id", "Pneumonia")), start=2):
            where = f"{test_path}:{i}"
            image_id = _image_id(row["image_id"], where)
            if (image_id, "train") in labels or (image_id, "test") in labels:
                raise DatasetError(
                    f"{where}: image {image_id!r} is listed again; each image must have one row"
                )
            labels[image_id, "test"] = _value(row["Pneumonia"], where)
    samples: list[Sample] = []
    missing: list[str] = []
    for (image_id, part), label in labels.items():
        rel = f"{part}/{image_id}.dicom"
        if not (root / rel).is_file():
            missing.append(rel)
            continue
        samples.append(Sample(image_id, f"vindr:{image_id}", rel, label))
    log.info("VinDr-CXR at %s: %d images kept (radiologists: %s)", root, len(samples), radiologists)
    return DatasetIndex(
        "vindr", root, tuple(samples), handle_missing("VinDr-CXR", root, missing, allow_missing)
    )
