"""What the CheXpert-family readers share: finding the published CSV (plain or gzipped), the
1/0/-1/blank label encoding and its uncertainty policy, paths that must stay inside the
dataset root, and images that may be listed once only."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal

from shared.errors import DatasetError

UncertainPolicy = Literal["ignore", "zeros", "ones"]
# The CheXpert labeller's encoding (CheXpert and MIMIC-CXR-JPG): 1 positive, 0 negative,
# -1 uncertain, blank not mentioned; the CSVs write them as floats ("1.0").
_ENCODING = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}


def find_csv(root: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of `names` (each also tried with .gz) present under `root`."""
    for name in names:
        for candidate in (name, f"{name}.gz"):
            if (root / candidate).is_file():
                return root / candidate
    raise DatasetError(
        f"{root}: no {what} ({' or '.join(names)}, plain or .gz); point datasets.<name>.root at "
        "the folder that holds it"
    )


def chexpert_label(raw: str, policy: UncertainPolicy, where: str, column: str) -> int | None:
    """1 or 0 under the uncertainty policy; None for an uncertain label that `ignore` drops.
    Blank (not mentioned) counts as 0, as the CheXpert paper's baselines do."""
    try:
        value = _ENCODING[raw.strip()]
    except KeyError:
        raise DatasetError(
            f"{where}: unknown value {raw!r} in column {column!r}; expected 1.0, 0.0, -1.0 or blank"
        ) from None
    if value is None:
        return 0
    if value == -1:
        return {"ignore": None, "zeros": 0, "ones": 1}[policy]
    return value


def inside_root(raw: str, where: str, column: str) -> str:
    """`raw` as a relative POSIX path that cannot leave the dataset root."""
    p = PurePosixPath(raw.replace("\\", "/"))
    if not raw or p.is_absolute() or ".." in p.parts or ":" in raw:
        raise DatasetError(
            f"{where}: path {raw!r} in column {column!r} leaves the dataset root; the CSV must "
            "list paths relative to it"
        )
    return str(p)


class OnceOnly:
    """Refuses an image listed on two rows (the error names both)."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def add(self, image_id: str, where: str) -> None:
        if image_id in self.seen:
            raise DatasetError(
                f"{where}: image {image_id!r} is listed again (first at {self.seen[image_id]}); "
                "each image must have one row: remove the duplicate"
            )
        self.seen[image_id] = where
