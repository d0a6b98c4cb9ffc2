"""Several "hosts" on one machine: one network namespace per host, each with its own
address on a shared bridge (needs root and iproute2). Processes are started inside a
namespace with `ip netns exec`, which execs in place: the ProcessGroup's pid is theirs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run the suite as root, as CI does)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


def forward_policy() -> str:
    """The iptables FORWARD chain's policy, or why it cannot be read."""
    try:
        out = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    first = out.stdout.splitlines()[:1]
    return first[0].removeprefix("-P FORWARD ") if first else f"unknown ({out.stderr.strip()})"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Network:
    """A bridge `fa<tag>` in the root namespace (address .254) and named hosts."""

    tag: str
    subnet: str  # first three octets, e.g. "10.231.7"
    hosts: dict[str, str] = field(default_factory=dict)  # name -> namespace

    @property
    def bridge(self) -> str:
        return f"fa{self.tag}"

    @property
    def root_ip(self) -> str:
        return f"{self.subnet}.254"

    def __enter__(self) -> Network:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.root_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str, *addresses: int) -> list[str]:
        ns, veth = f"fa{self.tag}-{name}", f"fa{self.tag}{len(self.hosts)}"
        _ip("netns", "add", ns)
        self.hosts[name] = ns
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        ips = [f"{self.subnet}.{a}" for a in addresses]
        for ip in ips:
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return ips

    def run_in(self, host: str, cmd: list[str]) -> list[str]:
        """`cmd` run inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.hosts[host], *cmd]

    def check_links(self, server: str, server_ip: str, timeout: float = 10.0) -> None:
        """Fail fast, naming the cause, when the hosts cannot reach `server` over the bridge
        (a dockerd started without --iptables=false sets the iptables FORWARD policy to DROP
        and loads br_netfilter, which then drops bridged traffic: SuperNodes would hang in
        SYN-SENT instead of failing)."""
        port = 47000 + os.getpid() % 1000
        listen = (
            "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
            f"s.bind(('{server_ip}', {port})); s.listen(16); s.settimeout({timeout + 5});"
            f"[s.accept() for _ in range({len(self.hosts) - 1})]"
        )
        listener = subprocess.Popen(self.run_in(server, [sys.executable, "-c", listen]))
        try:
            dial = (
                "import socket,time; d=time.monotonic()+" + str(timeout) + "\n"
                "while True:\n"
                "    try:\n"
                f"        socket.create_connection(('{server_ip}', {port}), timeout=2).close(); break\n"
                "    except OSError:\n"
                "        if time.monotonic() > d: raise\n"
                "        time.sleep(0.2)\n"
            )
            for host in self.hosts:
                if host == server:
                    continue
                res = subprocess.run(
                    self.run_in(host, [sys.executable, "-c", dial]), capture_output=True, text=True
                )
                if res.returncode != 0:
                    raise AssertionError(
                        f"host {host} cannot reach {server} ({server_ip}) over the test bridge within "
                        f"{timeout:.0f} s; iptables FORWARD: {forward_policy()} (a dockerd running "
                        "without --iptables=false drops bridged traffic; restart it with that flag)"
                    )
        finally:
            listener.kill()
            listener.wait()

    def __exit__(self, *exc: object) -> None:
        for ns in self.hosts.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", ns)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)
