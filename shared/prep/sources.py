"""One reader per data source, all yielding the same Sample shape and label semantics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.data.records import DatasetIndex
from shared.errors import ConfigError
from shared.prep.nih import read_nih
from shared.prep.rsna import read_rsna

READERS: dict[str, Callable[[Path, bool], DatasetIndex]] = {"nih": read_nih, "rsna": read_rsna}


def read_dataset(kind: str, root: Path, allow_missing: bool = False) -> DatasetIndex:
    """Read the dataset of `kind` at `root`."""
    try:
        reader = READERS[kind]
    except KeyError:
        raise ConfigError(f"unknown dataset kind {kind!r}; known: {sorted(READERS)}") from None
    return reader(root, allow_missing)
