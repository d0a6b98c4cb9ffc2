"""Shared fixtures: a small synthetic twin on disk and config files pointing at it; and the
rule that every test is in exactly one tier (pyproject.toml's markers)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pydicom  # noqa: F401  (see below)
import pytest
import torch  # noqa: F401  (see below)
import yaml

from shared.prep.synth.twin import synthesize

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e", "docker")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every run checks every test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the run when a test has no tier or more than one: a new test cannot slip into
    `make unit` unmarked, nor be run twice by the tiers."""
    wrong = []
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(tiers) or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            f"{len(wrong)} test(s) not in exactly one tier of {', '.join(TIERS)}; mark each with "
            "pytestmark = pytest.mark.<tier> (whole file) or @pytest.mark.<tier> (one test), as "
            "pyproject.toml's markers describe:\n" + "\n".join(wrong)
        )
    _group_for_workers(config, items)


class _GroupsTookEffect:
    """Under --dist loadgroup every test id must carry its group: where pytest ignores how
    xdist marks it (pytest 9 with xdist 3.8), each test is scheduled alone and a module's
    fixtures (a federation, the compose study) are built again in every worker."""

    @pytest.hookimpl(trylast=True)  # after xdist's own hook, which suffixes "@group" to the ids
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if getattr(config.option, "loadgroup", False) and any("@" not in it.nodeid for it in items):
            raise pytest.UsageError(
                "pytest-xdist's --dist loadgroup did not group the tests (pytest "
                f"{pytest.__version__}); install the versions pyproject.toml pins (make setup)"
            )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("dist", "no") == "loadgroup" and int(pytest.__version__.split(".")[0]) >= 9:
        # said here, in the controller: a worker's refusal shows only as xdist's INTERNALERROR
        raise pytest.UsageError(
            f"pytest {pytest.__version__} ignores how pytest-xdist's --dist loadgroup groups tests; "
            "install the versions pyproject.toml pins (make setup)"
        )
    config.pluginmanager.register(_GroupsTookEffect(), "fedattack-groups-took-effect")


# The units of work that took longest in CI (pytest --durations, summed per unit), longest
# first: handed out first, so that no long one starts last. A scheduling hint only.
LONGEST = (
    "tests/test_compose_up.py",
    "tests/test_attack_e2e.py",
    "tiny-study",
    "tests/test_robust_federation.py",
    "tests/test_deploy_multihost.py",
    "tests/test_federation_e2e.py",
    "compose-kill",
    "federation-resume",
    "feddf",
    "demo-multi",
    "federation-dropout",
    "defenses-fedbn",
)


def _group_for_workers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For `pytest -n N --dist loadgroup` (make test): a test file is one unit of work, so
    that its module fixtures (a federation, a built image) are built once, by one worker;
    a test marked `xdist_group("name")` is a unit of its own (a federation it starts
    itself). Under workers, the units in LONGEST are handed out first, then the others by
    tier (docker, e2e, integration, unit)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    if not getattr(config.option, "loadgroup", False):  # set in an xdist worker under --dist loadgroup
        return
    rank = {tier: len(LONGEST) + i for i, tier in enumerate(TIERS[::-1])}  # docker first, unit last
    first: dict[str, tuple[int, int]] = {}
    for i, item in enumerate(items):
        mark = item.get_closest_marker("xdist_group")
        name = str(mark.args[0]) if mark else ""
        tier = next(m.name for m in item.iter_markers() if m.name in TIERS)
        order = LONGEST.index(name) if name in LONGEST else rank[tier]
        seen = first.get(name, (order, i))
        first[name] = (min(seen[0], order), seen[1])
    items.sort(key=lambda it: first[str(it.get_closest_marker("xdist_group").args[0])])  # type: ignore[union-attr]


# torch and pydicom are imported here, before any test: torch's first import runs
# /sbin/ldconfig (ctypes' find_library, for CUDA's libraries) and pydicom's binds a socket
# (urllib3 probing for IPv6, through requests), which the unit tier's guard below would
# otherwise count against whichever unit test happens to import them first.


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refused(*args: object, **kwargs: object) -> NoReturn:
        target = f" ({args[1]!r})" if len(args) > 1 else ""  # the command line or the address
        pytest.fail(f"a unit test may not {what}{target}: mark it integration")

    return refused


@pytest.fixture(autouse=True)
def _unit_stays_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test (its function-scoped fixtures included) fails where it would start a
    process or use a socket: what the tier promises is checked, not only declared."""
    if request.node.get_closest_marker("unit") is None:
        return
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("start a process"))
    monkeypatch.setattr(os, "fork", _refuse("fork a process"))
    for method in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, method, _refuse(f"{method} a socket"))


def write_config(path: Path, data_dir: Path, out_dir: Path, **overrides: Any) -> Path:
    """A demo-like config YAML for tests; `overrides` maps dotted keys to values."""
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["output_dir"] = str(out_dir)
    raw["data"]["datasets"]["nih"]["root"] = str(data_dir / "nih")
    raw["data"]["datasets"]["rsna"]["root"] = str(data_dir / "rsna")
    raw["data"]["workers"] = 0
    # tests' datasets are too small for the demo's public split; tests of the outsider set it.
    # They were sized for a 20% validation part (the demo takes 30% of its larger twin).
    raw["data"]["split"]["public_fraction"] = 0.0
    raw["data"]["split"]["val_fraction"] = 0.2
    for dotted, value in overrides.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic twin (both datasets), shared read-only by the tests."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, patients=48, size=96, seed=3)
    return out


def planted_pairs(root: Path) -> set[tuple[str, str]]:
    """The synthetic twin's ground truth: (NIH image name, RSNA patientId) of every planted pair."""
    with (root / "planted_twins.csv").open() as fh:
        return {(r["Image Index"], r["patientId"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A twin with many planted shared radiographs (50 of 200 RSNA patients are NIH images),
    at the demo's 128 px; its ground truth is planted_twins.csv. Shared read-only."""
    out = tmp_path_factory.mktemp("planted")
    synthesize(out, patients=200, size=128, seed=1, twin_fraction=0.25)
    return out


@pytest.fixture
def config_path(tmp_path: Path, synth_dir: Path) -> Path:
    return write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run")
