"""A one-app stand-in for Flower's app hub, on the SuperLink host's loopback.

Flower 1.42 attaches signatures to an app only when its SuperLink fetches it from a hub:
`flwr run @fedattack/fedattack==0.1.0` makes the SuperLink POST {app_id, app_version,
flwr_version} to `$FLWR_SUPERGRID_API_URL/hub/fetch-fab` and download the FAB from the
`fab_url` it answers, with the `verifications` it answers beside it. This server answers
for the one signed app `deploy sign-app` wrote, and nothing else: the SuperLink passes
the signatures on to the SuperNodes, which run the ClientApp only if a key they trust
signed it. It listens on 127.0.0.1 only, and holds no key: the bundle was signed before.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from deploy.hosts.appsign import SignedApp

log = logging.getLogger(__name__)
MAX_REQUEST = 64 * 1024
LOOPBACK = "127.0.0.1"


class _Handler(BaseHTTPRequestHandler):
    app: SignedApp  # set on the subclass the server builds
    timeout = 10  # seconds a connection may stay silent

    def log_message(self, format: str, *args: object) -> None:
        log.debug("app hub: " + format, *args)

    def _send(self, status: HTTPStatus, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: object) -> None:
        self._send(status, json.dumps(obj).encode())

    def do_POST(self) -> None:
        if self.path != "/v1/hub/fetch-fab":
            return self._json(HTTPStatus.NOT_FOUND, {"detail": "not found"})
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_REQUEST:
                raise ValueError(f"body of {length} bytes")
            asked = json.loads(self.rfile.read(length))
            app_id, version = str(asked["app_id"]), asked.get("app_version")
        except (ValueError, KeyError, TypeError) as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"detail": f"bad request: {e}"})
        if app_id != self.app.app_id or version not in (None, self.app.version):
            log.warning(
                "app hub: refused %s==%s (serving %s==%s)", app_id, version, self.app.app_id, self.app.version
            )
            return self._json(
                HTTPStatus.NOT_FOUND, {"detail": {"available_app_versions": [self.app.version]}}
            )
        port = int(self.server.server_address[1])  # type: ignore[index]
        self._json(
            HTTPStatus.OK,
            {
                "fab_url": f"http://{LOOPBACK}:{port}/v1/hub/fab/{self.app.sha256}.fab",
                "verifications": self.app.verifications(),
            },
        )

    def do_GET(self) -> None:
        if self.path != f"/v1/hub/fab/{self.app.sha256}.fab":
            return self._json(HTTPStatus.NOT_FOUND, {"detail": "not found"})
        self._send(HTTPStatus.OK, self.app.fab, "application/octet-stream")


def start_hub(app: SignedApp, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve `app` on 127.0.0.1:`port` (0: any free port) from a daemon thread; returns the
    server and the API base URL to give the SuperLink as FLWR_SUPERGRID_API_URL."""
    handler = type("AppHubHandler", (_Handler,), {"app": app})
    server = ThreadingHTTPServer((LOOPBACK, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="app-hub", daemon=True).start()
    return server, f"http://{LOOPBACK}:{server.server_address[1]}/v1"
