"""The data part of the experiment config: datasets, sites, splits, overlap and image limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SITES: tuple[str, ...] = ("A", "B", "C", "D")
DatasetKind = Literal["nih", "rsna"]


@dataclass(frozen=True)
class DatasetConfig:
    """One source dataset and the sites its patients are split into."""

    kind: DatasetKind
    root: Path
    sites: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("sites: give at least one site")
        for s in self.sites:
            if s not in SITES:
                raise ValueError(f"sites: unknown site {s!r}; use some of {list(SITES)}")


@dataclass(frozen=True)
class SplitConfig:
    """Patient-level split of each dataset into a test set and per-site train/val parts."""

    test_fraction: float = 0.2
    val_fraction: float = 0.2
    # Undersample negatives in the *training* parts to reach this positive fraction
    # (NIH has ~1.3% pneumonia). None keeps the natural prevalence.
    balance_positive_fraction: float | None = None
    # Cap on patients per dataset, for quick experiments. None uses all of them.
    max_patients: int | None = None
    public_fraction: float = 0.0  # patients no site or test set gets: the outsider's public_<dataset>.json

    def __post_init__(self) -> None:
        for name in ("test_fraction", "val_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name}: must be in (0, 1), got {v}")
        if self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError("test_fraction + val_fraction: must leave at least 10% to train")
        if not 0.0 <= (v := self.public_fraction) < min(0.5, 0.9 - self.test_fraction):
            raise ValueError(f"public_fraction: must be in [0, 0.5), leaving 10% to the sites; got {v}")
        b = self.balance_positive_fraction
        if b is not None and not 0.0 < b < 1.0:
            raise ValueError(f"balance_positive_fraction: must be in (0, 1), got {b}")
        if self.max_patients is not None and self.max_patients < 10:
            raise ValueError("max_patients: must be at least 10")


@dataclass(frozen=True)
class OverlapConfig:
    """Radiographs shared between datasets (RSNA's are NIH's), kept out of the test and public
    sets at split time. `mapping_file`: the RSNA-to-NIH correspondence when the user has it
    (RSNA's JSON, or a CSV with columns patientId and Image Index; shared.prep.mapping)."""

    detect: bool = True  # find twins by content: every image hashed once (cached in the splits folder)
    mapping_file: Path | None = None


# Images with more pixels (width x height x frames, read from the header before decoding)
# are refused as unreadable: a small compressed file can declare gigabytes of pixels.
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class DataConfig:
    """Where the datasets are and how images are prepared."""

    image_size: int
    datasets: dict[str, DatasetConfig]
    channels: int = 1
    workers: int = 2
    skip_unreadable: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    split: SplitConfig = field(default_factory=SplitConfig)
    overlap: OverlapConfig = field(default_factory=OverlapConfig)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size: must be at least 32, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels: must be 1 or 3, got {self.channels}")
        if self.workers < 0:
            raise ValueError("workers: must be >= 0")
        if self.max_pixels < self.image_size**2:
            raise ValueError(
                f"max_pixels: must be at least image_size^2 = {self.image_size**2}, got {self.max_pixels}"
            )
        if not self.datasets:
            raise ValueError("datasets: give at least one dataset")
        seen: dict[str, str] = {}
        for name, ds in self.datasets.items():
            for s in ds.sites:
                if s in seen:
                    raise ValueError(f"datasets.{name}.sites: site {s} already belongs to {seen[s]}")
                seen[s] = name

    @property
    def sites(self) -> tuple[str, ...]:
        """Every configured site, in order A..D."""
        return tuple(s for s in SITES if any(s in d.sites for d in self.datasets.values()))
