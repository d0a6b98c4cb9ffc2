"""The Flower CLI's view of one SuperLink: a private FLWR_HOME holding one connection
(`[superlink.target]`, insecure or with the CA that signed the SuperLink's certificate),
and the few `flwr` commands this project needs."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.flower.commands import environ, flwr_bin
from deploy.flower.processes import die_with_parent
from shared.config.run import Scalar
from shared.errors import ConfigError, DeploymentError, FederationError

PROJECT_DIR = Path(__file__).resolve().parents[2]
NAME = "target"


def app_dir() -> Path:
    """The Flower app `flwr run` packs: FEDATTACK_APP_DIR (the image sets /app, a copy of
    pyproject.toml and the app's packages) or, in a source checkout, the checkout itself
    (an installed package's parent is site-packages, which holds no pyproject.toml)."""
    d = Path(os.environ.get("FEDATTACK_APP_DIR") or PROJECT_DIR)
    if not (d / "pyproject.toml").is_file():
        raise DeploymentError(
            f"no Flower app at {d} (no pyproject.toml): run from a source checkout or set "
            "FEDATTACK_APP_DIR to a folder holding pyproject.toml, shared/, server/ and clients/"
        )
    return d


@dataclass(frozen=True)
class Connection:
    address: str  # HOST:PORT of the SuperLink
    home: Path  # the CLI's FLWR_HOME
    root_certificates: Path | None = None  # None: insecure (loopback experiments only)
    # what `flwr run` submits: None for this checkout's app folder (unsigned), or an app
    # spec ('@fedattack/fedattack==0.1.0') the SuperLink fetches, signed, from its hub
    app: str | None = None

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        trust = (
            f'root-certificates = "{Path(self.root_certificates).absolute()}"'
            if self.root_certificates
            else "insecure = true"
        )
        (self.home / "config.toml").write_text(f'[superlink.{NAME}]\naddress = "{self.address}"\n{trust}\n')

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [flwr_bin("flwr"), *args],
                capture_output=True,
                text=True,
                env=environ(FLWR_HOME=str(self.home)),
                cwd=self.home,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(),  # `flwr run` must not outlive a killed launcher
            )
        except subprocess.TimeoutExpired:
            raise DeploymentError(
                f"`flwr {args[0]}` against {self.address} did not answer in {timeout:.0f}s"
            ) from None

    def submit(self, run_config: dict) -> int:
        app = self.app or str(app_dir())
        res = self.flwr("run", app, NAME, "--run-config", format_run_config(run_config), "--format", "json")
        try:
            out = json.loads(res.stdout)
            if not out.get("success", False):
                raise ValueError(out)
            return int(out["run-id"])
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            raise FederationError(
                f"`flwr run` against {self.address} failed: {res.stdout}\n{res.stderr}"
            ) from e

    def status(self, run_id: int) -> str:
        res = self.flwr("ls", NAME, "--run-id", str(run_id), "--format", "json")
        try:
            return str(json.loads(res.stdout)["runs"][0]["status"])
        except (json.JSONDecodeError, KeyError, IndexError):
            return "unknown"

    def statuses(self) -> dict[int, str]:
        """Every run's status in one call (run id -> 'running', 'finished:completed', ...)."""
        res = self.flwr("ls", NAME, "--format", "json")
        try:
            return {int(r["run-id"]): str(r["status"]) for r in json.loads(res.stdout)["runs"]}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return {}

    def stop(self, run_id: int) -> None:
        """Ask the SuperLink to stop a run (used when a sibling run failed)."""
        self.flwr("stop", str(run_id), NAME)

    def log(self, run_id: int) -> str:
        """The run's log as the SuperLink keeps it (the ServerApp's output), '' if unavailable."""
        try:
            res = self.flwr("log", str(run_id), NAME, "--show", timeout=60)
        except DeploymentError:
            return ""
        return res.stdout if res.returncode == 0 else ""

    def register(self, public_key: Path) -> str:
        """Register a SuperNode's public key; 'registered' or 'already registered'."""
        res = self.flwr("supernode", "register", str(Path(public_key).absolute()), NAME)
        text = res.stdout + res.stderr
        if res.returncode == 0:
            return "registered"
        if "already in use" in text:
            return "already registered"
        raise DeploymentError(f"registering {public_key} with {self.address} failed:\n{text.strip()}")

    def nodes(self) -> list[dict]:
        res = self.flwr("supernode", "list", NAME, "--format", "json")
        try:
            return list(json.loads(res.stdout)["nodes"])
        except (json.JSONDecodeError, KeyError) as e:
            raise DeploymentError(f"`flwr supernode list` failed: {res.stdout}{res.stderr}") from e


def format_run_config(rc: dict[str, Scalar]) -> str:
    """`k=v ...` in TOML syntax, for `flwr run --run-config`."""
    parts = []
    for k, v in rc.items():
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, str):
            if "'" in v:
                raise ConfigError(f"run config value for {k!r} may not contain a single quote")
            parts.append(f"{k}='{v}'")
        else:
            parts.append(f"{k}={v!r}")
    return " ".join(parts)
