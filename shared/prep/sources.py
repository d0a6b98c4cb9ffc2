"""One reader per data source, all yielding the same Sample shape and label semantics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.config.data import KIND_OPTIONS, DatasetConfig
from shared.data.records import DatasetIndex
from shared.errors import ConfigError
from shared.prep.chexpert import read_chexpert
from shared.prep.mimic import read_mimic
from shared.prep.nih import read_nih
from shared.prep.padchest import read_padchest
from shared.prep.rsna import read_rsna
from shared.prep.vindr import read_vindr

READERS: dict[str, Callable[..., DatasetIndex]] = {
    "nih": read_nih,
    "rsna": read_rsna,
    "chexpert": read_chexpert,
    "mimic": read_mimic,
    "padchest": read_padchest,
    "vindr": read_vindr,
}


def read_dataset(kind: str, root: Path, allow_missing: bool = False, **options: Any) -> DatasetIndex:
    """Read the dataset of `kind` at `root` (`options`: the kind's reading options)."""
    try:
        reader = READERS[kind]
    except KeyError:
        raise ConfigError(f"unknown dataset kind {kind!r}; known: {sorted(READERS)}") from None
    return reader(root, allow_missing, **options)


def read_source(ds: DatasetConfig, allow_missing: bool = False) -> DatasetIndex:
    """Read one configured dataset with the reading options it sets (unset ones: the kind's
    defaults)."""
    options = {
        o: getattr(ds, o) for o in KIND_OPTIONS.get(ds.kind, ()) if getattr(ds, o) not in (None, False)
    }
    return read_dataset(ds.kind, ds.root, allow_missing, **options)
