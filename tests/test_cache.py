"""The preprocessing cache: built once, reused, invalidated, unreadable files accounted for."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
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
from tests.conftest import REPO, write_config


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


KILLED_BUILD = """
import sys
from pathlib import Path
from shared.data.cache import load_cached
from shared.data.manifest import load_manifest
load_cached(load_manifest(Path(sys.argv[1])), "train", 64, Path(sys.argv[2]), workers=2)
"""


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(stat.parent.name))
    return kids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _two(pids: list[int]) -> list[int]:
    return pids if len(pids) == 2 else []


def _wait_for(what: str, check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_cache_build_leaves_no_orphan_and_no_debris(site) -> None:
    """SIGKILL the process building a cache while its two decoding workers are busy (one
    blocked on a source file that never answers, a FIFO): the workers die with it, and
    the next build takes over the folder it left (tests/test_resume.py: what it saved is
    kept) and leaves nothing behind."""
    cfg, m = site
    victim = m.data_root / m.part("train")[0].relpath
    original = victim.read_bytes()
    victim.unlink()
    os.mkfifo(victim)  # opening it blocks until a writer comes: a stalled network mount
    folder = cfg.cache_dir / m.name
    manifest = cfg.splits_dir / f"{m.name}.json"
    assert manifest.is_file()
    build = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, str(manifest), str(cfg.cache_dir)],
        cwd=REPO,
    )
    workers: list[int] = []
    try:
        tmp = _wait_for("the build's temporary folder", lambda: list(folder.glob("train_64px.tmp*")))
        assert tmp == [folder / f"train_64px.tmp{build.pid}"]
        workers = _wait_for("two decoding workers", lambda: _two(_children(build.pid)))
        time.sleep(0.5)  # they are decoding (one of them blocked on the FIFO)
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=30)
        _wait_for("the workers to die with their parent", lambda: not any(map(_running, workers)), 10)
    finally:
        for pid in workers:  # only what this test started, should the claim fail
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if build.poll() is None:
            build.kill()
    assert tmp[0].is_dir()  # the killed build's debris
    victim.unlink()
    victim.write_bytes(original)
    part = load_cached(m, "train", 64, cfg.cache_dir)
    assert len(part) == len(m.part("train"))
    assert sorted(p.name for p in folder.iterdir()) == ["train_64px"]


@pytest.mark.unit
def test_only_the_temporaries_of_dead_builds_are_removed(site) -> None:
    cfg, m = site
    folder = cfg.cache_dir / m.name
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1 if Path("/proc").is_dir() else 2**22 + 1
    stale, live = folder / f"val_64px.tmp{dead}", folder / f"val_64px.tmp{os.getppid()}"
    other = folder / "unrelated.tmp1"  # not a cache build's name: not ours to remove
    for d in (stale, live, other):
        d.mkdir(parents=True)
    load_cached(m, "val", 64, cfg.cache_dir)
    assert not stale.exists() and live.is_dir() and other.is_dir()
