"""A compose project on a real Docker engine, for tests/test_compose_up.py: the real
docker-compose.yml plus an override that mounts a tiny config over configs/compose.yaml,
its own project name (volumes) and its own published SuperLink port; and the README's
container commands, read from README.md, run as written."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
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


def readme_commands() -> list[str]:
    """The command lines of README.md's "Four sites in containers" block, comments cut:
    what a newcomer runs, and what the test runs (the same strings)."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Four sites in containers", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.split("#", 1)[0].strip()]


def build_image(env: dict[str, str]) -> str:
    """README's image command as written (`make image`: with no registry here, the base
    image from Debian packages; .ci/run made it and the wheelhouse already, as a first
    `make image` would have), under a lock: test workers that need the image build it one
    at a time (the second finds every layer cached)."""
    (command,) = [c for c in readme_commands() if c.startswith("make image")]
    as_typed = {**env, "PATH": os.environ["PATH"]}  # the user's PATH: make's python3 is theirs
    lock = REPO / ".cache" / "compose-image.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        res = subprocess.run(
            ["bash", "-c", command], cwd=REPO, env=as_typed, capture_output=True, text=True, timeout=1800
        )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return "fedattack:latest"


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
        self.config = cfg = tiny_config(tmp / "tiny.yaml", config)
        mount = [f"{cfg}:/app/configs/compose.yaml:ro"]
        override = tmp / "docker-compose.tiny.yml"
        services = {s: {"volumes": mount} for s in ("data-init", "job", "attack")}
        override.write_text(yaml.safe_dump({"services": services}))
        self.project, self.logs, self.report = project, tmp, tmp / "report"
        self.env = {
            **env,
            "COMPOSE_PROJECT_NAME": project,
            "COMPOSE_FILE": f"docker-compose.yml:{override}",  # for deploy/compose-study.sh
            "FEDATTACK_SUPERLINK_PORT": str(free_port()),
            "FEDATTACK_REPORT_DIR": str(self.report),
        }
        self.base = ["docker-compose", "-f", "docker-compose.yml", "-f", str(override)]

    def reconfigure(self, config: dict[str, Any]) -> None:
        """The next study runs with these overrides of configs/compose.yaml (the same mount)."""
        tiny_config(self.config, config)

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return sh([*self.base, *args], self.env, timeout, check)

    def study(self, compose: str = "docker-compose") -> tuple[subprocess.Popen, Path]:
        """README's study command as written (`deploy/compose-study.sh`), with `compose`
        (FEDATTACK_COMPOSE); returns the process and the file its output goes to."""
        (command,) = [c for c in readme_commands() if "compose-study" in c]
        out = self.logs / f"study-{time.monotonic_ns()}.log"
        with out.open("w") as log:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=REPO,
                env={**self.env, "FEDATTACK_COMPOSE": compose},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return proc, out

    def running(self) -> list[str]:
        """The names of this project's containers that are running."""
        out = sh(
            [
                docker(),
                "ps",
                "--format",
                "{{.Names}}",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
            ],
            self.env,
        )
        return sorted(out.split())

    def cid(self, service: str) -> str:
        """The service's container id; "" while compose is still creating it."""
        labels = [
            f"label=com.docker.compose.project={self.project}",
            f"label=com.docker.compose.service={service}",
        ]
        cmd = [docker(), "ps", "-aq", "--no-trunc", *(a for lb in labels for a in ("--filter", lb))]
        out = sh(cmd, self.env, check=False).split()  # by label: either Compose version's containers
        return out[0] if len(out) == 1 else ""

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

    def study_until_reported(self, while_running: Callable[[], None] | None = None) -> tuple[float, str]:
        """The README's study to its end: exit 0, the report copied out, nothing running;
        `while_running` is called once the job has submitted its run (every service up).
        Returns the seconds it took and what it printed."""
        start = time.monotonic()
        proc, out = self.study()
        try:
            while while_running is not None and proc.poll() is None:
                if "submitted as run" in out.read_text():
                    while_running()
                    break
                assert time.monotonic() - start < UP_TIMEOUT, out.read_text()[-3000:]
                time.sleep(2)
            code = proc.wait(timeout=UP_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
        printed = out.read_text()
        assert code == 0, f"deploy/compose-study.sh exited {code}:\n{printed[-4000:]}\n{self.tail()}"
        assert printed.rstrip().splitlines()[-1].startswith("study complete: the report is "), printed[-2000:]
        assert self.running() == [], self.running()
        return time.monotonic() - start, printed

    def tail(self) -> str:
        text = self.compose("logs", "--no-color", "--tail", "40", timeout=60, check=False)
        (self.logs / f"compose-{time.monotonic_ns()}.log").write_text(text)
        return text[-8000:]

    def copy_out(self, service: str, path: str, dest: Path) -> Path:
        sh([docker(), "cp", f"{self.cid(service)}:{path}", str(dest)], self.env)
        return dest

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
