"""The data part of the experiment config: datasets, sites, splits, overlap and image limits."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# The four sites of the study's federations. Any other name matching SITE_NAME is a site
# too (data.sites may list N >= 2); these four keep their place first, in this order, so
# their seeds (shared.seeds' site index) and splits stay the ones they always were.
SITES: tuple[str, ...] = ("A", "B", "C", "D")
# A site's name is part of a file name (site_<name>.json) and a node config value.
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
DatasetKind = Literal["nih", "rsna", "chexpert", "mimic", "padchest", "vindr"]
UncertainPolicy = Literal["ignore", "zeros", "ones"]  # the CheXpert paper's U-Ignore, U-Zeros, U-Ones
RadiologistPolicy = Literal["any", "majority"]
# The reading options each kind takes (shared.prep.sources passes them to its reader).
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "chexpert": ("views", "uncertain"),
    "mimic": ("views", "uncertain", "official_split"),
    "padchest": ("views",),
    "vindr": ("radiologists",),
}
PartitionKind = Literal["iid", "quantity", "label"]


def loader_workers(workers: int, sharing: int = 1) -> int:
    """data.workers as a process count: -1 (auto) is this process's cores shared by
    `sharing` processes on the host (the sites of a local federation), at most 8."""
    if workers >= 0:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // max(1, sharing)))


def check_site_name(site: str, key: str) -> None:
    """A site name is 1-32 letters, digits, '_' or '-', starting with a letter or digit."""
    if not SITE_NAME.fullmatch(site):
        raise ValueError(
            f"{key}: site name {site[:40]!r} must be 1-32 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def site_index(site: str, sites: tuple[str, ...]) -> int:
    """The site's index for its seeds: A..D are 0..3 as always; other names follow, 4, 5, ...
    in the order `sites` (the run's sites) lists them. (shared.seeds' site-torch formula adds
    5 for a fine-tune message, so from a sixth site on two sites' different messages may
    share a torch seed; they draw on different data.)"""
    if site in SITES:
        return SITES.index(site)
    others = [s for s in sites if s not in SITES]
    if site not in others:
        raise ValueError(f"site {site!r} is not one of the run's sites {list(sites)}")
    return len(SITES) + others.index(site)


@dataclass(frozen=True)
class PartitionConfig:
    """How a dataset's patients (after the test and public sets are taken) are dealt to its
    sites, within each label stratum. iid: round robin over a seeded shuffle, every site an
    equal share at the dataset's positive rate (the split as it always was); quantity: the
    sites' shares drawn once from Dirichlet(alpha), the same in both strata (sizes differ,
    positive rates do not); label: each stratum's shares drawn from its own Dirichlet(alpha)
    (positive rates differ: the standard label-skew benchmark). A small alpha skews; a large
    one approaches iid."""

    kind: PartitionKind = "iid"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"alpha: must be > 0 (the Dirichlet concentration), got {self.alpha}")
        if self.kind == "iid" and self.alpha != 0.5:
            raise ValueError("alpha: only a quantity or label partition draws shares (kind is iid)")

    def describe(self) -> str:
        """'iid', or the kind with its alpha: recorded in the manifests and the fingerprint."""
        return "iid" if self.kind == "iid" else f"{self.kind} dirichlet alpha={self.alpha:g}"


@dataclass(frozen=True)
class DatasetConfig:
    """One source dataset, the sites its patients are split into and how (partition)."""

    kind: DatasetKind
    root: Path
    sites: tuple[str, ...]
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    # Reading options (None: the kind's default; README's dataset cards): the views kept
    # (chexpert: Frontal/Lateral values, mimic: ViewPosition, padchest: Projection), the
    # uncertain-label policy (chexpert, mimic), the radiologist vote (vindr) and MIMIC's
    # official test split pinned to the test set.
    views: tuple[str, ...] | None = None
    uncertain: UncertainPolicy | None = None
    radiologists: RadiologistPolicy | None = None
    official_split: bool = False

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("sites: give at least one site")
        takes = KIND_OPTIONS.get(self.kind, ())
        for option in ("views", "uncertain", "radiologists", "official_split"):
            if getattr(self, option) not in (None, False) and option not in takes:
                users = [k for k, v in KIND_OPTIONS.items() if option in v]
                raise ValueError(
                    f"{option}: a {self.kind} dataset has no such option (only {', '.join(users)})"
                )
        if self.views is not None and not self.views:
            raise ValueError("views: list at least one view, or leave it out for the kind's default")
        for s in self.sites:
            check_site_name(s, "sites")
            if self.sites.count(s) > 1:
                raise ValueError(f"sites: site {s} is named twice; name each site once")


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
    # A linked group of more patients is suspect (false perceptual matches chaining patients):
    # reported, and only its exact and mutual-best perceptual links are kept (shared.prep.leakage).
    max_group_patients: int = 4

    def __post_init__(self) -> None:
        if self.max_group_patients < 2:
            n = self.max_group_patients
            raise ValueError(f"max_group_patients: must be at least 2 (a twin pair), got {n}")


# Images with more pixels (width x height x frames, read from the header before decoding)
# are refused as unreadable: a small compressed file can declare gigabytes of pixels.
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class DataConfig:
    """Where the datasets are and how images are prepared."""

    image_size: int
    datasets: dict[str, DatasetConfig]
    channels: int = 1
    workers: int = -1  # decoding and loader processes; -1: from the cores (loader_workers)
    skip_unreadable: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    split: SplitConfig = field(default_factory=SplitConfig)
    overlap: OverlapConfig = field(default_factory=OverlapConfig)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size: must be at least 32, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels: must be 1 or 3, got {self.channels}")
        if self.workers < -1:
            raise ValueError(f"workers: must be >= 0, or -1 for one per core, got {self.workers}")
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
        """Every configured site: those of A..D in that order, then the others as the datasets
        list them."""
        listed = [s for d in self.datasets.values() for s in d.sites]
        return tuple(s for s in SITES if s in listed) + tuple(s for s in listed if s not in SITES)
