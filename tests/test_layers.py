"""The package's layers: every import points down (docs/architecture.md draws the picture).

Read from the source with ``ast``, so an import inside a function (lazy, to keep start-up fast)
counts as much as one at the top; imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lrsearch"

# Bottom up; a unit is a top-level module or package of lrsearch. A unit may import its own layer
# and the ones below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("leaves", {"", "errors", "schema", "limits", "masking", "threads", "trust", "_optuna_compat"}),
    ("study file", {"spec", "groups", "space", "config"}),
    ("tasks", {"tasks"}),
    ("training", {"training"}),
    ("storage", {"storage"}),
    ("ranking", {"pick"}),
    ("retraining", {"retrain"}),
    ("search", {"search"}),
    ("readers", {"analysis", "report", "export", "verify"}),
    ("commands", {"cli", "launch", "init", "notebook", "_cli_reference"}),
]
# The one import that points up, and why: ``lrsearch.search`` is both the search's package and
# the notebook API's name (``lrsearch.search(model_fn, ...)``); importing the package sets that
# attribute, so the package itself is made callable and hands the call to lrsearch.notebook.
ALLOWED_UP = {("search", "notebook")}
# Modules past this many lines have become several concerns: split them (STYLE.md: ~500).
MAX_LINES = 600


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for i, (_, units) in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"lrsearch.{unit} is in no layer: add it to LAYERS (and the docs)")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, top_only: bool) -> list[str]:
    """The lrsearch modules ``tree`` imports (``from a import b`` gives ``a.b`` when it is one)."""
    found: list[str] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, top)
                continue
            counted = top or not top_only
            if isinstance(child, ast.ImportFrom) and child.level == 0 and counted:
                module = child.module or ""
                if module == "lrsearch" or module.startswith("lrsearch."):
                    found.extend(_resolve(module, a.name) for a in child.names)
            elif isinstance(child, ast.Import) and counted:
                found.extend(a.name for a in child.names if a.name.startswith("lrsearch"))
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            visit(child, inner)

    visit(tree, True)
    return found


def _resolve(module: str, name: str) -> str:
    candidate = f"{module}.{name}"
    path = PACKAGE.parent / candidate.replace(".", "/")
    return candidate if path.with_suffix(".py").exists() or path.is_dir() else module


def _sources() -> dict[str, ast.AST]:
    return {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_down() -> None:
    upward = []
    for module, tree in _sources().items():
        source = _unit(module)
        for target in _imports(tree, top_only=False):
            to = _unit(target)
            if _layer(to) > _layer(source) and (source, to) not in ALLOWED_UP:
                upward.append(f"{module} imports {target} ({LAYERS[_layer(to)][0]} is above)")
    assert not upward, "\n".join(upward)


def test_no_import_cycles_at_import_time() -> None:
    graph = {m: set(_imports(t, top_only=True)) - {m} for m, t in _sources().items()}

    edges = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return [*path[path.index(t) :], t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_has_grown_into_several(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)}: {lines} lines; split it"
