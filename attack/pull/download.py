"""Bounded transfers from a checkpoint store: every byte pulled from a folder, an http(s)://
server or an fsspec URL passes through here with a size cap and an overall deadline (for
the whole transfer, not per read: a server that sends one byte every few seconds is cut
off all the same), and is handed on chunk by chunk, so memory stays small whatever the
other side sends."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import CheckpointError

MiB = 1 << 20
CHUNK = 256 * 1024
IDLE_TIMEOUT_S = 60.0  # one read (or the connect) may wait this long, within the deadline

Sink = Callable[[bytes], object]


@dataclass(frozen=True)
class Limits:
    """How much may come, and until when (a time.monotonic() value)."""

    max_bytes: int
    deadline: float
    size_rule: str  # says where max_bytes comes from, for messages
    time_rule: str  # says where the deadline comes from, for messages
    idle_s: float = IDLE_TIMEOUT_S
    expected: int | None = None  # the size the other side said it would send, where known

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def incomplete(self, where: str, got: int, why: str, expected: int | None = None) -> CheckpointError:
        size = expected if expected is not None else self.expected
        of = f" of {size}" if size is not None else ""
        return CheckpointError(
            f"{where}: incomplete download: received {got}{of} bytes ({why}); check the store "
            "and the network, then run again"
        )

    def too_big(self, where: str, got: int) -> CheckpointError:
        return CheckpointError(
            f"{where}: cut off after {got} bytes, more than {self.size_rule}; the store serves "
            "something else than what its manifest lists: refusing it"
        )

    def too_slow(self, where: str, got: int) -> CheckpointError:
        return CheckpointError(
            f"{where}: cut off at the deadline ({self.time_rule}) after {got} bytes; the server "
            "is too slow or stalls: check it and the network, then run again"
        )


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def join(location: str, name: str) -> str:
    """Where `name` lives in the store at `location` (for messages and fetching)."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    return location.rstrip("/") + "/" + name if is_url(location) else str(Path(location) / name)


def stream(
    location: str, name: str, sink: Sink, limits: Limits, context: ssl.SSLContext | None
) -> int | None:
    """Pass the bytes of `name` in the store at `location` to `sink`, within `limits`;
    return the size the source announced and then delivered in full (the file's size, a
    Content-Length), or None where it announced none. A transfer that delivers less than it
    announced is an incomplete download."""
    where = join(location, name)
    if not is_url(location):
        return _local(Path(where), sink, limits)
    if location.startswith(("http://", "https://")):
        return _http(where, sink, limits, context)
    return _fsspec(where, sink, limits)


def _local(path: Path, sink: Sink, limits: Limits) -> int:
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a file; fix the manifest") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror})") from None
    with fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a regular file (a device, a pipe, ...): refusing it")
        if st.st_size > limits.max_bytes:
            raise limits.too_big(str(path), st.st_size)
        try:
            got = _pump(lambda: fh.read(CHUNK), sink, limits, str(path))
        except _BrokenOff as e:
            raise CheckpointError(f"{path}: cannot read it after {e.got} bytes ({e.cause})") from None
        if got != st.st_size:
            raise limits.incomplete(str(path), got, "the file changed while it was read", st.st_size)
        return got


def _pump(
    read: Callable[[], bytes],
    sink: Sink,
    limits: Limits,
    where: str,
    cancelled: threading.Event | None = None,
) -> int:
    """Read chunks until EOF, checking the cap and the deadline after each one."""
    got = 0
    while True:
        try:
            chunk = read()
        except (OSError, http.client.HTTPException) as e:
            raise _BrokenOff(got, e) from None
        if not chunk or (cancelled is not None and cancelled.is_set()):
            return got
        got += len(chunk)
        if got > limits.max_bytes:
            raise limits.too_big(where, got)
        if limits.remaining() <= 0:
            raise limits.too_slow(where, got)
        sink(chunk)


class _BrokenOff(Exception):
    """A read failed after `got` bytes (the connection reset, a chunk cut short)."""

    def __init__(self, got: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.got, self.cause = got, cause


class _Cutter:
    """Shuts the connection's socket down at the deadline, whatever call is blocked on it."""

    def __init__(self, limits: Limits) -> None:
        self.fired = threading.Event()
        self.sock: socket.socket | None = None
        self.timer = threading.Timer(max(0.0, limits.remaining()), self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        self.fired.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):  # the plain socket's shutdown, also under TLS
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


def _http(url: str, sink: Sink, limits: Limits, context: ssl.SSLContext | None) -> int | None:
    parts = urllib.parse.urlsplit(url)
    timeout = max(0.1, min(limits.idle_s, limits.remaining()))
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = context or ssl.create_default_context()
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    cutter, got = _Cutter(limits), 0
    cutter.timer.start()
    try:
        try:
            conn.connect()
        except OSError as e:
            if cutter.fired.is_set():
                raise limits.too_slow(url, 0) from None
            raise CheckpointError(f"{url}: unreachable ({getattr(e, 'reason', None) or e})") from None
        cutter.sock = conn.sock
        try:
            if cutter.fired.is_set():
                raise limits.too_slow(url, 0)
            conn.request("GET", parts.path or "/", headers={"Accept-Encoding": "identity"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            if cutter.fired.is_set():
                raise limits.too_slow(url, 0) from None
            if isinstance(e, ssl.SSLError):  # TLS 1.3: a refused client certificate shows here
                raise CheckpointError(
                    f"{url}: the server ended the TLS session ({e.reason or e}); a store served by "
                    "`deploy serve-store` wants the attack host's client certificate: pass "
                    "--client-cert attack.crt --client-key attack.key"
                ) from None
            raise CheckpointError(f"{url}: no answer ({getattr(e, 'reason', None) or e})") from None
        if resp.status != 200:
            hint = "; redirects are not followed: give the store's final address" if resp.status < 400 else ""
            raise CheckpointError(f"{url}: HTTP {resp.status} {resp.reason}{hint}")
        header = resp.getheader("Content-Length")
        length = int(header) if header is not None and header.isdigit() else None
        if length is not None and length > limits.max_bytes:
            raise limits.too_big(url, length)
        try:
            got = _pump(lambda: resp.read1(CHUNK), sink, limits, url)
        except _BrokenOff as e:
            if cutter.fired.is_set():
                raise limits.too_slow(url, e.got) from None
            raise limits.incomplete(url, e.got, f"the transfer broke off: {e.cause}", length) from None
        if cutter.fired.is_set():
            raise limits.too_slow(url, got)
        if length is not None and got < length:
            raise limits.incomplete(url, got, "the server closed the connection early", length)
        return length
    finally:
        cutter.timer.cancel()
        conn.close()


def _fsspec(url: str, sink: Sink, limits: Limits) -> int | None:
    """Through fsspec, in a worker thread: a backend's blocking call cannot be interrupted,
    but we stop waiting for it at the deadline (and it stops after its current chunk)."""
    cancelled, got = threading.Event(), [0]
    size: list[int | None] = []
    error: list[BaseException] = []

    def counted(chunk: bytes) -> None:
        got[0] += len(chunk)
        sink(chunk)

    def work() -> None:
        try:
            size.append(_fsspec_pump(url, counted, limits, cancelled))
        except BaseException as e:  # handed to the waiting thread
            error.append(e)

    worker = threading.Thread(target=work, daemon=True, name="fsspec-fetch")
    worker.start()
    worker.join(max(0.0, limits.remaining()))
    if worker.is_alive():
        cancelled.set()
        raise limits.too_slow(url, got[0])
    if error:
        raise error[0]
    return size[0]


def _fsspec_pump(url: str, sink: Sink, limits: Limits, cancelled: threading.Event) -> int | None:
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        if fs.isdir(path):
            raise CheckpointError(f"{url}: is a folder, not a file; fix the manifest")
        size = fs.size(path)
        if size is not None and size > limits.max_bytes:
            raise limits.too_big(url, int(size))
        with fs.open(path, "rb") as fh:
            got = _pump(lambda: fh.read(CHUNK), sink, limits, url, cancelled)
        if size is not None and got < size and not cancelled.is_set():
            raise limits.incomplete(url, got, "the store sent less than the file's size", int(size))
        return None if size is None else int(size)
    except _BrokenOff as e:
        raise limits.incomplete(url, e.got, f"the transfer broke off: {e.cause}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{url}: not found") from None
    except (OSError, ValueError, ImportError) as e:
        raise CheckpointError(f"{url}: cannot read ({e})") from None
