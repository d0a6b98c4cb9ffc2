"""The synthetic twin of each new layout is read back with exactly the labels it planted,
and carries the planted edge cases (uncertain labels, lateral views, 16-bit PNGs,
MONOCHROME1, radiologists disagreeing)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from shared.config.data import DataConfig, DatasetConfig, OverlapConfig
from shared.data import manifest as manifests
from shared.data.images import read_image
from shared.prep import overlap
from shared.prep.sources import read_dataset
from shared.prep.splits import make_splits
from shared.prep.synth.chexpert_family import write_chexpert, write_mimic
from shared.prep.synth.dicom import to_u8
from shared.prep.synth.kinds import MARKERS, synthesize_kinds
from shared.prep.synth.padchest_vindr import vindr_dicom, write_padchest, write_vindr
from shared.prep.vindr import pooled

pytestmark = pytest.mark.unit
N, SIZE = 30, 48


def _labels(kind: str, root: Path, **options: object) -> dict[str, int]:
    return {s.image_id: s.label for s in read_dataset(kind, root, **options).samples}


def test_chexpert_twin(tmp_path: Path) -> None:
    root = tmp_path / "chexpert"
    truth = write_chexpert(root, N, SIZE, np.random.default_rng(1), 0.4)
    assert _labels("chexpert", root) == truth
    rows = [r for name in ("train.csv", "valid.csv") for r in csv.DictReader((root / name).open())]
    assert all(r["Path"].startswith("CheXpert-v1.0-small/") for r in rows)
    assert {"1.0", "0.0", "-1.0", ""} <= {r["Pneumonia"] for r in rows}
    assert "Lateral" in {r["Frontal/Lateral"] for r in rows}
    every = _labels("chexpert", root, uncertain="ones", views=("Frontal", "Lateral"))
    assert len(every) == len(rows) and set(truth.items()) < set(every.items())


def test_mimic_twin(tmp_path: Path) -> None:
    root = tmp_path / "mimic"
    truth = write_mimic(root, N, SIZE, np.random.default_rng(2), 0.4)
    assert _labels("mimic", root) == truth
    index = read_dataset("mimic", root, official_split=True)
    assert set(index.pinned.values()) == {"test", "site"}
    jpgs = list((root / "files").rglob("*.jpg"))
    assert all(
        p.relative_to(root).parts[1] == p.parent.parent.name[:3] for p in jpgs
    )  # files/p10/p10.../s.../
    assert len(jpgs) > len(truth)  # lateral views, uncertain and unlabelled studies left out


def test_padchest_twin(tmp_path: Path) -> None:
    root = tmp_path / "padchest"
    truth = write_padchest(root, N, SIZE, np.random.default_rng(3), 0.4)
    assert _labels("padchest", root) == truth
    pngs = sorted(root.glob("[0-9]*/*.png"))
    with Image.open(pngs[0]) as im:
        assert im.mode.startswith("I")  # 16 bit
    assert len(pngs) > len(truth)  # lateral views and unlabelled rows left out


def test_vindr_twin(tmp_path: Path) -> None:
    root = tmp_path / "vindr"
    votes = write_vindr(root, N, SIZE, np.random.default_rng(4), 0.4)
    for policy in ("majority", "any"):
        expected = {i: pooled(list(v), policy) if len(v) == 3 else v[0] for i, v in votes.items()}  # type: ignore[arg-type]
        assert _labels("vindr", root, radiologists=policy) == expected
    assert any(pooled(list(v), "any") != pooled(list(v), "majority") for v in votes.values())
    modes = {
        pydicom.dcmread(p, stop_before_pixels=True).PhotometricInterpretation for p in root.rglob("*.dicom")
    }
    assert modes == {"MONOCHROME1", "MONOCHROME2"}


def test_synthesize_kinds_writes_each_layout_in_its_own_folder(tmp_path: Path) -> None:
    counts = synthesize_kinds(tmp_path, ["vindr", "chexpert"], 12, 32, 0, 0.4)
    assert set(counts) == {"vindr", "chexpert"} and all(counts.values())
    assert all((tmp_path / k / MARKERS[k]).is_file() for k in counts)


def test_mimic_official_split_decides_the_test_set(tmp_path: Path) -> None:
    root = tmp_path / "mimic"
    write_mimic(root, 60, 32, np.random.default_rng(5), 0.4)
    ds = DatasetConfig("mimic", root, ("A",), official_split=True)
    data = DataConfig(64, {"mimic": ds}, workers=0, overlap=OverlapConfig(detect=False))
    make_splits(data, 0, tmp_path / "splits")
    manifest = manifests.load_manifest(manifests.test_manifest_path(tmp_path / "splits", "mimic"))
    test = {s.patient_id for s in manifest.part("test")}
    pins = read_dataset("mimic", root, official_split=True).pinned
    official = {p for p, side in pins.items() if side == "test"}
    patients = {s.patient_id for s in read_dataset("mimic", root).samples}
    assert test == official and 0 < len(test) < 0.2 * len(patients)  # not what test_fraction takes


def test_reading_options_belong_to_their_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="radiologists: a chexpert dataset has no such option"):
        DatasetConfig("chexpert", tmp_path, ("A",), radiologists="any")
    with pytest.raises(ValueError, match="official_split: a padchest dataset has no such option"):
        DatasetConfig("padchest", tmp_path, ("A",), official_split=True)
    with pytest.raises(ValueError, match="views: list at least one view"):
        DatasetConfig("mimic", tmp_path, ("A",), views=())


def test_overlap_detector_finds_an_nih_radiograph_copied_into_other_layouts(
    synth_dir: Path, tmp_path: Path
) -> None:
    """The detector is kind-blind: an NIH image stored as a CheXpert JPEG and as a VinDr
    MONOCHROME1 12-bit DICOM is linked to its NIH original (the copies to each other), nothing else."""
    nih = read_dataset("nih", synth_dir / "nih")
    original = nih.samples[0]
    pixels = read_image(synth_dir / "nih" / original.relpath)
    chexpert = tmp_path / "chexpert"
    write_chexpert(chexpert, 12, pixels.shape[0], np.random.default_rng(6), 0.4)
    first = next(iter(_labels("chexpert", chexpert)))
    Image.fromarray(to_u8(pixels)).save(chexpert / first, format="JPEG", quality=90)
    vindr = tmp_path / "vindr"
    write_vindr(vindr, 12, pixels.shape[0], np.random.default_rng(7), 0.4)
    victim = next(s for s in read_dataset("vindr", vindr).samples if s.relpath.startswith("train/"))
    (vindr / victim.relpath).write_bytes(vindr_dicom(pixels, victim.image_id, monochrome1=True, bits=12))
    indices = {
        "nih": nih,
        "chexpert": read_dataset("chexpert", chexpert),
        "vindr": read_dataset("vindr", vindr),
    }
    hashes = [overlap.hash_dataset(ix, tmp_path / f"{n}.hashes", 0) for n, ix in indices.items()]
    found = {(t.a, t.a_id, t.b, t.b_id) for t in overlap.cross_dataset_twins(hashes)}
    assert found == {
        ("nih", original.image_id, "chexpert", first),
        ("nih", original.image_id, "vindr", victim.image_id),
        ("chexpert", first, "vindr", victim.image_id),  # the two copies, of each other
    }
