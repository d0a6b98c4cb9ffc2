"""`fedattack data synth --kind`: the synthetic twin of any of the six layouts, each in
`<out>/<kind>`. NIH and RSNA written together keep their planted shared radiographs (the
twin as it always was); every other kind draws from its own seeded stream."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shared.errors import ConfigError
from shared.prep.synth.chexpert_family import write_chexpert, write_mimic
from shared.prep.synth.padchest_vindr import write_padchest, write_vindr
from shared.prep.synth.twin import synthesize, write_nih, write_rsna

log = logging.getLogger(__name__)

WRITERS: dict[str, Callable[[Path, int, int, np.random.Generator, float], object]] = {
    "nih": write_nih,
    "rsna": write_rsna,
    "chexpert": write_chexpert,
    "mimic": write_mimic,
    "padchest": write_padchest,
    "vindr": write_vindr,
}
KINDS = tuple(WRITERS)
# Files whose presence says a twin of the kind is already written (pipeline/demo reuses it).
MARKERS = {
    "nih": "Data_Entry_2017_v2020.csv",
    "rsna": "stage_2_train_labels.csv",
    "chexpert": "train.csv",
    "mimic": "mimic-cxr-2.0.0-metadata.csv.gz",
    "padchest": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    "vindr": "annotations/image_labels_train.csv",
}


def check_kinds(kinds: Sequence[str]) -> None:
    """Every kind known, none twice."""
    unknown = [k for k in kinds if k not in WRITERS]
    if unknown:
        raise ConfigError(f"--kind {','.join(unknown)}: unknown dataset kind; known: {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"--kind {','.join(kinds)}: a kind is named twice")


def synthesize_kinds(
    out: Path,
    kinds: Sequence[str],
    patients: int,
    size: int,
    seed: int,
    positive_rate: float,
    nih_layout: str = "flat",
) -> dict[str, int]:
    """Write the twin of each kind under `out/<kind>`; return the images written per kind
    (the number a reader lists, before any view or label policy leaves some out)."""
    check_kinds(kinds)
    counts: dict[str, int] = {}
    rest = list(kinds)
    if "nih" in kinds and "rsna" in kinds:
        counts.update(synthesize(out, patients, size, seed, positive_rate, nih_layout))
        counts.pop("twins", None)
        rest = [k for k in kinds if k not in ("nih", "rsna")]
    for kind in rest:
        rng = np.random.default_rng([seed, KINDS.index(kind)])
        if kind == "nih":
            write_nih(out / kind, patients, size, rng, positive_rate, nih_layout)
        else:
            WRITERS[kind](out / kind, patients, size, rng, positive_rate)
        counts[kind] = sum(
            1 for p in (out / kind).rglob("*") if p.suffix in (".png", ".jpg", ".dcm", ".dicom")
        )
        log.info("synthetic %s twin in %s: %d images", kind, out / kind, counts[kind])
    return counts
