"""The preprocessing cache: built once, reused, invalidated, unreadable files accounted for."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.config.experiment import load_config
from shared.data.cache import load_cached
from shared.data.images import read_image, resize_to_uint8
from shared.data.manifest import load_manifest
from shared.data.torchdata import make_loader
from shared.errors import DatasetError
from shared.prep.splits import make_splits
from tests.conftest import write_config


@pytest.fixture
def site(tmp_path: Path, synth_dir: Path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    cfg = load_config(write_config(tmp_path / "c.yaml", data, tmp_path / "run"))
    paths = make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    return cfg, load_manifest(paths["site_C"])


@pytest.mark.integration
def test_cache_matches_decoding_and_is_reused(site) -> None:
    cfg, m = site
    part = load_cached(m, "train", 64, cfg.cache_dir, workers=2)
    assert part.images.shape == (len(m.part("train")), 64, 64)
    first = m.part("train")[0]
    expect = resize_to_uint8(read_image(m.data_root / first.relpath), 64)
    np.testing.assert_array_equal(part.images[0], expect)
    assert list(part.labels) == [s.label for s in m.part("train")]
    stamp = (part.folder / "images.npy").stat().st_mtime_ns
    again = load_cached(m, "train", 64, cfg.cache_dir)
    assert (again.folder / "images.npy").stat().st_mtime_ns == stamp  # not rebuilt
    assert isinstance(again.images, np.memmap)


@pytest.mark.unit
def test_cache_invalidated_by_size_and_source_change(site) -> None:
    cfg, m = site
    a = load_cached(m, "val", 64, cfg.cache_dir)
    b = load_cached(m, "val", 72, cfg.cache_dir)
    assert b.images.shape[1:] == (72, 72) and a.folder != b.folder
    src = m.data_root / m.part("val")[0].relpath
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    stamp = (a.folder / "images.npy").stat().st_mtime_ns
    c = load_cached(m, "val", 64, cfg.cache_dir)
    assert (c.folder / "images.npy").stat().st_mtime_ns != stamp


@pytest.mark.unit
def test_unreadable_images_error_or_counted_and_listed(site) -> None:
    cfg, m = site
    victim = m.data_root / m.part("train")[1].relpath
    victim.write_bytes(b"garbage, not DICOM at all" * 4)
    with pytest.raises(DatasetError, match=str(victim)):
        load_cached(m, "train", 64, cfg.cache_dir)
    assert not (cfg.cache_dir / m.name / "train_64px").exists()  # nothing half-written
    part = load_cached(m, "train", 64, cfg.cache_dir, skip_unreadable=True)
    assert len(part) == len(m.part("train")) - 1
    assert part.unreadable and str(victim) in part.unreadable[0]
    assert str(victim) in (part.folder / "unreadable.txt").read_text()
    with pytest.raises(DatasetError, match="unreadable"):  # strict reuse still refuses
        load_cached(m, "train", 64, cfg.cache_dir)


@pytest.mark.integration
def test_loader_uses_worker_processes(site) -> None:
    cfg, m = site
    part = load_cached(m, "train", 64, cfg.cache_dir)
    loader = make_loader(part, channels=3, batch_size=4, shuffle=True, workers=2, seed=0)
    assert loader.num_workers == 2
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 64, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.dtype.is_floating_point is False
