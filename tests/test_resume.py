"""Interrupted preparation resumes: `fedattack data check` killed half-way (SIGKILL, its
whole process group) while hashing the images for the overlap detector, or while building
the image cache, and started again decodes only the files the first run had not saved,
and ends with the same hash cache, overlap report and image caches as an uninterrupted
run over an identical copy of the data. The first run is held half-way by one source
file that never answers (a FIFO, like a stalled network mount): every other file is
decoded and saved, then the test kills it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.config.experiment import load_config
from shared.data.manifest import load_manifest
from shared.prep.splits import make_splits
from shared.prep.synth.twin import synthesize
from tests.conftest import REPO, write_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="holds the first run with a FIFO"),
]


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("twin")
    synthesize(out, patients=40, size=96, seed=5)
    return out


def _copy(twin: Path, tmp: Path, name: str, **overrides: object):  # type: ignore[no-untyped-def]
    """A copy of the twin (mtimes kept: the caches key on them) and its config, 2 workers."""
    data = tmp / f"data_{name}"
    shutil.copytree(twin, data)  # copy2: sizes and mtimes as the twin's
    path = write_config(tmp / f"{name}.yaml", data, tmp / f"run_{name}", **{"data.workers": 2, **overrides})
    return path, load_config(path)


def _check(config: Path) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


def _killed_half_way(config: Path, victim: Path, saved) -> str:  # type: ignore[no-untyped-def]
    """Run `data check` with `victim` replaced by a FIFO; SIGKILL its process group once
    `saved()` says its work was saved; put the file back. Its log."""
    aside = victim.with_name(victim.name + ".aside")
    victim.rename(aside)  # the same inode comes back: size and mtime unchanged
    os.mkfifo(victim)
    log = config.with_suffix(".log")
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "data", "check", "--config", str(config)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not saved():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run saved nothing:\n" + log.read_text()[-3000:]
            time.sleep(0.1)
        assert proc.poll() is None, "the first run ended before it was killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        victim.unlink()
        aside.rename(victim)
    return log.read_text()


def _caches(cache_dir: Path) -> dict[str, tuple[bytes, dict]]:
    """Every built cache folder: its images' bytes and meta.json; nothing half-built left."""
    out = {}
    for meta in sorted(cache_dir.rglob("meta.json")):
        out[str(meta.parent.relative_to(cache_dir))] = (
            (meta.parent / "images.npy").read_bytes(),
            json.loads(meta.read_text()),
        )
    assert not list(cache_dir.rglob("*.tmp*")), "a build folder was left"
    return out


def _hashes(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _overlap(splits: Path) -> dict:
    report = json.loads((splits / "overlap.json").read_text())
    report.pop("seconds", None)  # how long the detection took
    return report


def test_hashing_killed_half_way_resumes(twin: Path, tmp_path: Path) -> None:
    config, cfg = _copy(twin, tmp_path, "killed")
    ref_config, ref = _copy(twin, tmp_path, "whole")
    nih = sorted((cfg.data.datasets["nih"].root).rglob("*.png"))
    victim = nih[len(nih) // 2]
    hashes = cfg.splits_dir / "hashes" / "nih.npz"
    first = _killed_half_way(config, victim, hashes.is_file)
    assert "hashing " in first and not re.search(r"hashing nih: \d+ done", first), first[-3000:]
    saved = len(_hashes(hashes)["relpath"])
    assert 0 < saved < len(nih)  # half-way: all but the stalled file, not the whole dataset
    second = _check(config)
    resumed = re.search(r"hashing (\d+) of (\d+) nih images", second)
    assert resumed, second[-3000:]
    assert int(resumed.group(1)) == len(nih) - saved < len(nih) // 2, resumed.group(0)
    _check(ref_config)
    a, b = _hashes(hashes), _hashes(ref.splits_dir / "hashes" / "nih.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _overlap(cfg.splits_dir) == _overlap(ref.splits_dir)
    assert _caches(cfg.cache_dir) == _caches(ref.cache_dir)


def test_cache_build_killed_half_way_resumes(twin: Path, tmp_path: Path) -> None:
    off = {"data.overlap.detect": False}
    config, cfg = _copy(twin, tmp_path, "killed", **off)
    ref_config, ref = _copy(twin, tmp_path, "whole", **off)
    paths = make_splits(cfg.data, cfg.splitting_seed, cfg.splits_dir)  # the split data check writes
    manifest = load_manifest(paths["site_A"])
    train = manifest.part("train")
    victim = manifest.data_root / train[len(train) // 2].relpath
    folder = cfg.cache_dir / manifest.name

    def saved() -> bool:
        return any(folder.glob("train_*px.tmp*/progress.npz"))

    first = _killed_half_way(config, victim, saved)
    assert f"caching {manifest.name}/train" in first, first[-3000:]
    second = _check(config)
    resumed = re.search(
        rf"caching {manifest.name}/train: (\d+) images at \d+ px, (\d+) decoded by an "
        r"interrupted build, decoding the other (\d+)",
        second,
    )
    assert resumed, second[-3000:]
    total, before, now = map(int, resumed.groups())
    assert total == len(train) and before + now == total and 0 < now < total // 2  # the stalled file's batch
    assert "interrupted" not in _check(ref_config)
    assert _caches(cfg.cache_dir) == _caches(ref.cache_dir)
