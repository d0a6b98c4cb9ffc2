"""The container image installs every package of the project: deploy/Dockerfile copies the
sources by name (the build context holds no tests, caches or wheelhouse), so a package
added to the layout must be added there too, or the image's `fedattack` misses it."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

TOP = ("shared", "server", "clients", "attack", "deploy", "pipeline", "cli")


def copied(dockerfile: str) -> list[str]:
    """The sources of the Dockerfile's COPY lines (flags such as --chown left out)."""
    out = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            out += [a for a in line.split()[1:-1] if not a.startswith("--")]
    return out


def covers(source: str, package: str) -> bool:
    """`COPY x/ x/` brings x and everything below it; `COPY x/*.py x/` only x's own modules."""
    if source.endswith("/*.py"):
        return source[: -len("/*.py")] == package
    return package == source.rstrip("/") or package.startswith(source.rstrip("/") + "/")


def test_every_package_of_the_project_is_copied_into_the_image() -> None:
    sources = copied((REPO / "deploy" / "Dockerfile").read_text())
    packages = sorted(
        str(init.parent.relative_to(REPO)) for top in TOP for init in (REPO / top).rglob("__init__.py")
    )
    missing = [p for p in packages if not any(covers(s, p) for s in sources)]
    assert missing == [], f"deploy/Dockerfile copies none of {missing}: add a COPY line"
    assert re.search(r"^COPY pyproject\.toml", (REPO / "deploy" / "Dockerfile").read_text(), re.M)
