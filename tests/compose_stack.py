"""A compose project on a real Docker engine, for tests/test_compose_up.py: the real
docker-compose.yml plus an override that mounts a tiny config over configs/compose.yaml,
its own project name (volumes) and its own published SuperLink port."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

UP_TIMEOUT = 900
START_ENGINE = "start one as root: dockerd --iptables=false & (.ci/run does it)"


def docker() -> str:
    """Debian's client (/usr/local/bin/docker may lack BuildKit's builder)."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


def unavailable(why: str) -> None:
    """Skip, or under CI fail: CI must run these tests on a real engine."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}; {START_ENGINE}")
    pytest.skip(why)


def engine_env() -> dict[str, str]:
    if shutil.which("docker-compose") is None:
        unavailable("docker-compose is missing (apt-get install docker-compose)")
    if not Path(docker()).exists() and not shutil.which(docker()):
        unavailable("no docker client (apt-get install docker.io)")
    if subprocess.run([docker(), "info"], capture_output=True, timeout=60).returncode != 0:
        unavailable("no Docker engine answers `docker info`")
    return {
        **os.environ,
        "PATH": "/usr/bin:" + os.environ.get("PATH", ""),
        "COMPOSE_DOCKER_CLI_BUILD": "1",
        "DOCKER_BUILDKIT": "1",
    }


def sh(cmd: list[str], env: dict[str, str], timeout: float = 120, check: bool = True) -> str:
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_config(path: Path, overrides: dict[str, Any]) -> Path:
    """configs/compose.yaml (container paths) with dotted-key overrides."""
    raw = yaml.safe_load((REPO / "configs" / "compose.yaml").read_text())
    for dotted, value in overrides.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(raw))
    path.chmod(0o644)
    return path


class Stack:
    def __init__(self, env: dict[str, str], tmp: Path, project: str, config: dict[str, Any]) -> None:
        cfg = tiny_config(tmp / "tiny.yaml", config)
        mount = [f"{cfg}:/app/configs/compose.yaml:ro"]
        override = tmp / "docker-compose.tiny.yml"
        services = {s: {"volumes": mount} for s in ("data-init", "job", "attack")}
        override.write_text(yaml.safe_dump({"services": services}))
        self.project, self.logs = project, tmp
        self.env = {**env, "COMPOSE_PROJECT_NAME": project, "FEDATTACK_SUPERLINK_PORT": str(free_port())}
        self.base = ["docker-compose", "-f", "docker-compose.yml", "-f", str(override)]

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return sh([*self.base, *args], self.env, timeout, check)

    def popen_up(self) -> subprocess.Popen:
        log = (self.logs / f"up-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen(
            [*self.base, "up", "-d", "--no-build"], cwd=REPO, env=self.env, stdout=log, stderr=log
        )

    def cid(self, service: str) -> str:
        """The service's container id; "" while compose is still creating it."""
        out = self.compose("ps", "-q", service, check=False).strip()
        return out if out and all(c in "0123456789abcdef" for c in out) else ""

    def inspect(self, service: str) -> dict:
        return json.loads(sh([docker(), "inspect", self.cid(service)], self.env))[0]

    def state(self, service: str) -> tuple[str, int]:
        s = self.inspect(service)["State"]
        return s["Status"], int(s["ExitCode"])

    def wait_exit(self, service: str, timeout: float = UP_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cid(service):
                status, code = self.state(service)
                if status == "exited":
                    return code
            time.sleep(5)
        raise AssertionError(f"{service} still running after {timeout:.0f}s:\n{self.tail()}")

    def up_until_reported(self) -> float:
        """`up -d` (it returns once the attack service started: it waits for the job), then
        poll the attack container until it exits; a failed one-shot service ends the wait."""
        start = time.monotonic()
        res = subprocess.run(
            [*self.base, "up", "-d", "--no-build"],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=UP_TIMEOUT,
        )  # fmt: skip
        assert res.returncode == 0, f"docker-compose up failed:\n{res.stderr[-3000:]}\n{self.tail()}"
        code = self.wait_exit("attack", UP_TIMEOUT - (time.monotonic() - start))
        assert code == 0, f"the attack service exited {code}:\n{self.tail()}"
        return time.monotonic() - start

    def tail(self) -> str:
        text = self.compose("logs", "--no-color", "--tail", "40", timeout=60, check=False)
        (self.logs / f"compose-{time.monotonic_ns()}.log").write_text(text)
        return text[-8000:]

    def copy_out(self, service: str, path: str, dest: Path) -> Path:
        sh([docker(), "cp", f"{self.cid(service)}:{path}", str(dest)], self.env)
        return dest

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
