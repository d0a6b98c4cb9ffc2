"""The rooms of DESIGN.md and the imports that must never exist, checked on every import
statement (function-level and relative ones included), plus the house rule on module size."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

ROOMS = ("shared", "server", "clients", "attack", "deploy", "cli")
# room -> rooms it must never import. `cli` is the entry layer above every room.
FORBIDDEN = {
    "shared": {"server", "clients", "attack", "deploy", "cli"},
    "server": {"clients", "attack", "deploy", "cli"},
    "clients": {"server", "attack", "deploy", "cli"},
    "attack": {"server", "clients", "deploy", "cli"},
    "deploy": {"server", "clients", "attack", "cli"},
}
LONG_MODULE_LINES = 260
LONG_MODULE_REASON = "Why this module is long:"


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative imports resolved."""
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
    return found


def violations(root: Path) -> list[str]:
    out = []
    for room, banned in FORBIDDEN.items():
        for path in sorted((root / room).rglob("*.py")):
            for line, module in imported_modules(path, root):
                if module.split(".")[0] in banned:
                    out.append(f"{path.relative_to(root)}:{line} imports {module}")
    return out


def test_no_room_imports_what_design_forbids() -> None:
    assert violations(REPO) == []


def test_the_check_catches_function_level_and_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "x.py").write_text("def f():\n    from server import app\n")
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "y.py").write_text("import torch\nfrom ..clients import site\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "z.py").write_text("import server.app\n")  # allowed: the entry layer
    assert violations(tmp_path) == ["shared/data/x.py:2 imports server", "attack/y.py:2 imports clients"]


def test_every_module_is_short_or_says_why() -> None:
    long = []
    for room in ROOMS:
        for path in sorted((REPO / room).rglob("*.py")):
            text = path.read_text()
            doc = ast.get_docstring(ast.parse(text)) or ""
            if len(text.splitlines()) > LONG_MODULE_LINES and LONG_MODULE_REASON not in doc:
                long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
    assert long == [], f"split these modules or give a reason ({LONG_MODULE_REASON!r}) at their top"
