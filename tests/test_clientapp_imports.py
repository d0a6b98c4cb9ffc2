"""The ClientApp's start stays lean: Flower starts a process per message, and what
`import clients.app` pulls (and leaves for the collector) is paid by every message
(benchmarks/clientapp_start.py).

Read statically from the sources (a unit test: no fresh interpreter, whose sys.modules
alone would tell): the statements that run at import time (module level, class bodies,
`if`/`try` blocks; not function bodies nor `if TYPE_CHECKING:` blocks) of every project
module the ClientApp imports that way, and the third-party packages they import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("clients", "shared", "server", "attack", "deploy", "pipeline", "cli")
# Imported where they are used, never at import time: a message that opens a built cache
# decodes no image (pydicom and requests, ~0.1 s of the start), and data preparation is not shipped.
LAZY = ("pydicom", "shared.data.dicomhead", "shared.prep")


def _source(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of `body` that run when the module is imported."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            found += (
                _import_time(node.orelse)
                if _is_type_checking(node)
                else _import_time(node.body + node.orelse)
            )
        elif isinstance(node, ast.Try):
            blocks = node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
            found += _import_time(blocks)
        elif isinstance(node, ast.With | ast.ClassDef):
            found += _import_time(node.body)
    return found


def _names(node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names the statement imports (`from p import m` also yields p.m); the
    project uses absolute imports only."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert node.level == 0 and node.module, "relative import"
    return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]


def import_time_closure(entry: str) -> tuple[set[str], set[str]]:
    """(project modules, every name imported) when `entry` is imported."""
    seen: set[str] = set()
    names: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        path = _source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # the packages' __init__ run first
        for node in _import_time(ast.parse(path.read_text(), str(path)).body):
            for name in _names(node):
                names.add(name)
                if name.split(".")[0] in PROJECT:
                    todo.append(name)
    return seen, names


def _pulls(names: set[str], lazy: str) -> list[str]:
    return sorted(n for n in names if n == lazy or n.startswith(f"{lazy}."))


def test_the_walk_sees_the_clientapps_real_closure() -> None:
    modules, names = import_time_closure("clients.app")
    assert {"clients.site", "shared.data.cache", "shared.data.images", "shared.ml.models"} <= modules
    assert {"torch", "timm", "numpy"} <= {n.split(".")[0] for n in names}


@pytest.mark.parametrize("lazy", LAZY)
def test_the_clientapp_does_not_import_at_start(lazy: str) -> None:
    _, names = import_time_closure("clients.app")
    assert _pulls(names, lazy) == [], f"importing clients.app imports {lazy}: import it where it is used"


def test_the_decoders_still_import_pydicom_where_they_decode() -> None:
    """The DICOM reader imports it in its body (the walk above does not read bodies)."""
    tree = ast.parse((REPO / "shared" / "data" / "images.py").read_text())
    read_dicom = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_decode_dicom")
    imported = {
        n
        for node in ast.walk(read_dicom)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for n in _names(node)
    }
    assert "pydicom.pixels" in imported and "shared.data.dicomhead" in imported


@pytest.mark.parametrize("app", ["clients/app.py", "server/app.py"])
def test_the_apps_freeze_what_their_imports_made(app: str) -> None:
    """The collector paused before the heavy imports (gc and __future__ alone come first),
    gc.freeze() after them, then the collector on again: its passes during the imports and
    at each message process's exit skip the ~400,000 import-time objects (about 0.5 s and
    0.9 s a message); a message's own work is collected as usual. The same in the ServerApp,
    one process per run."""
    tree = ast.parse((REPO / app).read_text())

    def at(name: str) -> list[int]:
        return [
            i
            for i, node in enumerate(tree.body)
            if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == name
        ]

    imports = [i for i, node in enumerate(tree.body) if isinstance(node, ast.Import | ast.ImportFrom)]
    heavy = [i for i in imports if {"gc", "__future__"}.isdisjoint(_names(tree.body[i]))]
    assert at("gc.disable") and at("gc.disable")[0] < min(heavy)
    assert at("gc.freeze") and at("gc.freeze")[0] > max(imports)
    assert at("gc.enable") and at("gc.enable")[0] > at("gc.freeze")[0]
