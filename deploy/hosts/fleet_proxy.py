"""The only door the sites' network gets into the SuperLink: the Fleet API, nothing else.

Flower 1.42 serves the Fleet API (what SuperNodes call), the Control API (register keys,
list and start runs: whoever reaches it runs code on the server and, unsigned, tries to
at the sites) and the Runtime API (the ServerApp's tasks) on one HTTP port, and has no
authentication of its own for Control in this distribution (OIDC needs Flower's
enterprise build). So the SuperLink listens on the server host's loopback only, where
the operator's tools reach it, and this proxy publishes the Fleet API on the network:
it forwards exactly the Fleet calls a SuperNode makes (POST, known path, no query) to
the SuperLink over TLS, and answers everything else 403 (per request, not per
connection: a connection that asked for Fleet first gets no more). Node authentication
is unchanged: each Fleet request's signature is checked by the SuperLink behind.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

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
MAX_BODY = 64 * 2**20
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
_HOP |= {"proxy-authorization", "proxy-authenticate", "proxy-connection"}


def allowed(method: str, raw_path: bytes, query: bytes) -> bool:
    """A Fleet call: POST to one of FLEET_PATHS, spelled exactly (no encoding, dots or
    query string that a later hop could read another way)."""
    return method == "POST" and not query and raw_path.decode("latin-1") in FLEET_PATHS


def _headers(items: list[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in items if k.lower() not in _HOP}


def build_app(upstream: str, verify: ssl.SSLContext | bool) -> Starlette:
    """The proxy's ASGI app forwarding to `upstream` (https://127.0.0.1:9091)."""
    client = httpx.AsyncClient(
        base_url=upstream,
        verify=verify,
        timeout=httpx.Timeout(connect=10, read=120, write=120, pool=30),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
    )

    async def forward(request: Request) -> Response:
        peer = request.client.host if request.client else "?"
        if not allowed(
            request.method, request.scope.get("raw_path", b""), request.scope.get("query_string", b"")
        ):
            log.warning("fleet proxy: refused %s %s from %s", request.method, request.url.path, peer)
            return PlainTextResponse("forbidden: this port serves only the Fleet API\n", status_code=403)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return PlainTextResponse("request too large\n", status_code=413)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return PlainTextResponse("request too large\n", status_code=413)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            up = await client.send(
                client.build_request(
                    "POST", request.url.path, headers=_headers(request.headers.items()), content=bytes(body)
                ),
                stream=True,
            )
        except httpx.HTTPError as e:
            log.warning(
                "fleet proxy: the SuperLink at %s did not answer %s: %s", upstream, request.url.path, e
            )
            return PlainTextResponse("the SuperLink is not reachable\n", status_code=502)
        return StreamingResponse(
            up.aiter_raw(),
            status_code=up.status_code,
            headers=_headers(list(up.headers.items())),
            background=BackgroundTask(up.aclose),
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def serve_fleet_proxy(
    host: str, port: int, upstream_port: int, credentials: Path | None, ca: Path | None = None
) -> None:
    """Listen on host:port (TLS with the server certificate in `credentials`, or plain
    HTTP when None) and forward Fleet calls to the SuperLink on 127.0.0.1:`upstream_port`
    (verified against the CA). Blocks until stopped."""
    from deploy.flower.commands import CA_CERT, SERVER_CERT, SERVER_KEY

    verify: ssl.SSLContext | bool = False
    if credentials is None:
        upstream = f"http://127.0.0.1:{upstream_port}"
        tls: dict[str, str] = {}
    else:
        c = Path(credentials)
        upstream = f"https://127.0.0.1:{upstream_port}"
        verify = ssl.create_default_context(cafile=str(ca or c / CA_CERT))
        tls = {"ssl_certfile": str(c / SERVER_CERT), "ssl_keyfile": str(c / SERVER_KEY)}
    config = uvicorn.Config(
        build_app(upstream, verify),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        limit_concurrency=256,
        server_header=False,
        **tls,  # type: ignore[arg-type]
    )
    print(
        f"fleet proxy on {host}:{port} ({'TLS' if tls else 'plain HTTP'}): only the Fleet API, "
        f"to the SuperLink on 127.0.0.1:{upstream_port}",
        flush=True,
    )
    uvicorn.Server(config).run()


def fleet_proxy_command(host: str, port: int, upstream_port: int, credentials: Path) -> list[str]:
    """The proxy as a child process of the server host (this module's own entry)."""
    return [
        sys.executable,
        "-m",
        __name__,
        "--host",
        host,
        "--port",
        str(port),
        "--upstream-port",
        str(upstream_port),
        "--credentials",
        str(credentials),
    ]


def main(argv: list[str] | None = None) -> int:
    """`python -m deploy.hosts.fleet_proxy`: what the server host starts (fleet_proxy_command)."""
    from shared.logs import setup_logging

    p = argparse.ArgumentParser(prog="fleet-proxy", description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--credentials", required=True, type=Path)
    args = p.parse_args(argv)
    setup_logging()
    serve_fleet_proxy(args.host, args.port, args.upstream_port, args.credentials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
