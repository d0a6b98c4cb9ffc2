"""The one sample shape every reader yields."""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import DatasetError


@dataclass(frozen=True)
class Sample:
    """One image: where it is (relative to its dataset root), whose it is, its label."""

    image_id: str
    patient_id: str
    relpath: str
    label: int  # 1 = pneumonia, 0 = not

    def to_row(self) -> list[str | int]:
        return [self.image_id, self.patient_id, self.relpath, self.label]

    @classmethod
    def from_row(cls, row: list) -> Sample:
        image_id, patient_id, relpath, label = row
        return cls(str(image_id), str(patient_id), str(relpath), int(label))


@dataclass(frozen=True)
class DatasetIndex:
    """What a reader found: the usable samples and the listed files that are absent."""

    name: str
    root: Path
    samples: tuple[Sample, ...]
    missing: tuple[str, ...] = ()
    # patient id -> "test" | "site": a side the dataset's own published split fixes (MIMIC's
    # official split); the split puts those patients there
    pinned: dict[str, str] = field(default_factory=dict)


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Read a CSV with a header; a missing required column is an error naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: CSV not found; check the dataset root in the config")
    raw = path.read_bytes()
    if path.suffix == ".gz":  # MIMIC-CXR-JPG and PadChest publish their CSVs gzipped
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: not a readable gzip file ({e}); download it again") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}:{line}: byte 0x{raw[e.start]:02x} is not UTF-8, the encoding this CSV must have "
            "(the published files are plain ASCII); re-save it as UTF-8, e.g. "
            "`iconv -f latin1 -t utf-8 IN > OUT`"
        ) from None
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        absent = [c for c in required if c not in header]
        if absent:
            raise DatasetError(
                f"{path}: missing column(s) {absent}; found {header}. "
                "Is this the right file for this dataset?"
            )
        rows = []
        try:
            for row in reader:
                rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items() if k})
        except csv.Error as e:
            raise DatasetError(
                f"{path}:{reader.line_num}: not a readable CSV row ({e}); fix the file"
            ) from None
        return rows


def handle_missing(name: str, root: Path, missing: list[str], allow: bool) -> tuple[str, ...]:
    """Raise for listed-but-absent files unless skipping is allowed (then they are reported)."""
    if missing and not allow:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{name} at {root}: {len(missing)} listed image(s) are absent ({shown}). "
            "Restore them, or set data.skip_unreadable: true to skip and report them."
        )
    return tuple(missing)
