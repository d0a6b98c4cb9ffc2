"""Load on the Fleet proxy from one host (run inside a network namespace by
tests/test_deploy_multihost.py; prints one JSON object):

  idle HOST:PORT CONNS SECONDS       hold CONNS TLS connections that send nothing (reopened when closed)
  trickle HOST:PORT CONNS SECONDS    CONNS connections sending a request head one byte a second
  flood HOST:PORT CONNS MIB          CONNS concurrent unauthenticated POSTs of MIB MiB each
                                     (half chunked, half with Content-Length)
  legit HOST:PORT SECONDS CA KEY NODE_ID
                                     a site's signed heartbeats and message pulls every 0.25 s,
                                     sent by flwr's own SuperNode HTTP client and signing

Everything is bounded in count and time; attackers wait a second before reopening a
connection the proxy refused or closed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HEAD = b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: superlink\r\nContent-Type: application/protobuf\r\n"


@dataclass
class Stats:
    handshakes: int = 0  # TLS handshakes completed
    refused: int = 0  # connect or handshake refused, reset or timed out
    closed_by_server: int = 0
    open_now: int = 0
    max_open: int = 0
    longest_s: float = 0.0  # the longest an established connection was held open
    statuses: dict[str, int] = field(default_factory=dict)
    sent_mib: list[float] = field(default_factory=list)

    def opened(self) -> None:
        self.handshakes += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)

    def closed(self, since: float) -> None:
        self.open_now -= 1
        self.closed_by_server += 1
        self.longest_s = max(self.longest_s, time.monotonic() - since)


@functools.cache
def _tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # an attacker need not verify anything
    return ctx


async def _open(
    host: str, port: int, stats: Stats
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        conn = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=_tls()), 15)
    except (OSError, TimeoutError):
        stats.refused += 1
        return None
    stats.opened()
    return conn


async def _hold(host: str, port: int, stats: Stats, end: float, trickle: bool) -> None:
    """One slot: a connection held (idle or trickling its head) until the server closes it,
    then reopened a second later, until `end`."""
    while time.monotonic() < end:
        conn = await _open(host, port, stats)
        if conn is None:
            await asyncio.sleep(1)
            continue
        reader, writer = conn
        since, i = time.monotonic(), 0
        try:
            while time.monotonic() < end:
                if trickle:
                    writer.write(HEAD[i % len(HEAD) : i % len(HEAD) + 1])
                    i += 1
                    await writer.drain()
                try:  # the server closing shows as EOF (or a reset)
                    if await asyncio.wait_for(reader.read(4096), 1.0) == b"":
                        break
                except TimeoutError:
                    continue
        except OSError:
            pass
        if time.monotonic() < end:
            stats.closed(since)
        else:
            stats.open_now -= 1
        writer.transport.abort()
        await asyncio.sleep(1)


async def hold(host: str, port: int, conns: int, seconds: float, trickle: bool) -> Stats:
    stats = Stats()
    end = time.monotonic() + seconds
    await asyncio.gather(*(_hold(host, port, stats, end, trickle) for _ in range(conns)))
    return stats


async def _post(host: str, port: int, mib: int, chunked: bool, stats: Stats) -> None:
    conn = await _open(host, port, stats)
    if conn is None:
        stats.statuses["refused"] = stats.statuses.get("refused", 0) + 1
        return
    reader, writer = conn
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % (mib * 2**20)
    head = HEAD.replace(b"pull-messages", b"push-object") + framing + b"\r\n"
    status = asyncio.create_task(reader.readline())
    block, sent = b"\0" * 2**20, 0
    try:
        writer.write(head)
        for _ in range(mib):
            writer.write(b"100000\r\n" + block + b"\r\n" if chunked else block)
            await asyncio.wait_for(writer.drain(), 30)
            sent += len(block)
            if status.done():
                break
        if chunked and not status.done():
            writer.write(b"0\r\n\r\n")
    except (OSError, TimeoutError):
        pass
    try:
        line = await asyncio.wait_for(status, 30)
        code = line.split()[1].decode() if line.startswith(b"HTTP/") else "no answer"
    except (OSError, TimeoutError, IndexError):
        code = "no answer"
    stats.statuses[code] = stats.statuses.get(code, 0) + 1
    stats.sent_mib.append(round(sent / 2**20, 1))
    writer.transport.abort()


async def flood(host: str, port: int, conns: int, mib: int) -> Stats:
    stats = Stats()
    await asyncio.gather(*(_post(host, port, mib, i % 2 == 0, stats) for i in range(conns)))
    return stats


def legit(address: str, ca: Path, key: Path, node_id: int, seconds: float) -> dict[str, object]:
    """A site's calls through flwr's own Fleet HTTP client and signing: heartbeats and
    message pulls in turn, half on a kept-alive connection (as a SuperNode's pool does),
    half on a fresh one."""
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.fleet_pb2 import PullMessagesRequest
    from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    private = serialization.load_ssh_private_key(key.read_bytes(), None)

    def client() -> FleetHttpClient:
        interceptors = [
            RuntimeVersionHttpInterceptor("SuperNode"),
            NodeAuthHttpInterceptor(private, private.public_key()),
        ]
        return FleetHttpClient.from_server_address(address, False, ca.read_bytes(), interceptors)

    def call(use: FleetHttpClient, i: int) -> str | None:
        node = Node(node_id=node_id)
        if i % 4 < 2:
            ok = use.SendNodeHeartbeat(SendNodeHeartbeatRequest(node=node, heartbeat_interval=30)).success
            return None if ok else "heartbeat: success=false"
        use.PullMessages(PullMessagesRequest(node=node))  # no run: nothing to pull, but answered
        return None

    kept = client()
    latencies: list[float] = []
    failures: list[str] = []
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        i += 1
        use = kept if i % 2 else client()
        t0 = time.monotonic()
        try:
            failed = call(use, i)
            latencies.append(time.monotonic() - t0)
            if failed:
                failures.append(f"#{i}: {failed}")
        except Exception as e:  # every failure is reported, whatever its kind
            failures.append(f"#{i} after {time.monotonic() - t0:.2f}s: {type(e).__name__}: {e}"[:300])
        finally:
            if use is not kept:
                use.close()
        time.sleep(max(0.0, 0.25 - (time.monotonic() - t0)))
    kept.close()
    return {"sent": i, "latencies": latencies, "failures": failures}


def main(argv: list[str]) -> int:
    mode, target, *rest = argv
    host, port = target.rsplit(":", 1)
    if mode in ("idle", "trickle"):
        out: object = asdict(
            asyncio.run(hold(host, int(port), int(rest[0]), float(rest[1]), mode == "trickle"))
        )
    elif mode == "flood":
        out = asdict(asyncio.run(flood(host, int(port), int(rest[0]), int(rest[1]))))
    elif mode == "legit":
        seconds, ca, key, node_id = rest
        out = legit(target, Path(ca), Path(key), int(node_id), float(seconds))
    else:
        print(__doc__, file=sys.stderr)
        return 64
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
