"""The architecture of docs/architecture.md, enforced: its rooms table is read here, and every
import statement of the project (function-level and relative ones included) must follow
it; the app package must hold exactly the rooms marked as shipped, and the ClientApp's
import closure no data-preparation module; every module states its job."""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from flwr.cli.utils import build_pathspec

from tests.conftest import REPO

pytestmark = pytest.mark.unit

TOP = ("shared", "server", "clients", "attack", "deploy", "pipeline", "cli")
APP_ENTRIES = ("clients.app", "server.app")


@dataclass(frozen=True)
class Room:
    name: str
    job: str
    ships: bool
    may_import: frozenset[str]


def rooms_table(doc: Path = REPO / "docs" / "architecture.md") -> dict[str, Room]:
    """The rows between the rooms markers of docs/architecture.md."""
    text = doc.read_text()
    body = text.split("<!-- rooms:begin -->", 1)[1].split("<!-- rooms:end -->", 1)[0]
    rooms = {}
    for line in body.strip().splitlines()[2:]:  # header and rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, job, ships, may = cells
        rooms[name.strip("`")] = Room(
            name.strip("`"), job, ships == "yes", frozenset(re.findall(r"`([\w.]+)`", may))
        )
    return rooms


def room_of(module: str, rooms: dict[str, Room]) -> str | None:
    """The room with the longest dotted prefix of `module`; None outside the project."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in rooms:
            return ".".join(parts[:n])
    return None


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative imports resolved;
    `from package import name` also yields package.name (it may be a module)."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package = path.relative_to(root).parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [
                (node.lineno, f"{module}.{a.name}") for a in node.names if _is_module(root, module, a.name)
            ]
    return found


def _is_module(root: Path, package: str, name: str) -> bool:
    base = root.joinpath(*package.split("."), name)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def project_files(root: Path) -> list[Path]:
    return sorted(p for top in TOP for p in (root / top).rglob("*.py"))


def violations(root: Path, rooms: dict[str, Room]) -> list[str]:
    out = []
    for path in project_files(root):
        here = room_of(module_name(path, root), rooms)
        if here is None:
            out.append(f"{path.relative_to(root)}: in no room of docs/architecture.md")
            continue
        for line, module in imported_modules(path, root):
            there = room_of(module, rooms)
            if module.split(".")[0] not in TOP or there is None or there == here:
                continue
            if there not in rooms[here].may_import:
                out.append(
                    f"{path.relative_to(root)}:{line} imports {module} ({here} may not import {there})"
                )
    return out


def closure(entries: tuple[str, ...], root: Path) -> set[str]:
    """Every project module the entries import, transitively (function-level imports too)."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        base = root.joinpath(*module.split("."))
        path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module in seen or not path.is_file():
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # packages' __init__ run too
        todo += [m for _, m in imported_modules(path, root) if m.split(".")[0] in TOP]
    return seen


def test_every_module_is_in_a_room_and_imports_only_what_its_room_may() -> None:
    assert violations(REPO, rooms_table()) == []


def test_the_table_names_only_rooms_that_exist_and_rules_over_known_rooms() -> None:
    rooms = rooms_table()
    assert {n.split(".")[0] for n in rooms} == set(TOP)
    for room in rooms.values():
        assert (REPO.joinpath(*room.name.split("."))).exists() or (
            REPO.joinpath(*room.name.split(".")).with_suffix(".py").is_file()
        ), room.name
        assert room.may_import <= set(rooms), f"{room.name} names unknown rooms"
        assert room.job, room.name
    for room in rooms.values():  # a shipped room never needs one that does not ship
        if room.ships:
            assert all(rooms[r].ships for r in room.may_import), room.name


def test_the_check_catches_function_level_and_relative_imports(tmp_path: Path) -> None:
    rooms = {
        "shared": Room("shared", "ground", True, frozenset()),
        "shared.data": Room("shared.data", "data", True, frozenset({"shared"})),
        "attack": Room("attack", "attack", False, frozenset({"shared"})),
        "cli": Room("cli", "entry", False, frozenset({"shared", "attack"})),
    }
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "__init__.py").write_text("")
    (tmp_path / "shared" / "data" / "x.py").write_text("def f():\n    from attack import y\n")
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "y.py").write_text(
        "import torch\nfrom ..cli import z\nfrom shared.data import x\n"
    )
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "z.py").write_text("import attack.y\n")  # allowed: the entry layer
    found = violations(tmp_path, rooms)
    assert found == [
        "attack/y.py:2 imports cli (attack may not import cli)",
        "attack/y.py:2 imports cli.z (attack may not import cli)",
        "attack/y.py:3 imports shared.data (attack may not import shared.data)",
        "attack/y.py:3 imports shared.data.x (attack may not import shared.data)",
        "shared/data/x.py:2 imports attack (shared.data may not import attack)",
        "shared/data/x.py:2 imports attack.y (shared.data may not import attack)",
    ]


def test_the_app_package_holds_exactly_the_shipped_rooms() -> None:
    """What `flwr run` packs (fab-include) is every module of the shipped rooms and nothing
    else; the apps' import closure stays inside it."""
    rooms = rooms_table()
    flwr = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    spec = build_pathspec(flwr["fab-include"])  # Flower's own reading of the patterns
    packed = {module_name(p, REPO) for p in project_files(REPO) if spec.match_file(str(p.relative_to(REPO)))}
    shipped = {
        module_name(p, REPO)
        for p in project_files(REPO)
        if rooms[room_of(module_name(p, REPO), rooms) or ""].ships
    }
    assert packed == shipped
    outside = sorted(closure(APP_ENTRIES, REPO) - packed)
    assert outside == [], f"the apps import modules the app package does not ship: {outside}"


def test_the_clientapp_imports_no_data_preparation() -> None:
    mods = closure(("clients.app",), REPO)
    assert "clients.site" in mods and "shared.data.cache" in mods  # the closure is really walked
    assert sorted(m for m in mods if m.startswith("shared.prep")) == []


def test_every_module_says_its_job() -> None:
    silent = [
        str(p.relative_to(REPO))
        for p in project_files(REPO)
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert silent == [], "start each with a docstring whose first line says its job"
