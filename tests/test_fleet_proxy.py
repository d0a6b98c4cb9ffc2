"""The Fleet proxy's guards (deploy/hosts/fleet_guard.py), each real: node authentication
against headers made by flwr 1.42's own SuperNode interceptor and keys registered through
flwr's own SQLite link state, the per-address rate bucket and connection gate, the
process-wide body budget, the rate-limited refusal log and the limits' settings. The
proxy under attack, over the network, is in tests/test_deploy_multihost.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.hosts import fleet_guard as g
from deploy.hosts.fleet_guard import (
    ByteBudget,
    ConnectionGate,
    FleetLimits,
    KeyRegistry,
    NodeAuth,
    RateLimitedLog,
    TokenBucket,
    registered_keys,
)
from deploy.hosts.fleet_proxy import add_limit_flags, fleet_proxy_command
from shared.errors import DeploymentError

HEARTBEAT = "/v1/fleet/send-node-heartbeat"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def flwr_headers(private: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The headers flwr's SuperNode sends with a Fleet request (its own interceptor)."""
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    request = httpx.Request("POST", f"https://superlink:9093{HEARTBEAT}", content=b"")
    seen: dict[str, str] = {}

    def call_next(context: SimpleNamespace) -> None:
        seen.update(context.request.headers)

    NodeAuthHttpInterceptor(private, private.public_key()).intercept(
        SimpleNamespace(request=request), call_next
    )
    return seen


@pytest.fixture
def link_state(tmp_path: Path):
    """flwr's own SQLite link state (what the SuperLink writes) at tmp_path/superlink.db."""
    from flwr.superlink.config_loader import get_objectstore_linkstate_factories
    from flwr.superlink.federation import NoOpFederationManager

    _, factory = get_objectstore_linkstate_factories(
        str(tmp_path / "superlink.db"), NoOpFederationManager(simulation=False)
    )
    return factory.state()


def register(state, private: ec.EllipticCurvePrivateKey) -> int:
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    return int(state.create_node("operator", "site", public_key_to_bytes(private.public_key()), 30))


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.mark.unit
def test_header_names_and_window_are_flowers() -> None:
    from flwr.common import constant as c
    from flwr.supercore import constant as sc

    assert (g.TIMESTAMP_HEADER, g.TIMESTAMP_TOLERANCE_S, g.CLOCK_SKEW_S) == (
        c.TIMESTAMP_HEADER,
        c.TIMESTAMP_TOLERANCE,
        c.SYSTEM_TIME_TOLERANCE,
    )
    assert (g.PUBLIC_KEY_HEADER, g.SIGNATURE_HEADER) == (
        sc.FLEET_HTTP_PUBLIC_KEY_HEADER,
        sc.FLEET_HTTP_SIGNATURE_HEADER,
    )


@pytest.mark.unit
def test_registered_keys_follow_the_superlinks_state(tmp_path: Path, link_state) -> None:
    db = tmp_path / "superlink.db"
    assert registered_keys(tmp_path / "missing.db") == frozenset()
    a, b = new_key(), new_key()
    node_a = register(link_state, a)
    register(link_state, b)
    assert len(registered_keys(db)) == 2
    link_state.delete_node("operator", node_a)  # `flwr supernode unregister`
    assert len(registered_keys(db)) == 1


@pytest.mark.unit
def test_auth_accepts_exactly_what_a_supernode_sends(tmp_path: Path, link_state) -> None:
    site, stranger = new_key(), new_key()
    register(link_state, site)
    auth = NodeAuth(KeyRegistry(lambda: registered_keys(tmp_path / "superlink.db"), min_interval=0.01))

    def refusal(headers: dict[str, str], path: str = HEARTBEAT) -> tuple[int, bytes, str] | None:
        return asyncio.run(auth.refusal(headers, path))

    good = flwr_headers(site)
    assert refusal(good) is None
    # a stranger's own key, correctly signed: 401, and at activation what the SuperLink answers
    theirs = flwr_headers(stranger)
    assert refusal(theirs)[:2] == g.UNAUTHORIZED
    assert refusal(theirs, "/v1/fleet/activate-node")[:2] == g.ACTIVATION_FAILED
    # the site's public key with a signature made by another key
    forged = {
        **good,
        g.SIGNATURE_HEADER: theirs[g.SIGNATURE_HEADER],
        g.TIMESTAMP_HEADER: theirs[g.TIMESTAMP_HEADER],
    }
    assert refusal(forged)[2] == "invalid node-authentication signature"
    # the signed timestamp must be the one sent
    other_time = (dt.datetime.fromisoformat(good[g.TIMESTAMP_HEADER]) - dt.timedelta(seconds=1)).isoformat()
    assert refusal({**good, g.TIMESTAMP_HEADER: other_time})[0] == 401
    for broken in (
        {k: v for k, v in good.items() if k != g.SIGNATURE_HEADER},
        {**good, g.PUBLIC_KEY_HEADER: "not base64!"},
        {**good, g.TIMESTAMP_HEADER: "yesterday"},
        {**good, g.PUBLIC_KEY_HEADER: "A" * 4000},
    ):
        assert refusal(broken)[:2] == g.UNAUTHORIZED


@pytest.mark.unit
def test_auth_window_is_the_superlinks() -> None:
    key = new_key()
    signed_at = dt.datetime.fromisoformat(flwr_headers(key)[g.TIMESTAMP_HEADER])
    for offset_s, ok in [(-4, True), (-6, False), (0, True), (304, True), (306, False)]:
        assert g.fresh(signed_at.isoformat(), signed_at + dt.timedelta(seconds=offset_s)) is ok, offset_s
    assert not g.fresh(signed_at.replace(tzinfo=None).isoformat(), signed_at)  # naive: refused


@pytest.mark.unit
def test_registry_rereads_for_an_unknown_key_at_most_once_per_interval() -> None:
    keys: set[bytes] = {b"A"}
    loads: list[int] = []
    clock = Clock()

    def load() -> frozenset[bytes]:
        loads.append(1)
        return frozenset(keys)

    reg = KeyRegistry(load, min_interval=0.05, max_age=30, clock=clock)

    async def scenario() -> None:
        await reg.key(b"A")
        assert len(loads) == 1
        await reg.key(b"A")  # cached
        assert len(loads) == 1
        keys.add(b"B")  # registered a moment ago: found at once
        clock.t += 0.1
        await reg.key(b"B")
        assert b"B" in reg._keys and len(loads) == 2
        # a burst of strangers' keys within the interval: one more read, not one each
        clock.t += 0.01
        await asyncio.gather(*(reg.key(bytes([i])) for i in range(50)))
        assert len(loads) == 3
        clock.t += 31  # older than max_age: re-read even for a known key (an unregistered key stops)
        keys.discard(b"A")
        await reg.key(b"A")
        assert b"A" not in reg._keys and len(loads) == 4

    asyncio.run(scenario())


@pytest.mark.unit
def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.allow("10.0.0.1") for _ in range(6)] == [True] * 5 + [False]
    assert bucket.allow("10.0.0.2")  # each address its own bucket
    clock.t += 0.25  # 2.5 tokens back
    assert [bucket.allow("10.0.0.1") for _ in range(3)] == [True, True, False]
    clock.t += 100
    assert sum(bucket.allow("10.0.0.1") for _ in range(10)) == 5  # never more than the burst


@pytest.mark.unit
def test_token_bucket_forgets_idle_addresses() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=2, clock=clock)
    for i in range(10_001):
        bucket.allow(f"a{i}")
    clock.t += 5
    bucket.allow("late")
    assert len(bucket._state) <= 2


@pytest.mark.unit
def test_connection_gate_caps_each_address_and_the_total() -> None:
    gate = ConnectionGate(per_address=2, total=3)
    assert [gate.admit("a") for _ in range(3)] == [True, True, False]
    assert gate.admit("b") and not gate.admit("c")  # total reached
    gate.release("a")
    assert gate.admit("c")
    gate.release("never-admitted")
    for a in ("a", "b", "c"):
        gate.release(a)
    assert gate.count == 0 and gate.open == {}


@pytest.mark.unit
def test_byte_budget_bounds_bodies_in_flight_for_the_process() -> None:
    async def scenario() -> None:
        budget = ByteBudget(100)
        assert await budget.acquire(60, 1) and await budget.acquire(40, 1)
        assert not await budget.acquire(1, 0.05)  # full: refused after the wait
        assert not await budget.acquire(101, 5)  # never fits: refused at once
        waiter = asyncio.create_task(budget.acquire(50, 5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await budget.release(60)
        assert await waiter and budget.used == 90

    asyncio.run(scenario())


@pytest.mark.unit
def test_refusals_are_logged_once_per_address_and_interval() -> None:
    clock = Clock()
    log = RateLimitedLog(60, clock=clock)
    first = log.line("10.0.0.9", "no complete request head within 10s")
    assert first is not None and "10.0.0.9" in first
    assert all(log.line("10.0.0.9", "no complete request head within 10s") is None for _ in range(500))
    assert log.line("10.0.0.8", "no complete request head within 10s") is not None
    clock.t += 61
    again = log.line("10.0.0.9", "no complete request head within 10s")
    assert again is not None and "500 more" in again


@pytest.mark.unit
def test_addresses_count_by_ipv4_address_or_ipv6_64() -> None:
    assert g.client_key("10.0.0.7") == "10.0.0.7"
    assert g.client_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert g.client_key("2001:db8:1:2:aaaa::1") == g.client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert g.client_key("2001:db8:1:3::1") != g.client_key("2001:db8:1:2::1")


@pytest.mark.unit
def test_the_refusal_log_stays_bounded_for_many_addresses() -> None:
    clock = Clock()
    log = RateLimitedLog(60, clock=clock)
    lines = [log.line(f"a{i}", "not a Fleet call", f" (GET /x{i})") for i in range(10_050)]
    assert sum(line is not None for line in lines) == 10_001  # the rest share one line
    assert len(log._last) <= 10_001


@pytest.mark.unit
def test_limits_from_pairs_flags_and_command() -> None:
    limits = FleetLimits().with_pairs(["header-timeout-s=5", "max_connections_per_address=8"])
    assert limits.header_timeout_s == 5.0 and limits.max_connections_per_address == 8
    for bad in ["header-timeout-s", "nope=1", "request-burst=many", "request-burst=0"]:
        with pytest.raises(DeploymentError, match=r"request-burst|NAME=VALUE|positive|not a number"):
            FleetLimits().with_pairs([bad])
    with pytest.raises(DeploymentError, match="max-body-bytes"):
        FleetLimits(max_body_bytes=2**30)
    cmd = fleet_proxy_command(
        "0.0.0.0", 9093, 9091, Path("/srv/server"), Path("/srv/state/superlink.db"), limits
    )
    assert cmd[cmd.index("--superlink-database") + 1] == "/srv/state/superlink.db"
    import argparse

    p = argparse.ArgumentParser()
    add_limit_flags(p)
    args = p.parse_args(limits.argv())
    assert FleetLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FleetLimits)}) == limits
    assert FleetLimits(
        **{f.name: getattr(p.parse_args([]), f.name) for f in dataclasses.fields(FleetLimits)}
    ) == (FleetLimits())


# --- the proxy itself on loopback, with short limits: each test dials from its own
# loopback address (127.0.0.N), so that caps and buckets are its own.

SITE_KEY = ec.generate_private_key(ec.SECP384R1())
SHORT = FleetLimits(
    handshake_timeout_s=1,
    header_timeout_s=1,
    body_grace_s=1,
    body_min_rate=1_000_000,
    max_connections_per_address=4,
    requests_per_s=2,
    request_burst=30,
    max_body_bytes=8 * 2**20,
    inflight_body_bytes=8 * 2**20,
    budget_wait_s=1,
)


async def _upstream(seen: list[int]) -> asyncio.AbstractServer:
    """A stand-in SuperLink: reads each request's whole body, answers how long it was."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length")
        )
        try:
            body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):  # the proxy gave up on a body
            writer.close()
            return
        seen.append(len(body))
        answer = b"got %d" % len(body)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer)
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory):
    """The proxy (TLS, node authentication against flwr's link state) run as the server host
    runs it (uvicorn's run, in a thread here), forwarding to a stand-in upstream in a thread
    of its own; yields (port, bodies the upstream received)."""
    import functools
    import ssl
    import threading

    from flwr.superlink.config_loader import get_objectstore_linkstate_factories
    from flwr.superlink.federation import NoOpFederationManager

    from deploy.hosts.credentials import make_credentials
    from deploy.hosts.fleet_proxy import Front, proxy_server

    tmp = tmp_path_factory.mktemp("fleet-proxy")
    creds = make_credentials(tmp / "creds", ["127.0.0.1"], [])
    _, factory = get_objectstore_linkstate_factories(
        str(tmp / "superlink.db"), NoOpFederationManager(simulation=False)
    )
    register(factory.state(), SITE_KEY)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(creds.server_cert), str(creds.server_key))
    registry = KeyRegistry(functools.partial(registered_keys, tmp / "superlink.db"), min_interval=0.05)
    front = Front(SHORT, NodeAuth(registry), tls)
    seen: list[int] = []
    up_loop = asyncio.new_event_loop()
    upstream = up_loop.run_until_complete(_upstream(seen))
    up_port = upstream.sockets[0].getsockname()[1]
    threading.Thread(target=up_loop.run_forever, daemon=True).start()
    server = proxy_server("127.0.0.1", 0, f"http://127.0.0.1:{up_port}", False, front)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the proxy did not start"
        time.sleep(0.02)
    yield server.servers[0].sockets[0].getsockname()[1], seen
    server.should_exit = True
    thread.join(10)
    up_loop.call_soon_threadsafe(up_loop.stop)


def _dial(port: int, source: str, handshake: bool = True) -> socket.socket:
    import ssl

    raw = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    if not handshake:
        return raw
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx.wrap_socket(raw)


def _closed_after(conn: socket.socket) -> float:
    """Seconds until the server closes `conn` (reads nothing)."""
    t0 = time.monotonic()
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass
    return time.monotonic() - t0


def _post(conn: socket.socket, headers: dict[str, str], body: bytes, length: int | None = None) -> str:
    """Sends a push-object head and `body` (a prefix when `length` says more), returns the status line."""
    framing = f"content-length: {len(body) if length is None else length}\r\n"
    head = "POST /v1/fleet/push-object HTTP/1.1\r\nhost: x\r\n" + framing
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.startswith("flwr-")) + "\r\n"
    with contextlib.suppress(OSError):
        conn.sendall(head.encode() + body)
    return conn.makefile("rb").readline().decode().strip()


@pytest.mark.integration
def test_fresh_connections_must_handshake_and_send_a_head_in_time(proxy) -> None:
    port, _ = proxy
    assert 0.8 < _closed_after(_dial(port, "127.0.0.2")) < 6  # TLS done, nothing sent
    assert 0.8 < _closed_after(_dial(port, "127.0.0.2", handshake=False)) < 6  # no handshake
    conn = _dial(port, "127.0.0.2")
    t0 = time.monotonic()
    with contextlib.suppress(OSError):  # a head trickled a byte every 0.2 s
        for byte in b"POST /v1/fleet/pull-messages HTTP/1.1\r\nhost: x\r\n":
            conn.sendall(bytes([byte]))
            time.sleep(0.2)
    assert 0.8 < time.monotonic() - t0 < 6


@pytest.mark.integration
def test_handshakes_complete_at_once(proxy) -> None:
    """Under uvloop, about half stalled until the handshake timeout (the ClientHello reached
    the HTTP parser before start_tls took the connection over): the proxy runs asyncio's loop."""
    port, _ = proxy
    for _ in range(15):
        t0 = time.monotonic()
        _dial(port, "127.0.0.9").close()
        assert time.monotonic() - t0 < SHORT.handshake_timeout_s * 0.9


@pytest.mark.integration
def test_connections_are_capped_per_address(proxy) -> None:
    port, _ = proxy
    held = [_dial(port, "127.0.0.3") for _ in range(SHORT.max_connections_per_address)]
    with pytest.raises(OSError):  # refused before the handshake
        _dial(port, "127.0.0.3")
    _dial(port, "127.0.0.4").close()  # another address is not affected
    for conn in held:
        conn.close()
    time.sleep(0.3)
    _dial(port, "127.0.0.3").close()


@pytest.mark.integration
def test_bodies_are_read_only_when_signed_by_a_registered_key(proxy) -> None:
    port, seen = proxy
    stranger = flwr_headers(new_key())
    assert " 401 " in _post(_dial(port, "127.0.0.5"), {}, b"\0" * 2**20, length=8 * 2**20)
    assert " 401 " in _post(_dial(port, "127.0.0.5"), stranger, b"\0" * 2**20, length=8 * 2**20)
    assert seen == []  # nothing reached the upstream
    assert " 200 " in _post(_dial(port, "127.0.0.5"), flwr_headers(SITE_KEY), b"\1" * 3 * 2**20)
    assert seen == [3 * 2**20]  # streamed through whole
    assert " 413 " in _post(_dial(port, "127.0.0.5"), flwr_headers(SITE_KEY), b"", length=9 * 2**20)


@pytest.mark.integration
def test_a_signed_body_slower_than_the_minimum_rate_is_cut(proxy) -> None:
    port, seen = proxy
    conn = _dial(port, "127.0.0.6")
    t0 = time.monotonic()
    status = _post(conn, flwr_headers(SITE_KEY), b"\0" * 100, length=2**20)  # then stalls
    assert " 408 " in status and time.monotonic() - t0 < 5
    assert 100 not in seen


@pytest.mark.integration
def test_each_address_has_a_request_rate(proxy) -> None:
    port, _ = proxy
    answers = []
    for _ in range(SHORT.request_burst):
        try:
            answers.append(_post(_dial(port, "127.0.0.7"), {}, b""))
        except OSError:
            answers.append("connection refused")
    assert " 401 " in answers[0] and answers[-1] in ("connection refused", "HTTP/1.1 503 Service Unavailable")
    assert " 401 " in _post(_dial(port, "127.0.0.8"), {}, b"")  # another address is not affected
