"""What the Fleet proxy (deploy/hosts/fleet_proxy.py) checks before it reads a request body
or keeps a connection: its limits and their settings, the per-address connection cap and
request-rate bucket, the process-wide budget of request-body bytes in flight, the node
authentication flwr 1.42's SuperNodes send, and a log that names each refused address at
most once per interval. Pure parts, driven by the proxy's event loop (no sockets here).

Node authentication (flwr 1.42, supernode/node_auth_http_interceptor.py and the
SuperLink's superlink/routers/fleet/node_auth.py): every Fleet request carries
`flwr-public-key` (base64 of the node's PEM SubjectPublicKeyInfo, exactly the bytes
`flwr supernode register` stores), `flwr-timestamp` (ISO 8601, UTC) and `flwr-signature`
(base64 ECDSA-SHA256 over the timestamp's ASCII bytes). The SuperLink accepts a timestamp
from 5 s in the future to 305 s in the past and then checks that the key is registered
and matches the node named in the body. The proxy checks the same things except the
node id (that needs the body): the SuperLink stays the second line.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import logging
import sqlite3
import time
from base64 import b64decode
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import DeploymentError

log = logging.getLogger(__name__)

# flwr.common.constant / flwr.supercore.constant in 1.42 (tests/test_fleet_proxy.py compares)
PUBLIC_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER = "flwr-public-key", "flwr-signature", "flwr-timestamp"
TIMESTAMP_TOLERANCE_S, CLOCK_SKEW_S = 300, 5
# What the SuperLink answers an activation with a key it does not know (flwr's error catalog:
# FLEET_NODE_ACTIVATION_FAILED); the SuperNode then exits with code 305 and this message.
ACTIVATION_FAILED = (412, b'{"code":2004,"detail":"Failed to activate SuperNode."}')
UNAUTHORIZED = (401, b'{"detail":"Invalid SuperNode authentication"}')
_MAX_HEADER = 2048  # a P-521 PEM key in base64 is ~360 characters


@dataclass(frozen=True)
class FleetLimits:
    """The proxy's limits (docs/deployment.md, "Load limits", says what each protects)."""

    handshake_timeout_s: float = 10.0  # TCP accepted -> TLS handshake done
    header_timeout_s: float = 10.0  # connection ready or last response -> a whole request head
    body_grace_s: float = 30.0  # a body may take body_grace_s + length / body_min_rate
    body_min_rate: int = 32 * 1024  # bytes per second
    max_connections_per_address: int = 32
    max_connections: int = 1024
    requests_per_s: float = 100.0  # per address, refilled continuously
    request_burst: int = 500  # per address
    max_body_bytes: int = 64 * 2**20  # one request
    inflight_body_bytes: int = 256 * 2**20  # all requests being forwarded together
    budget_wait_s: float = 30.0  # how long a body waits for room in the budget
    log_interval_s: float = 60.0  # one log line per refused address and reason per interval

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise DeploymentError(
                    f"fleet limit {option(f.name)}: must be positive, got {getattr(self, f.name)}"
                )
        if self.max_body_bytes > self.inflight_body_bytes:
            raise DeploymentError(
                f"fleet limits: {option('max_body_bytes')} ({self.max_body_bytes}) exceeds "
                f"{option('inflight_body_bytes')} ({self.inflight_body_bytes}); no body that size could pass"
            )

    def argv(self) -> list[str]:
        """The command-line flags that give these limits (fleet_proxy's own entry)."""
        out: list[str] = []
        for f in dataclasses.fields(self):
            out += [option(f.name), str(getattr(self, f.name))]
        return out

    def with_pairs(self, pairs: list[str]) -> FleetLimits:
        """These limits with `name=value` overrides (`--fleet-limit header-timeout-s=5`)."""
        known = {f.name.replace("_", "-"): f for f in dataclasses.fields(self)}
        changes: dict[str, float | int] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            f = known.get(name.strip().lstrip("-").replace("_", "-"))
            if not sep or f is None:
                raise DeploymentError(
                    f"--fleet-limit {pair!r}: expected NAME=VALUE with NAME one of {', '.join(known)}"
                )
            kind = int if f.type in ("int", int) else float
            try:
                changes[f.name] = kind(value)
            except ValueError:
                raise DeploymentError(f"--fleet-limit {pair!r}: {value!r} is not a number") from None
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def option(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def client_key(host: str) -> str:
    """What the per-address limits count by: an IPv4 address, or an IPv6 /64 (one host
    commonly holds a whole /64, so counting single IPv6 addresses would cap nothing)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class TokenBucket:
    """Per-address request rate: `burst` tokens, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._state: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def allow(self, address: str) -> bool:
        now = self.clock()
        tokens, at = self._state.get(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._state[address] = (tokens - 1.0 if ok else tokens, now)
        if len(self._state) > 10_000:
            self._forget_full(now)
        return ok

    def _forget_full(self, now: float) -> None:
        """Drop the addresses whose bucket has refilled (they start full anyway)."""
        full = [a for a, (t, at) in self._state.items() if t + (now - at) * self.rate >= self.burst]
        for a in full:
            del self._state[a]


class ConnectionGate:
    """Open connections per address and in all; `admit` refuses past either cap."""

    def __init__(self, per_address: int, total: int) -> None:
        self.per_address, self.total = per_address, total
        self.open: dict[str, int] = {}
        self.count = 0

    def admit(self, address: str) -> bool:
        n = self.open.get(address, 0)
        if n >= self.per_address or self.count >= self.total:
            return False
        self.open[address] = n + 1
        self.count += 1
        return True

    def release(self, address: str) -> None:
        n = self.open.get(address, 0) - 1
        if n < 0:
            return
        self.count -= 1
        if n:
            self.open[address] = n
        else:
            del self.open[address]


class ByteBudget:
    """Request-body bytes being forwarded, for the whole process: a body waits (at most
    `wait_s`) until its declared length fits under `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._room = asyncio.Condition()

    async def acquire(self, n: int, wait_s: float) -> bool:
        if n > self.capacity:
            return False
        async with self._room:
            try:
                await asyncio.wait_for(self._room.wait_for(lambda: self.used + n <= self.capacity), wait_s)
            except TimeoutError:
                return False
            self.used += n
            return True

    async def release(self, n: int) -> None:
        async with self._room:
            self.used -= n
            self._room.notify_all()


class RateLimitedLog:
    """A refusal is logged once per (address, reason) per `interval`, with how many were not."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (logged at, suppressed since)

    def line(self, address: str, reason: str, detail: str = "") -> str | None:
        """The line to log now, or None when this address and reason were logged recently
        (`detail`, e.g. the path asked for, is shown but not counted as another reason)."""
        now, key = self.clock(), (address, reason)
        if key not in self._last and len(self._last) >= 10_000:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
            if len(self._last) >= 10_000:  # that many addresses at once: one line for them all
                key = ("many addresses", reason)
        at, suppressed = self._last.get(key, (-float("inf"), 0))
        if now - at < self.interval:
            self._last[key] = (at, suppressed + 1)
            return None
        self._last[key] = (now, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        return f"fleet proxy: refused {key[0]}: {reason}{detail}{more}"

    def refused(self, address: str, reason: str, detail: str = "") -> None:
        text = self.line(address, reason, detail)
        if text is not None:
            log.warning(text)


@dataclass(frozen=True)
class SignedHeaders:
    """The node-authentication headers of one request, decoded."""

    public_key: bytes
    signature: bytes
    timestamp: str


def signed_headers(headers: Mapping[str, str]) -> SignedHeaders | None:
    """The three headers, base64-decoded, or None when one is missing or malformed."""
    try:
        raw = [headers[h] for h in (PUBLIC_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER)]
        if any(len(v) > _MAX_HEADER for v in raw):
            return None
        return SignedHeaders(b64decode(raw[0], validate=True), b64decode(raw[1], validate=True), raw[2])
    except (KeyError, binascii.Error, ValueError):
        return None


def fresh(timestamp: str, now: dt.datetime) -> bool:
    """Within the SuperLink's window: at most 5 s ahead, less than 305 s old."""
    try:
        age = (now - dt.datetime.fromisoformat(timestamp)).total_seconds()
    except (ValueError, TypeError):
        return False
    return -CLOCK_SKEW_S < age < TIMESTAMP_TOLERANCE_S + CLOCK_SKEW_S


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey | None:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def signature_valid(key: ec.EllipticCurvePublicKey, signed: SignedHeaders) -> bool:
    try:
        key.verify(signed.signature, signed.timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, UnicodeEncodeError):
        return False
    return True


def registered_keys(database: Path) -> frozenset[bytes]:
    """The public keys the SuperLink knows (not unregistered), read from its SQLite state
    (flwr 1.42: table `node`, columns `public_key`, `status`); empty when it has none yet."""
    if not Path(database).is_file():
        return frozenset()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            rows = db.execute(
                "SELECT public_key FROM node WHERE public_key IS NOT NULL AND status != 'unregistered'"
            ).fetchall()
    except sqlite3.Error as e:
        if "no such table" in str(e):
            return frozenset()  # the SuperLink has not created its schema yet
        raise DeploymentError(f"{database}: cannot read the SuperLink's registered keys ({e})") from None
    return frozenset(bytes(r[0]) for r in rows)


class KeyRegistry:
    """The registered keys, cached: re-read when an unknown key is presented (at most once
    per `min_interval` s, so that a key registered a moment ago is found and strangers
    cannot make it read the database more often) and when older than `max_age` s (so that
    an unregistered key stops passing)."""

    def __init__(
        self,
        load: Callable[[], frozenset[bytes]],
        min_interval: float = 1.0,
        max_age: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load, self.min_interval, self.max_age, self.clock = load, min_interval, max_age, clock
        self._keys: dict[bytes, ec.EllipticCurvePublicKey | None] = {}
        self._loaded_at = -float("inf")
        self._lock = asyncio.Lock()

    async def key(self, public_key: bytes) -> ec.EllipticCurvePublicKey | None:
        """The parsed key when `public_key` is registered, else None."""
        asked = self.clock()
        if public_key in self._keys and asked - self._loaded_at < self.max_age:
            return self._keys[public_key]
        async with self._lock:
            if self._loaded_at < asked:  # nobody re-read it since this request asked
                wait = self._loaded_at + self.min_interval - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._reload()
        return self._keys.get(public_key)

    async def _reload(self) -> None:
        self._loaded_at = self.clock()
        try:
            keys = await asyncio.to_thread(self._load)
        except DeploymentError as e:
            log.error("fleet proxy: %s; refusing every request until it can be read", e)
            keys = frozenset()
        old = self._keys
        self._keys = {k: old[k] if k in old else load_public_key(k) for k in keys}


class NodeAuth:
    """The proxy's first line of node authentication (the SuperLink's is the second)."""

    def __init__(self, registry: KeyRegistry, now: Callable[[], dt.datetime] | None = None) -> None:
        self.registry = registry
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    async def refusal(self, headers: Mapping[str, str], path: str) -> tuple[int, bytes, str] | None:
        """None when the request is signed by a registered key with a fresh timestamp; else
        (status, body, reason) as the SuperLink would answer it."""
        signed = signed_headers(headers)
        if signed is None:
            return (*UNAUTHORIZED, "no valid node-authentication headers")
        if not fresh(signed.timestamp, self.now()):
            return (*UNAUTHORIZED, "node-authentication timestamp missing, malformed or outside the window")
        key = await self.registry.key(signed.public_key)
        if key is None:
            status = ACTIVATION_FAILED if path.endswith("/activate-node") else UNAUTHORIZED
            return (*status, "public key not registered")
        if not signature_valid(key, signed):
            return (*UNAUTHORIZED, "invalid node-authentication signature")
        return None
