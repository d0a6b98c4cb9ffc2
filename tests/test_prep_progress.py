"""Preparation in-process: a hashing or cache build interrupted by Ctrl-C (KeyboardInterrupt
half-way) keeps what it did, the next call does only the rest and ends where an
uninterrupted one does; the progress lines give count, rate and ETA."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.config.experiment import load_config
from shared.data import cache
from shared.data.manifest import load_manifest
from shared.data.pool import Progress, run_jobs
from shared.prep import overlap
from shared.prep.nih import read_nih
from shared.prep.splits import make_splits
from tests.conftest import write_config

pytestmark = pytest.mark.unit


def _interrupt_after(n: int, fn):  # type: ignore[no-untyped-def]
    """`fn`, but Ctrl-C on the (n+1)-th call (as a user pressing it mid-run)."""
    calls = [0]

    def wrapped(job):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] > n:
            raise KeyboardInterrupt
        return fn(job)

    return wrapped


def test_hashing_interrupted_keeps_its_work(synth_dir: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    index = read_nih(synth_dir / "nih")
    n = len(index.samples)
    whole = overlap.hash_dataset(index, tmp_path / "whole.npz")
    monkeypatch.setattr(overlap, "SAVE_EVERY", 7)
    monkeypatch.setattr(overlap, "_hash_file", _interrupt_after(n // 2, overlap._hash_file))
    with pytest.raises(KeyboardInterrupt):
        overlap.hash_dataset(index, tmp_path / "cut.npz")
    monkeypatch.undo()
    with np.load(tmp_path / "cut.npz") as z:
        assert len(z["relpath"]) == n // 2  # all it did, saved on the way out
    with caplog.at_level(logging.INFO, logger="shared.prep.overlap"):
        resumed = overlap.hash_dataset(index, tmp_path / "cut.npz")
    assert f"hashing {n - n // 2} of {n} nih images" in caplog.text
    assert resumed.ids == whole.ids
    for field in ("exact", "phash", "thumb"):
        np.testing.assert_array_equal(getattr(resumed, field), getattr(whole, field))
    with np.load(tmp_path / "cut.npz") as a, np.load(tmp_path / "whole.npz") as b:
        for k in b.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cache_build_interrupted_keeps_its_work(synth_dir: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    cfg = load_config(write_config(tmp_path / "c.yaml", data, tmp_path / "run"))
    m = load_manifest(make_splits(cfg.data, cfg.seed, cfg.splits_dir)["site_A"])
    n = len(m.part("train"))
    whole = cache.load_cached(m, "train", 64, tmp_path / "whole")
    monkeypatch.setattr(cache, "SAVE_EVERY", 5)
    monkeypatch.setattr(cache, "_decode", _interrupt_after(n // 2, cache._decode))
    with pytest.raises(KeyboardInterrupt):
        cache.load_cached(m, "train", 64, tmp_path / "cut")
    monkeypatch.undo()
    assert not (tmp_path / "cut" / m.name / "train_64px").exists()
    (left,) = (tmp_path / "cut" / m.name).glob("train_64px.tmp*")
    assert (left / cache.PROGRESS_FILE).is_file()
    with caplog.at_level(logging.INFO, logger="shared.data.cache"):
        part = cache.load_cached(m, "train", 64, tmp_path / "cut")
    assert f"{n // 2} decoded by an interrupted build, decoding the other {n - n // 2}" in caplog.text
    np.testing.assert_array_equal(part.images, whole.images)
    assert (part.ids, part.unreadable) == (whole.ids, whole.unreadable)
    assert list(part.labels) == list(whole.labels)
    assert sorted(p.name for p in part.folder.parent.iterdir()) == ["train_64px"]  # nothing left over


def test_a_changed_file_is_decoded_again_on_resume(synth_dir: Path, tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    cfg = load_config(write_config(tmp_path / "c.yaml", data, tmp_path / "run"))
    m = load_manifest(make_splits(cfg.data, cfg.seed, cfg.splits_dir)["site_A"])
    monkeypatch.setattr(cache, "SAVE_EVERY", 1)
    monkeypatch.setattr(cache, "_decode", _interrupt_after(4, cache._decode))
    with pytest.raises(KeyboardInterrupt):
        cache.load_cached(m, "train", 64, tmp_path / "cache")
    monkeypatch.undo()
    first, second = (m.data_root / s.relpath for s in m.part("train")[:2])
    shutil.copy(second, first)  # a saved row's file replaced: its row is stale
    part = cache.load_cached(m, "train", 64, tmp_path / "cache")
    np.testing.assert_array_equal(part.images[0], part.images[1])


def test_progress_lines_give_count_rate_and_eta(caplog) -> None:
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        p = Progress(log, "hashing nih", 200, every_s=0.0)
        for _ in range(200):
            p.add()
        p.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 20  # every 5%: 19 lines on the way, then the total
    assert re.fullmatch(r"hashing nih: 10/200 \(5%\), [\d.]+/s, ETA \d+m\d\ds", lines[0]), lines[0]
    assert re.fullmatch(r"hashing nih: 200 done in \d+m\d\ds \([\d.]+/s\)", lines[-1]), lines[-1]


def test_jobs_in_this_process_come_back_in_order() -> None:
    assert list(run_jobs(abs, [-3, 1, -2], 0)) == [(0, 3), (1, 1), (2, 2)]
