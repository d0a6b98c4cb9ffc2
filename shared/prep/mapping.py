"""The RSNA-to-NIH correspondence file (`data.overlap.mapping_file`), when the user has it.

Two formats are accepted:

- RSNA's own file, `pneumonia-challenge-dataset-mappings_2018.json` (linked from the
  challenge page): a JSON list of objects, each with `subset_img_id` (the RSNA patientId)
  and `img_id` (the NIH image name, `00000001_000.png`); other keys are ignored.
- a CSV with a header naming an RSNA column (`patientId` or `subset_img_id`) and an NIH
  column (`Image Index` or `img_id`), one row per RSNA image; other columns are ignored.
  The synthetic twin's `planted_twins.csv` is such a file.

An NIH name may omit `.png`. A row whose NIH image is not in the NIH dataset's CSV is an
error naming the file and line; so is a row that does not parse. A row whose RSNA
patientId is not in the RSNA labels CSV is counted and skipped: RSNA's file also lists
the stage-2 test images, which have no labels.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from shared.data.records import DatasetIndex
from shared.errors import DatasetError

RSNA_COLUMNS = ("patientId", "subset_img_id")
NIH_COLUMNS = ("Image Index", "img_id")


@dataclass(frozen=True)
class Mapped:
    """One row of the mapping file: this RSNA image is that NIH image."""

    rsna_id: str
    nih_id: str
    line: str  # "12", or "1 (entry 5)" in a JSON file


def _json_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    """(line, object) of each element of a JSON list, with the line each element starts on."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}:1: expected a JSON list of objects (RSNA's mapping file is one)")
    dec, pos = json.JSONDecoder(), text.index("[") + 1
    line = 1 + text.count("\n", 0, pos)
    rows: list[tuple[str, dict]] = []
    for k in range(len(data)):  # the text is valid JSON: walk it again for the line of each element
        while text[pos] in " \t\r\n,":
            line += text[pos] == "\n"
            pos += 1
        obj, end = dec.raw_decode(text, pos)
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{line} (entry {k}): expected an object with subset_img_id and img_id")
        rows.append((f"{line} (entry {k})", obj))
        line += text.count("\n", pos, end)
        pos = end
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    rows = []
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DatasetError(
                f"{path}:{reader.line_num}: {len(fields)} field(s), the header has {len(header)}; "
                "fix or remove the line"
            )
        rows.append((str(reader.line_num), dict(zip(header, (f.strip() for f in fields), strict=True))))
    return rows


def _column(path: Path, keys: list[str], names: tuple[str, ...]) -> str:
    for n in names:
        if n in keys:
            return n
    raise DatasetError(
        f"{path}: no column {' or '.join(names)}; found {keys}. Is this the RSNA-to-NIH mapping?"
    )


def read_mapping(path: Path, nih: DatasetIndex, rsna: DatasetIndex) -> tuple[list[Mapped], int]:
    """The mapping's rows whose RSNA image is in `rsna`, and how many rows named other RSNA
    images; an NIH name not in `nih` or a row that does not parse is an error (file:line)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: mapping file not found (data.overlap.mapping_file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: mapping file unreadable ({e})") from None
    rows = _json_rows(path, text) if Path(path).suffix.lower() == ".json" else _csv_rows(path, text)
    if not rows:
        return [], 0
    keys = sorted({k for _, r in rows for k in r})
    rsna_col, nih_col = _column(path, keys, RSNA_COLUMNS), _column(path, keys, NIH_COLUMNS)
    nih_names = {s.image_id for s in nih.samples} | set(nih.missing)
    rsna_ids = {s.image_id for s in rsna.samples} | {Path(m).stem for m in rsna.missing}
    out, other = [], 0
    for line, row in rows:
        rid, name = row.get(rsna_col), row.get(nih_col)
        if not isinstance(rid, str) or not isinstance(name, str) or not rid.strip() or not name.strip():
            raise DatasetError(f"{path}:{line}: needs a non-empty {rsna_col} and {nih_col}")
        name = name.strip() if name.strip().lower().endswith(".png") else f"{name.strip()}.png"
        if name not in nih_names:
            raise DatasetError(
                f"{path}:{line}: NIH image {name!r} is not in the NIH dataset at {nih.root}; "
                "is this the mapping for this copy of NIH ChestX-ray14?"
            )
        if rid.strip() in rsna_ids:
            out.append(Mapped(rid.strip(), name, line))
        else:
            other += 1
    return out, other
