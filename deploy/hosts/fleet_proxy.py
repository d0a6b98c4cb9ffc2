"""The only door the sites' network gets into the SuperLink: the Fleet API, nothing else.

Flower 1.42 serves the Fleet API (what SuperNodes call), the Control API (register keys,
list and start runs: whoever reaches it runs code on the server and, unsigned, tries to
at the sites) and the Runtime API (the ServerApp's tasks) on one HTTP port, and has no
authentication of its own for Control in this distribution (OIDC needs Flower's
enterprise build). So the SuperLink listens on the server host's loopback only, where
the operator's tools reach it, and this proxy publishes the Fleet API on the network:
it forwards exactly the Fleet calls a SuperNode makes (POST, known path, no query) to
the SuperLink over TLS, and answers everything else 403 (per request, not per
connection: a connection that asked for Fleet first gets no more).

It also holds under load from anyone who reaches the port (deploy/hosts/fleet_guard.py has
the limits; docs/deployment.md, "Load limits", how to tune them): per-address connection
caps checked before the TLS handshake, handshake and request-head deadlines that apply to
fresh connections, a per-address request rate, node authentication checked before a body
is read (a registered key, a valid signature, a fresh timestamp: what the SuperLink checks
again behind it), and bodies streamed to the SuperLink under a process-wide byte budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import resource
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import h11
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from deploy.hosts.fleet_guard import (
    ByteBudget,
    ConnectionGate,
    FleetLimits,
    KeyRegistry,
    NodeAuth,
    RateLimitedLog,
    TokenBucket,
    client_key,
    option,
    registered_keys,
)
from shared.errors import DeploymentError, FedAttackError

log = logging.getLogger(__name__)

# Every call flwr 1.42's SuperNode makes (flwr/supernode/fleet_http_client.py), minus
# register-node and unregister-node, which a SuperLink with node authentication refuses.
FLEET_PATHS = frozenset(
    f"/v1/fleet/{name}"
    for name in (
        "activate-node",
        "deactivate-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)
# Flower sends arrays in chunks of 5 MiB (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE); a message
# of many small arrays, or a FAB, stays far below this.
MAX_BODY = FleetLimits.max_body_bytes
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
_HOP |= {"proxy-authorization", "proxy-authenticate", "proxy-connection"}
_TLS_SHUTDOWN_S = 2.0  # a peer that never answers close_notify holds its slot no longer


@dataclass
class Front:
    """The proxy's shared state: limits, counters and the node-authentication check
    (None: no check, for a SuperLink without node authentication)."""

    limits: FleetLimits = field(default_factory=FleetLimits)
    auth: NodeAuth | None = None
    tls: ssl.SSLContext | None = None
    gate: ConnectionGate = field(init=False)
    bucket: TokenBucket = field(init=False)
    budget: ByteBudget = field(init=False)
    log: RateLimitedLog = field(init=False)

    def __post_init__(self) -> None:
        lim = self.limits
        self.gate = ConnectionGate(lim.max_connections_per_address, lim.max_connections)
        self.bucket = TokenBucket(lim.requests_per_s, lim.request_burst)
        self.budget = ByteBudget(lim.inflight_body_bytes)
        self.log = RateLimitedLog(lim.log_interval_s)


def allowed(method: str, raw_path: bytes, query: bytes) -> bool:
    """A Fleet call: POST to one of FLEET_PATHS, spelled exactly (no encoding, dots or
    query string that a later hop could read another way)."""
    return method == "POST" and not query and raw_path.decode("latin-1") in FLEET_PATHS


def _headers(items: list[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in items if k.lower() not in _HOP}


def _refuse(status: int, body: bytes, retry_after: int | None = None, json: bool = False) -> Response:
    """A refusal that closes the connection: the unread body is dropped with it."""
    headers = {"connection": "close"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    media = "application/json" if json else "text/plain; charset=utf-8"
    return Response(body, status_code=status, headers=headers, media_type=media)


class _BodyFailed(Exception):
    """The client's body stopped: too slow (408) or gone (400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


async def _body(receive: Callable[[], Awaitable[Any]], deadline: float) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused once `deadline` (loop time) passes."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            raise _BodyFailed(408, "request body slower than the minimum rate") from None
        if message["type"] == "http.disconnect":
            raise _BodyFailed(400, "client went away mid-body")
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


def _declared_length(request: Request, limits: FleetLimits) -> int | Response:
    declared = request.headers.get("content-length")
    if declared is None:
        return _refuse(411, b"Content-Length required\n")  # Flower's clients always send it
    if not declared.isdigit() or int(declared) > limits.max_body_bytes:
        return _refuse(413, b"request too large\n")
    return int(declared)


async def _gate_request(front: Front, request: Request, peer: str) -> Response | int:
    """A refusal, or the body length to forward: path, rate, node authentication, length.
    Nothing of the body is read here."""
    path = request.url.path
    if not front.bucket.allow(peer):
        front.log.refused(peer, f"more than {front.limits.requests_per_s:g} requests/s")
        return _refuse(503, b"too many requests from this address\n", retry_after=1)
    if not allowed(
        request.method, request.scope.get("raw_path", b""), request.scope.get("query_string", b"")
    ):
        front.log.refused(peer, "not a Fleet call", f" ({request.method} {path[:80]!r})")
        return _refuse(403, b"forbidden: this port serves only the Fleet API\n")
    if front.auth is not None:
        refusal = await front.auth.refusal(request.headers, path)
        if refusal is not None:
            status, body, reason = refusal
            front.log.refused(peer, reason)
            return _refuse(status, body, json=True)
    return _declared_length(request, front.limits)


def build_app(upstream: str, verify: ssl.SSLContext | bool, front: Front | None = None) -> Starlette:
    """The proxy's ASGI app forwarding to `upstream` (https://127.0.0.1:9091); `front`
    (default: the default limits, no node-authentication check) is shared with the
    connection protocol (guarded_protocol)."""
    front = front or Front()
    limits = front.limits
    client = httpx.AsyncClient(
        base_url=upstream,
        verify=verify,
        timeout=httpx.Timeout(connect=10, read=120, write=120, pool=30),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
    )

    async def relay(request: Request, length: int) -> Response:
        deadline = asyncio.get_running_loop().time() + limits.body_grace_s + length / limits.body_min_rate
        headers = {**_headers(request.headers.items()), "content-length": str(length)}
        try:
            up = await client.send(
                client.build_request(
                    "POST", request.url.path, headers=headers, content=_body(request.receive, deadline)
                ),
                stream=True,
            )
        except _BodyFailed as e:
            front.log.refused(client_key(request.client.host) if request.client else "?", e.reason)
            return _refuse(e.status, f"{e.reason}\n".encode())
        except httpx.HTTPError as e:
            log.warning(
                "fleet proxy: the SuperLink at %s did not answer %s: %s", upstream, request.url.path, e
            )
            return _refuse(502, b"the SuperLink is not reachable\n")
        return StreamingResponse(
            up.aiter_raw(),
            status_code=up.status_code,
            headers=_headers(list(up.headers.items())),
            background=BackgroundTask(up.aclose),
        )

    async def forward(request: Request) -> Response:
        peer = client_key(request.client.host) if request.client else "?"
        gated = await _gate_request(front, request, peer)
        if isinstance(gated, Response):
            return gated
        if not await front.budget.acquire(gated, limits.budget_wait_s):
            front.log.refused(
                peer, f"request bodies in flight at the {limits.inflight_body_bytes}-byte budget"
            )
            return _refuse(503, b"the proxy is busy, try again\n", retry_after=5)
        try:
            return await relay(request, gated)
        finally:  # the SuperLink has read the body once its answer starts
            await front.budget.release(gated)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol behind the connection limits: the per-address and total
    caps before anything else (TLS included), the TLS handshake within
    `handshake_timeout_s`, and each request head complete within `header_timeout_s` of the
    connection being ready or of the previous response (uvicorn's own keep-alive timer
    starts only after a first response and restarts on every byte)."""

    front: ClassVar[Front]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._address: str | None = None  # counted in the gate until released
        self._deadline: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._early = bytearray()  # decrypted before start_tls returned (sent with the handshake)
        self._raw: asyncio.Transport | None = None  # the TCP transport under TLS
        self._served = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        address = client_key(str(peer[0])) if peer else "?"
        if not self.front.bucket.allow(address):  # a connection costs a request's token
            self.front.log.refused(address, f"more than {self.front.limits.requests_per_s:g} requests/s")
            transport.abort()
            return
        if not self.front.gate.admit(address):
            self.front.log.refused(address, "too many connections (from this address or in all)")
            transport.abort()
            return
        self._address = address
        if self.front.tls is None:
            self._ready(transport)
            return
        self._raw = transport
        transport.pause_reading()  # start_tls takes over the transport on the next turn
        self._handshake = self.loop.create_task(self._start_tls(transport))

    async def _start_tls(self, raw: asyncio.Transport) -> None:
        assert self.front.tls is not None
        try:
            tls = await self.loop.start_tls(
                raw,
                self,
                self.front.tls,
                server_side=True,
                ssl_handshake_timeout=self.front.limits.handshake_timeout_s,
                ssl_shutdown_timeout=_TLS_SHUTDOWN_S,
            )
        except (OSError, RuntimeError) as e:  # timed out, refused or reset
            if isinstance(e, ConnectionAbortedError) and self._address is not None:
                self.front.log.refused(self._address, "no TLS handshake in time")
            self._release()
            raw.abort()
            return
        if tls is None or self._address is None:
            self._release()
            raw.abort()
            return
        self._ready(tls)

    def _ready(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm()
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self.data_received(early)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.front.limits.header_timeout_s, self._head_overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_overdue(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._served == 0 and self._address is not None:  # (after a response: keep-alive idling)
            limit = self.front.limits.header_timeout_s
            self.front.log.refused(self._address, f"no complete request head within {limit:g}s")
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:  # the TLS layer hands data on before start_tls returns
            self._early += data
            if len(self._early) > 64 * 1024 and self._raw is not None:
                self._raw.abort()
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # a whole head arrived: the body deadline is the app's

    def on_response_complete(self) -> None:
        self._served += 1
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:  # answered before its body ended: not read on
            self.transport.close()
        elif self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        if self.transport is None:  # refused at the gate or before the handshake completed
            return
        super().connection_lost(exc)

    def _release(self) -> None:
        if self._address is not None:
            self.front.gate.release(self._address)
            self._address = None


def guarded_protocol(front: Front) -> type[GuardedH11]:
    """The protocol class for uvicorn's `http=`, bound to `front`."""
    return type("FleetH11", (GuardedH11,), {"front": front})


def _raise_fd_limit(connections: int) -> None:
    """Room for every admitted connection and its upstream twin (soft limit up to the hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def proxy_server(
    host: str, port: int, upstream: str, verify: ssl.SSLContext | bool, front: Front
) -> uvicorn.Server:
    """The proxy's server (not started): the app behind the guarded protocol, no limit of
    uvicorn's own (its limit_concurrency answers 503 to everyone once strangers fill it).
    Python's own event loop, not uvloop: uvloop starts reading a connection after
    connection_made whatever it asked, so a ClientHello could reach the HTTP parser before
    start_tls takes the transport over (seen: handshakes stalled until their timeout)."""
    config = uvicorn.Config(
        build_app(upstream, verify, front),
        host=host,
        port=port,
        loop="asyncio",
        http=guarded_protocol(front),
        ws="none",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=max(1, round(front.limits.header_timeout_s)),
        limit_concurrency=None,
        h11_max_incomplete_event_size=16 * 1024,
        server_header=False,
    )
    return uvicorn.Server(config)


def serve_fleet_proxy(
    host: str,
    port: int,
    upstream_port: int,
    credentials: Path | None,
    ca: Path | None = None,
    database: Path | None = None,
    limits: FleetLimits | None = None,
) -> None:
    """Listen on host:port (TLS with the server certificate in `credentials`, or plain
    HTTP when None) and forward Fleet calls to the SuperLink on 127.0.0.1:`upstream_port`
    (verified against the CA). With `database` (the SuperLink's state, superlink.db), only
    requests signed by a key registered there get their body read; required with TLS.
    Blocks until stopped."""
    from deploy.flower.commands import CA_CERT, SERVER_CERT, SERVER_KEY

    limits = limits or FleetLimits()
    verify: ssl.SSLContext | bool = False
    tls: ssl.SSLContext | None = None
    if credentials is None:
        upstream = f"http://127.0.0.1:{upstream_port}"
    else:
        if database is None:
            raise DeploymentError(
                "the Fleet proxy with TLS needs the SuperLink's state database (--superlink-database "
                "STATE/superlink.db) to check node authentication before reading a body"
            )
        c = Path(credentials)
        upstream = f"https://127.0.0.1:{upstream_port}"
        verify = ssl.create_default_context(cafile=str(ca or c / CA_CERT))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(c / SERVER_CERT), str(c / SERVER_KEY))
    auth = None
    if database is not None:
        auth = NodeAuth(KeyRegistry(functools.partial(registered_keys, Path(database))))
    front = Front(limits, auth, tls)
    _raise_fd_limit(limits.max_connections)
    server = proxy_server(host, port, upstream, verify, front)
    checked = "node authentication checked here and by the SuperLink" if auth else "no node authentication"
    print(
        f"fleet proxy on {host}:{port} ({'TLS' if tls else 'plain HTTP'}): only the Fleet API, "
        f"to the SuperLink on 127.0.0.1:{upstream_port}; {checked}; "
        f"{limits.max_connections_per_address} connections and {limits.requests_per_s:g} requests/s per "
        f"address, {limits.inflight_body_bytes // 2**20} MiB of bodies in flight",
        flush=True,
    )
    server.run()


def fleet_proxy_command(
    host: str,
    port: int,
    upstream_port: int,
    credentials: Path,
    database: Path | None = None,
    limits: FleetLimits | None = None,
) -> list[str]:
    """The proxy as a child process of the server host (this module's own entry)."""
    cmd = [sys.executable, "-m", __name__, "--host", host, "--port", str(port)]
    cmd += ["--upstream-port", str(upstream_port), "--credentials", str(credentials)]
    if database is not None:
        cmd += ["--superlink-database", str(database)]
    return cmd + (limits or FleetLimits()).argv()


def add_limit_flags(p: argparse.ArgumentParser) -> None:
    """One flag per FleetLimits field (`--header-timeout-s 10`), defaulting to its default."""
    for f in dataclasses.fields(FleetLimits):
        kind = int if f.type in ("int", int) else float
        p.add_argument(option(f.name), type=kind, default=f.default)


def main(argv: list[str] | None = None) -> int:
    """`python -m deploy.hosts.fleet_proxy`: what the server host starts (fleet_proxy_command)."""
    from shared.logs import setup_logging

    p = argparse.ArgumentParser(prog="fleet-proxy", description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--credentials", required=True, type=Path)
    p.add_argument(
        "--ca", type=Path, help="the CA that signed the SuperLink's certificate (default: in --credentials)"
    )
    p.add_argument("--superlink-database", type=Path, help="the SuperLink's superlink.db (registered keys)")
    add_limit_flags(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        limits = FleetLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FleetLimits)})
        serve_fleet_proxy(
            args.host,
            args.port,
            args.upstream_port,
            args.credentials,
            args.ca,
            args.superlink_database,
            limits,
        )
    except FedAttackError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
