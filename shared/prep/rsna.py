"""RSNA Pneumonia Detection Challenge reader: box rows collapsed to one label per image."""

from __future__ import annotations

from pathlib import Path

from shared.data.records import DatasetIndex, Sample, handle_missing, read_csv_rows
from shared.errors import DatasetError

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_CSV = "stage_2_detailed_class_info.csv"
IMAGE_DIR = "stage_2_train_images"
CLASSES = {"Lung Opacity": 1, "No Lung Opacity / Not Normal": 0, "Normal": 0}


def collapse_labels(rows: list[dict[str, str]], csv_path: Path) -> dict[str, int]:
    """One label per patient from one row per box (positives) or one empty row (negatives)."""
    labels: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        pid, target = row["patientId"], row["Target"]
        if not pid:
            raise DatasetError(f"{csv_path}:{i}: empty 'patientId'")
        if target not in ("0", "1"):
            raise DatasetError(
                f"{csv_path}:{i}: unknown value {target!r} in column 'Target'; expected 0 or 1"
            )
        value = int(target)
        if pid in labels and labels[pid] != value:
            raise DatasetError(f"{csv_path}:{i}: patient {pid} has both Target 0 and 1 rows; fix the CSV")
        labels[pid] = value
    return labels


def check_classes(root: Path, labels: dict[str, int]) -> None:
    """The detailed class file, if present, must agree with the labels."""
    path = root / CLASS_CSV
    if not path.exists():
        return
    for i, row in enumerate(read_csv_rows(path, ("patientId", "class")), start=2):
        cls = row["class"]
        if cls not in CLASSES:
            raise DatasetError(
                f"{path}:{i}: unknown value {cls!r} in column 'class'; known: {sorted(CLASSES)}"
            )
        pid = row["patientId"]
        if pid in labels and labels[pid] != CLASSES[cls]:
            raise DatasetError(
                f"{path}:{i}: class {cls!r} for {pid} contradicts Target={labels[pid]} in {LABELS_CSV}"
            )


def read_rsna(root: Path, allow_missing: bool = False) -> DatasetIndex:
    """Read the RSNA Pneumonia training set at `root` into one sample per patient/image."""
    csv_path = root / LABELS_CSV
    rows = read_csv_rows(csv_path, ("patientId", "x", "y", "width", "height", "Target"))
    labels = collapse_labels(rows, csv_path)
    check_classes(root, labels)
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: image folder not found; check the dataset root")
    present = {p.stem for p in image_dir.iterdir() if p.suffix.lower() == ".dcm"}
    samples: list[Sample] = []
    missing: list[str] = []
    for pid, label in labels.items():
        if pid not in present:
            missing.append(f"{IMAGE_DIR}/{pid}.dcm")
            continue
        samples.append(Sample(pid, f"rsna:{pid}", f"{IMAGE_DIR}/{pid}.dcm", label))
    return DatasetIndex("rsna", root, tuple(samples), handle_missing("RSNA", root, missing, allow_missing))
