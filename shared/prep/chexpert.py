"""CheXpert reader (v1.0 and the "small" copy): train.csv / valid.csv, one row per image.

`Path` names the JPEG as the download lays it out, `CheXpert-v1.0-small/train/patient00001/
study1/view1_frontal.jpg`; the first part (the dataset folder, which is the root here) is
dropped. The patient is the `patientNNNNN` folder; the label is the `Pneumonia` column
(1.0, 0.0, -1.0 uncertain, blank not mentioned) under the uncertainty policy; only views
whose `Frontal/Lateral` value is listed are kept (frontal by default).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from shared.data.records import DatasetIndex, Sample, handle_missing, read_csv_rows
from shared.errors import DatasetError
from shared.prep.fields import OnceOnly, UncertainPolicy, chexpert_label, inside_root

log = logging.getLogger(__name__)

CSV_NAMES = ("train.csv", "valid.csv")
REQUIRED_COLUMNS = ("Path", "Frontal/Lateral", "Pneumonia")
DEFAULT_VIEWS = ("Frontal",)
_PATIENT = re.compile(r"(?:^|/)(patient\d+)/study\d+/[^/]+$")
_PREFIX = re.compile(r"CheXpert-v1\.0[^/]*")


def relative_path(raw: str, where: str) -> str:
    """The image's path below the root: the CSV's `Path` less its `CheXpert-v1.0*/` part."""
    rel = inside_root(raw, where, "Path")
    first, _, rest = rel.partition("/")
    return rest if _PREFIX.fullmatch(first) and rest else rel


def read_chexpert(
    root: Path,
    allow_missing: bool = False,
    *,
    uncertain: UncertainPolicy = "ignore",
    views: tuple[str, ...] = DEFAULT_VIEWS,
) -> DatasetIndex:
    """Read CheXpert at `root` (the folder holding train.csv) into pneumonia / not samples."""
    if not (root / "train.csv").is_file():
        raise DatasetError(
            f"{root}: no train.csv; point datasets.<name>.root at the CheXpert-v1.0(-small) folder"
        )
    samples: list[Sample] = []
    missing: list[str] = []
    once = OnceOnly()
    dropped: Counter[str] = Counter()
    for name in CSV_NAMES:
        csv_path = root / name
        if not csv_path.is_file():
            continue
        for i, row in enumerate(read_csv_rows(csv_path, REQUIRED_COLUMNS), start=2):
            where = f"{csv_path}:{i}"
            rel = relative_path(row["Path"], where)
            found = _PATIENT.search(rel)
            if found is None:
                raise DatasetError(
                    f"{where}: Path {row['Path']!r} does not end in patientNNNNN/studyN/<view>.jpg"
                )
            once.add(rel, where)
            label = chexpert_label(row["Pneumonia"], uncertain, where, "Pneumonia")
            if row["Frontal/Lateral"] not in views:
                dropped["view"] += 1
            elif label is None:
                dropped["uncertain"] += 1
            elif not (root / rel).is_file():
                missing.append(rel)
            else:
                samples.append(Sample(rel, f"chexpert:{found.group(1)}", rel, label))
    log.info("CheXpert at %s: %d images kept, left out: %s", root, len(samples), dict(dropped) or "none")
    return DatasetIndex(
        "chexpert", root, tuple(samples), handle_missing("CheXpert", root, missing, allow_missing)
    )
