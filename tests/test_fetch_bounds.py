"""Bounded fetching from real servers on loopback: an endless response is cut at its size
limit with little memory, a slow or silent server at its deadline (per file, per run),
fsspec stores alike, and no partial file survives any failure (a full disk included)."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from attack.pull.fetch import fetch_state, read_bytes, read_manifest
from shared.errors import CheckpointError
from tests.conftest import REPO

MiB = 1 << 20


def manifest_json(file: str = "m.safetensors", size: int | None = 1000) -> bytes:
    entry = {
        "name": "m",
        "arch": "resnet18",
        "kind": "global",
        "site": None,
        "round": 1,
        "file": file,
        "sha256": "0" * 64,
        "input": {"size": 48, "channels": 1, "mean": [0.45], "std": [0.22]},
        "metrics": {},
    }
    if size is not None:
        entry["bytes"] = size
    return json.dumps({"complete": True, "models": [entry]}).encode()


def serve(body: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A threaded HTTP server on loopback whose GET handler is `body`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with contextlib.suppress(OSError):  # the client cut us off: what the tests want
                body(self)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _send_manifest(h: http.server.BaseHTTPRequestHandler) -> None:
    data = manifest_json()
    h.send_response(200)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def endless_body(manifest_too: bool) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    """Zero bytes forever (the manifest too, unless `manifest_too` serves a real one)."""

    def body(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path == "/manifest.json" and manifest_too:
            return _send_manifest(h)
        h.send_response(200)  # no Content-Length: the body goes on until the client hangs up
        h.end_headers()
        chunk = b"\0" * 65536
        while True:
            h.wfile.write(chunk)

    return body


def slow_body(h: http.server.BaseHTTPRequestHandler) -> None:
    """A real manifest, and every other file at one byte a second."""
    if h.path == "/manifest.json":
        return _send_manifest(h)
    h.send_response(200)
    h.send_header("Content-Length", "500")
    h.end_headers()
    for _ in range(500):
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(1)


@pytest.fixture(params=[False, True], ids=["manifest", "model-file"])
def endless(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool]]:
    gen = serve(endless_body(request.param))
    yield next(gen), request.param
    next(gen, None)


@pytest.mark.integration
def test_endless_response_is_cut_at_the_size_limit(endless, tmp_path: Path) -> None:
    url, model_file = endless
    tracemalloc.start()
    try:
        if model_file:  # the manifest records 1000 bytes: cut at 1000 + 1 MiB, streamed to disk
            snap = read_manifest(url)
            with pytest.raises(CheckpointError) as e:
                fetch_state(snap, snap.models[0], tmp_path / "cache")
            assert "more than the 1000 bytes the manifest records + 1 MiB" in str(e.value)
        else:  # the manifest itself: at most 16 MiB
            with pytest.raises(CheckpointError) as e:
                read_manifest(url)
            assert "more than the limit of 16777216 bytes" in str(e.value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(e.value) and url in str(e.value)
    assert peak < (6 if model_file else 40) * MiB, peak
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


@pytest.fixture
def slow() -> Iterator[str]:
    gen = serve(slow_body)
    yield next(gen)
    next(gen, None)


@pytest.mark.integration
def test_slow_server_is_cut_off_at_the_deadline(slow: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match=r"cut off at the deadline \(3s\) after [1-4] bytes"):
        read_bytes(slow, "anything", deadline_s=3)
    assert time.monotonic() - t0 < 4.5

    snap = read_manifest(slow, file_deadline_s=3)
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match=r"cut off at the deadline \(3s per file\)"):
        fetch_state(snap, snap.models[0], tmp_path / "cache")
    assert time.monotonic() - t0 < 4.5
    assert list((tmp_path / "cache").iterdir()) == []  # the .part file is gone

    snap = read_manifest(slow, file_deadline_s=100, run_deadline_s=2)
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match="the deadline for all of the run's downloads"):
        fetch_state(snap, snap.models[0], tmp_path / "cache")
    assert time.monotonic() - t0 < 3.5


@pytest.mark.integration
def test_a_silent_server_is_cut_off_at_the_deadline() -> None:
    """It accepts the connection and never answers: the deadline holds although one read
    may wait 60 s."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        t0 = time.monotonic()
        with pytest.raises(CheckpointError, match="cut off at the deadline"):
            read_bytes(f"http://127.0.0.1:{listener.getsockname()[1]}", "manifest.json", deadline_s=2)
        assert time.monotonic() - t0 < 3.5


class SlowMemoryFS(MemoryFileSystem):
    """fsspec's memory filesystem, one read per second (a stalling remote store)."""

    protocol = "slowmem"

    @classmethod
    def _strip_protocol(cls, path):  # type: ignore[no-untyped-def]
        return MemoryFileSystem._strip_protocol("memory://" + str(path).removeprefix("slowmem://"))

    def _open(self, path, mode="rb", **kwargs):  # type: ignore[no-untyped-def]
        inner = super()._open(path, mode, **kwargs)
        if not str(path).endswith(".safetensors"):
            return inner
        original = inner.read

        def read(n: int = -1) -> bytes:
            time.sleep(1)
            return original(min(n, 1) if n and n > 0 else 1)

        inner.read = read
        return inner


@pytest.mark.unit
def test_fsspec_store_has_the_same_bounds(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/bounds/manifest.json", manifest_json(size=1000))
    fs.pipe("/bounds/m.safetensors", b"\0" * (1000 + 2 * MiB))
    snap = read_manifest("memory://bounds")
    with pytest.raises(CheckpointError, match="more than the 1000 bytes the manifest records"):
        fetch_state(snap, snap.models[0], tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*")) == []

    fsspec.register_implementation("slowmem", SlowMemoryFS, clobber=True)
    fs.pipe("/bounds/m.safetensors", b"\0" * 500)
    snap = read_manifest("slowmem://bounds", file_deadline_s=2)
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match="cut off at the deadline"):
        fetch_state(snap, snap.models[0], tmp_path / "cache")
    assert time.monotonic() - t0 < 3.5
    time.sleep(1.2)  # the worker notices the cancellation after its current read
    assert list((tmp_path / "cache").glob("*")) == []


@pytest.mark.unit
def test_manifest_file_pointing_at_a_folder(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "m.safetensors").mkdir(parents=True)
    (store / "manifest.json").write_bytes(manifest_json())
    snap = read_manifest(str(store))
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        fetch_state(snap, snap.models[0], tmp_path / "cache")
    fs = fsspec.filesystem("memory")
    fs.pipe("/folder-store/manifest.json", manifest_json())
    fs.mkdir("/folder-store/m.safetensors")
    fs.pipe("/folder-store/m.safetensors/inside", b"x")
    snap = read_manifest("memory://folder-store")
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        fetch_state(snap, snap.models[0], tmp_path / "cache")


DISK_FULL = """
import resource, signal, sys
from pathlib import Path
import fsspec
from attack.pull.fetch import fetch_state, read_manifest
from shared.errors import CheckpointError
from tests.test_fetch_bounds import manifest_json
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
fs = fsspec.filesystem("memory")
fs.pipe("/full/manifest.json", manifest_json(size=3 << 20))
fs.pipe("/full/m.safetensors", b"\\1" * (3 << 20))
snap = read_manifest("memory://full")
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    fetch_state(snap, snap.models[0], Path(sys.argv[1]))
except CheckpointError as e:
    print(e)
"""


@pytest.mark.integration
def test_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE) makes the write fail like a full disk does."""
    res = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "cannot write the download (File too large)" in res.stdout, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert list((tmp_path / "cache").glob("*")) == []


@pytest.mark.integration
def test_plain_http_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    gen = serve(slow_body)
    url = next(gen)
    try:
        from attack.pull.fetch import wait_for_complete

        with caplog.at_level(logging.WARNING, logger="attack.pull.fetch"):
            wait_for_complete(url, poll_s=0.1)
            warned = [r for r in caplog.records if "plain http://" in r.getMessage()]
            assert len(warned) == 1
    finally:
        next(gen, None)


@pytest.mark.unit
def test_a_declared_size_over_the_cap_is_refused_before_any_download(tmp_path: Path) -> None:
    """1.1 GB declared: refused by name, size and setting, before anything is fetched (the
    store holds no such file at all); the cap is the setting's."""
    fs = fsspec.filesystem("memory")
    fs.pipe("/declared/manifest.json", manifest_json(size=1_100_000_000))
    snap = read_manifest("memory://declared")
    with pytest.raises(CheckpointError) as e:
        fetch_state(snap, snap.models[0], tmp_path / "cache")
    message = str(e.value)
    assert "memory://declared/m.safetensors" in message and "declares 1100000000 bytes" in message
    assert "attack.max_file_mib (512 MiB)" in message and "raise attack.max_file_mib" in message
    assert not (tmp_path / "cache").exists()
    fs.pipe("/declared/manifest.json", manifest_json(size=2000))
    small = read_manifest("memory://declared", max_file_bytes=1000)
    with pytest.raises(CheckpointError, match=r"declares 2000 bytes, more than attack.max_file_mib"):
        fetch_state(small, small.models[0], tmp_path / "cache")


def short_body(promise: bool) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    """A manifest recording 1000 bytes, and the file cut off after 500 of them, with or
    without a Content-Length that promised 1000."""

    def body(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path == "/manifest.json":
            return _send_manifest(h)
        h.send_response(200)
        if promise:
            h.send_header("Content-Length", "1000")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"x" * 500)
        h.wfile.flush()
        h.close_connection = True

    return body


@pytest.mark.integration
@pytest.mark.parametrize("promise", [True, False], ids=["content-length", "no-length"])
def test_a_download_cut_short_is_reported_as_incomplete(promise: bool, tmp_path: Path) -> None:
    gen = serve(short_body(promise))
    url = next(gen)
    try:
        snap = read_manifest(url)
        with pytest.raises(CheckpointError) as e:
            fetch_state(snap, snap.models[0], tmp_path / "cache")
    finally:
        next(gen, None)
    assert f"{url}/m.safetensors: incomplete download: received 500 of 1000 bytes" in str(e.value)
    assert "altered or corrupted" not in str(e.value)
    assert list((tmp_path / "cache").iterdir()) == []


LARGE = 400 * MiB
PEAK_GROWTH_BOUND = 64 * MiB

LARGE_FETCH = """
import sys
from pathlib import Path
from attack.pull.fetch import fetch_state, read_manifest
from shared.errors import CheckpointError
snap = read_manifest(sys.argv[1])
status = Path("/proc/self/status").read_text()  # the resident set now, not the peak so far
now = int(status.split("VmRSS:")[1].split()[0])
try:
    fetch_state(snap, snap.models[0], Path(sys.argv[2]))
except CheckpointError as e:
    print("refused:", e)
# this process's own peak (VmHWM): getrusage's ru_maxrss keeps the parent's peak across
# exec on Linux, so under a pytest worker holding models it measured the worker
peak = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
print("growth", (peak - now) * 1024)
"""


def large_body(h: http.server.BaseHTTPRequestHandler) -> None:
    """A manifest recording 400 MiB (under the cap) whose file is 400 MiB generated on the
    fly, not the bytes its hash names."""
    if h.path == "/manifest.json":
        data = manifest_json(size=LARGE)
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        return
    h.send_response(200)
    h.send_header("Content-Length", str(LARGE))
    h.end_headers()
    chunk = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(LARGE // len(chunk)):
        h.wfile.write(chunk)


@pytest.mark.integration
def test_a_large_file_is_hashed_while_it_streams_to_disk(tmp_path: Path) -> None:
    """400 MiB served: the attack process's peak memory grows by less than 64 MiB (before:
    the whole file was read back to hash it, ~+400 MiB), and the file is refused by its hash."""
    gen = serve(large_body)
    url = next(gen)
    try:
        res = subprocess.run(
            [sys.executable, "-c", LARGE_FETCH, url, str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
    finally:
        next(gen, None)
    assert res.returncode == 0, res.stderr
    assert "refused:" in res.stdout and "sha256 mismatch" in res.stdout, res.stdout + res.stderr
    growth = int(res.stdout.rsplit("growth", 1)[1])
    assert growth < PEAK_GROWTH_BOUND, f"peak RSS grew by {growth / MiB:.0f} MiB"
    assert list((tmp_path / "cache").iterdir()) == []
