"""PadChest reader: the labels CSV (plain or gzipped) and 16-bit PNGs in numbered folders.

One image per row of `PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`: `ImageID` (the
PNG's name), `ImageDir` (the numbered folder the download unpacks it into, 0..54),
`PatientID`, `Projection` (PA, AP, AP_horizontal, L, COSTAL, ...) and `Labels`, a Python
list literal of findings and diagnoses, e.g. `['pneumonia', 'infiltrates']` or `['normal']`.
Pneumonia: `pneumonia` or `atypical pneumonia` among them (the report's diagnosis; see the
README's dataset cards). Rows without labels are left out, as torchxrayvision does.
"""

from __future__ import annotations

import ast
import logging
from collections import Counter
from pathlib import Path

from shared.data.records import DatasetIndex, Sample, handle_missing, read_csv_rows
from shared.errors import DatasetError
from shared.prep.fields import OnceOnly, find_csv, inside_root

log = logging.getLogger(__name__)

CSV_NAMES = (
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
    "PADCHEST_chest_x_ray_images_labels_160K.csv",
)
REQUIRED_COLUMNS = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")
DEFAULT_VIEWS = ("PA", "AP", "AP_horizontal")
PNEUMONIA = frozenset({"pneumonia", "atypical pneumonia"})


def parse_labels(raw: str, where: str) -> list[str] | None:
    """The findings of one row; None for a row without labels (blank, or `nan`)."""
    if raw.strip() in ("", "nan", "[]"):
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DatasetError(
            f"{where}: unknown value {raw[:80]!r} in column 'Labels'; expected a list of findings "
            "such as ['pneumonia', 'infiltrates']"
        )
    found = [v.strip().lower() for v in value if v.strip()]
    return found or None


def image_path(root: Path, folder: str, image_id: str, where: str) -> str:
    """`<ImageDir>/<ImageID>`; a copy with every PNG in the root itself is accepted too."""
    if not folder.isdigit():
        raise DatasetError(f"{where}: ImageDir {folder!r} is not a folder number; expected e.g. 12")
    name = inside_root(image_id, where, "ImageID")
    if "/" in name:
        raise DatasetError(f"{where}: ImageID {image_id!r} must be a file name, not a path")
    rel = f"{int(folder)}/{name}"
    return rel if (root / rel).is_file() or not (root / name).is_file() else name


def read_padchest(
    root: Path, allow_missing: bool = False, *, views: tuple[str, ...] = DEFAULT_VIEWS
) -> DatasetIndex:
    """Read PadChest at `root` (the folder holding the CSV and the numbered image folders)."""
    csv_path = find_csv(root, CSV_NAMES, "PadChest labels CSV")
    samples: list[Sample] = []
    missing: list[str] = []
    once = OnceOnly()
    dropped: Counter[str] = Counter()
    for i, row in enumerate(read_csv_rows(csv_path, REQUIRED_COLUMNS), start=2):
        where = f"{csv_path}:{i}"
        rel = image_path(root, row["ImageDir"], row["ImageID"], where)
        once.add(row["ImageID"], where)
        findings = parse_labels(row["Labels"], where)
        if not row["PatientID"]:
            raise DatasetError(f"{where}: empty 'PatientID'")
        if row["Projection"] not in views:
            dropped["view"] += 1
        elif findings is None:
            dropped["no labels"] += 1
        elif not (root / rel).is_file():
            missing.append(rel)
        else:
            label = int(bool(PNEUMONIA.intersection(findings)))
            samples.append(Sample(row["ImageID"], f"padchest:{row['PatientID']}", rel, label))
    log.info("PadChest at %s: %d images kept, left out: %s", root, len(samples), dict(dropped) or "none")
    return DatasetIndex(
        "padchest", root, tuple(samples), handle_missing("PadChest", root, missing, allow_missing)
    )
