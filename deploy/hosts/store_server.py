"""`fedattack deploy serve-store`: the checkpoint store over HTTPS, for the attack host.

It serves the manifest and the files the manifest lists, and nothing else: no folder
listing, no other file of the store, no symbolic link (a file is opened without following
links and must be a regular file directly inside the store). By default only a client
holding a certificate signed by the deployment's CA (`attack.crt` from `deploy
credentials`) gets anything; `public` serves anyone who reaches the port. Each
connection's TLS handshake runs in that connection's own thread with a timeout, so a
client that connects and says nothing holds up no one else. The attack host verifies
every file's sha256 and description against the manifest before use.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import ssl
import stat
import sys
import urllib.parse
from pathlib import Path
from typing import IO, Any

from deploy.flower.commands import CA_CERT, SERVER_CERT, SERVER_KEY
from deploy.hosts.checks import check_server_credentials
from shared.errors import DeploymentError
from shared.store.checkpoint import file_name_problem
from shared.store.folder import MANIFEST

HANDSHAKE_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 60.0  # one read or write of a request


def _open_plain(store: Path, name: str) -> IO[bytes] | None:
    """`name` inside `store`, opened without following a link; None unless it is a regular
    file directly inside the store."""
    if file_name_problem(name) is not None:
        return None
    try:
        fd = os.open(store / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # absent, a link (ELOOP), not ours to read
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def served_files(store: Path) -> set[str]:
    """The manifest and every file it lists (models and per-round globals) by a plain name."""
    fh = _open_plain(store, MANIFEST)
    if fh is None:
        return set()
    try:
        with fh:
            manifest = json.loads(fh.read())
        entries = [*manifest.get("models", []), *manifest.get("rounds", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return {MANIFEST}  # served as it is: the attack host reports what is wrong with it
    files = {e.get("file") for e in entries if isinstance(e, dict)}
    return {MANIFEST} | {f for f in files if isinstance(f, str) and file_name_problem(f) is None}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StoreServer
    timeout = IO_TIMEOUT_S
    server_version = "fedattack-store"
    sys_version = ""

    def do_GET(self) -> None:
        self._send(body=True)

    def do_HEAD(self) -> None:
        self._send(body=False)

    def _send(self, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        name = path[1:] if path.startswith("/") else ""
        fh = _open_plain(self.server.store, name) if name in served_files(self.server.store) else None
        if fh is None:  # unlisted, a folder, a link, absent: the same answer for each
            self.send_error(404, "not served")
            return
        with fh:
            self.send_response(200)
            kind = "application/json" if name == MANIFEST else "application/octet-stream"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(os.fstat(fh.fileno()).st_size))
            self.end_headers()
            if body:
                shutil.copyfileobj(fh, self.wfile, 1 << 20)

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


class StoreServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server whose TLS handshakes happen in the connection threads."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], store: Path, context: ssl.SSLContext | None, handshake_s: float
    ) -> None:
        self.store, self.context, self.handshake_s = store, context, handshake_s
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.context is not None:
            try:
                request.settimeout(self.handshake_s)
                request = self.context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                print(
                    f"{client_address[0]} TLS handshake refused: {getattr(e, 'reason', None) or e}",
                    flush=True,
                )
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of a traceback (a client that hangs up mid-transfer, ...)."""
        print(f"{client_address[0]} connection ended: {sys.exc_info()[1]!r}", flush=True)


def tls_for_store(credentials: Path, public: bool) -> ssl.SSLContext:
    """The server side's TLS: the server certificate, and unless `public` a client
    certificate signed by the deployment's CA (for the client-authentication purpose)."""
    c = Path(credentials)
    check_server_credentials(c / CA_CERT, c / SERVER_CERT, c / SERVER_KEY)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(c / SERVER_CERT, c / SERVER_KEY)
    if not public:
        ctx.load_verify_locations(c / CA_CERT)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_store_server(
    store: Path,
    host: str,
    port: int,
    credentials: Path | None,
    public: bool = False,
    handshake_s: float = HANDSHAKE_TIMEOUT_S,
) -> StoreServer:
    """Check the inputs and bind (port 0: any free port); the caller serves."""
    store = Path(store)
    if not (store / MANIFEST).is_file():
        raise DeploymentError(f"{store}: no checkpoint store here ({MANIFEST} not found)")
    if credentials is None and not public:
        raise DeploymentError(
            "plain HTTP cannot tell the attack host from anyone else: serve over HTTPS with "
            "--credentials DIR (the attack host presents attack.crt), or add --public to serve "
            "the weights to whoever reaches the port"
        )
    context = tls_for_store(credentials, public) if credentials is not None else None
    try:
        return StoreServer((host, port), store.resolve(), context, handshake_s)
    except (OSError, socket.gaierror) as e:
        raise DeploymentError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def serve_store(store: Path, host: str, port: int, credentials: Path | None, public: bool = False) -> None:
    """Serve the checkpoint store until interrupted."""
    server = make_store_server(store, host, port, credentials, public)
    scheme = "http" if credentials is None else "https"
    who = "anyone who reaches it" if public else "clients with a certificate from the deployment's CA"
    print(f"serving {store} at {scheme}://{host}:{server.server_address[1]}/ to {who}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
