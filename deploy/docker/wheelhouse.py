"""`fedattack deploy wheelhouse`: every wheel the image needs, made on a connected host,
so that `docker build` (deploy/Dockerfile) installs with no network at all; and the check
that a wheelhouse carried to an air-gapped host is complete, before anything is built."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from shared.errors import DeploymentError

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_DIR = PROJECT_DIR / "deploy" / "docker" / "wheelhouse"
# the project itself is built inside the image from its copy of the sources (/app), so the
# wheelhouse holds its build backend rather than a wheel of it that could be stale
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]


def requirements(project: Path = PROJECT_DIR) -> list[str]:
    """The project's runtime requirements (pyproject.toml) plus its build backend."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    return [*meta["project"]["dependencies"], *BUILD_REQUIREMENTS]


def _pip(*args: str, isolated: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if isolated:  # the host's pip configuration (extra indexes, find-links) must not fill gaps
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull  # no configuration file at all
        env["PIP_BREAK_SYSTEM_PACKAGES"] = "1"  # dry runs only: a Debian python3 checks PEP 668
    cmd = [sys.executable, "-m", "pip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)


def _quiet(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if "is neither a file nor a directory" not in ln)


def make_wheelhouse(out: Path = DEFAULT_DIR) -> list[Path]:
    """Wheels of every requirement (as the host's pip resolves them), built or downloaded
    into `out`; then checked with `check_wheelhouse`. Returns the wheels."""
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requirements()) + "\n")
        res = _pip("wheel", "--quiet", "--wheel-dir", str(out), "-r", str(req))
    if res.returncode != 0:
        raise DeploymentError(f"making the wheelhouse in {out} failed:\n{_quiet(res.stderr).strip()}")
    check_wheelhouse(out)
    return sorted(out.glob("*.whl"))


def check_wheelhouse(folder: Path = DEFAULT_DIR) -> None:
    """Raise, naming what is missing and what to run, unless every requirement resolves
    from `folder` alone (no index, no host pip configuration)."""
    folder = Path(folder).absolute()
    hint = f"run `fedattack deploy wheelhouse --out {folder}` on a host with the package index"
    if not any(folder.glob("*.whl")):
        raise DeploymentError(f"the wheelhouse {folder} holds no wheels: {hint}")
    res = _pip(
        "install", "--dry-run", "--quiet", "--ignore-installed", "--no-index",
        "--find-links", str(folder), *requirements(), isolated=True,
    )  # fmt: skip
    if res.returncode != 0:
        missing = [ln for ln in res.stderr.splitlines() if "No matching distribution" in ln]
        what = "; ".join(missing) or _quiet(res.stderr).strip()
        raise DeploymentError(f"the wheelhouse {folder} is incomplete ({what}): {hint}")


if __name__ == "__main__":  # python3 -m deploy.docker.wheelhouse DIR (the check, from a checkout)
    try:
        check_wheelhouse(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR)
    except DeploymentError as e:
        sys.exit(f"error: {e}")
