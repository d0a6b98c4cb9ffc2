"""NIH ChestX-ray14 reader: both CSV versions, flat and Kaggle image layouts."""

from __future__ import annotations

from pathlib import Path

from shared.data.records import DatasetIndex, Sample, handle_missing, read_csv_rows
from shared.errors import DatasetError

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
FINDINGS = frozenset(
    {
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Effusion",
        "Emphysema",
        "Fibrosis",
        "Hernia",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pleural_Thickening",
        "Pneumonia",
        "Pneumothorax",
        "No Finding",
    }
)


def find_csv(root: Path) -> Path:
    """The labels CSV (v2020 preferred over the original)."""
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise DatasetError(
        f"{root}: no NIH labels CSV ({' or '.join(CSV_NAMES)}); point datasets.<name>.root "
        "at the folder that holds it"
    )


def index_images(root: Path) -> dict[str, str]:
    """Map file name -> path relative to root, for `images/` and `images_0XX/images/`."""
    found: dict[str, str] = {}
    folders = [root / "images", *sorted(root.glob("images_*/images"))]
    for folder in folders:
        if folder.is_dir():
            for p in folder.iterdir():
                if p.suffix.lower() == ".png":
                    found[p.name] = str(p.relative_to(root))
    return found


def pneumonia_label(findings: str, where: str) -> int:
    """1 if `Pneumonia` is among the pipe-separated findings; unknown findings are errors."""
    labels = [t for t in findings.split("|") if t]
    if not labels:
        raise DatasetError(f"{where}: empty 'Finding Labels'; expected e.g. 'No Finding'")
    unknown = [t for t in labels if t not in FINDINGS]
    if unknown:
        raise DatasetError(
            f"{where}: unknown value(s) {unknown} in column 'Finding Labels'; known: {sorted(FINDINGS)}"
        )
    return int("Pneumonia" in labels)


def read_nih(root: Path, allow_missing: bool = False) -> DatasetIndex:
    """Read NIH ChestX-ray14 at `root` into samples labelled pneumonia / not."""
    csv_path = find_csv(root)
    rows = read_csv_rows(csv_path, REQUIRED_COLUMNS)
    images = index_images(root)
    if not images:
        raise DatasetError(f"{root}: no PNG images in images/ or images_0XX/images/; check the dataset root")
    samples: list[Sample] = []
    missing: list[str] = []
    for i, row in enumerate(rows, start=2):
        name = row["Image Index"]
        where = f"{csv_path}:{i}"
        if not name:
            raise DatasetError(f"{where}: empty 'Image Index'")
        label = pneumonia_label(row["Finding Labels"], where)
        rel = images.get(name)
        if rel is None:
            missing.append(name)
            continue
        samples.append(Sample(name, f"nih:{row['Patient ID']}", rel, label))
    return DatasetIndex("nih", root, tuple(samples), handle_missing("NIH", root, missing, allow_missing))
