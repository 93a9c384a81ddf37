"""The package's shape, read from its source: no import cycles, no private names across modules.

Every import of an lmforge module counts, wherever it is written — at the top, inside a function,
under ``if TYPE_CHECKING:`` — since an import moved into a function hides a cycle from Python but
not from a reader. A module's private names (``_x``) are its own: another module that needs one
gets it made public instead (``from lmforge.x import _y`` and ``x._y`` are refused).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lmforge"

# (importer, imported) edges left out of the cycle check, each with its reason.
ALLOWED_EDGES = {
    # click's usual layout: `lmforge.cli` defines `main` and imports its subcommand modules at the
    # end so they register with it; each of them imports `main` (and helpers) from `lmforge.cli`.
    ("lmforge.cli", f"lmforge.cli.{name}")
    for name in ("align", "bench", "data", "demo", "eval", "export", "scaling", "serve",
                 "tokenizer", "train")
} | {
    # `lmforge scaling` is assembled the same way from one module per concern.
    ("lmforge.cli.scaling", f"lmforge.cli.scaling_{name}")
    for name in ("client", "fit", "plan", "service")
}
# (module, private name it may use from another module): none today.
ALLOWED_PRIVATE: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a (possibly relative) ``from ... import``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(imported module, name imported from it or "", line)`` for each lmforge import."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(name, path.name == "__init__.py", node)
            if not source.startswith("lmforge"):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((sub, "", node.lineno) if sub in known
                             else (source, alias.name, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m, _, _ in imports(name, path, known) if m != name and m in known
                   and (name, m) not in ALLOWED_EDGES}
            for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (break them: move the shared part to a module both use):\n" + \
        "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def private_uses(name: str, path: Path, known: dict[str, Path]) -> list[str]:
    """Where module ``name`` uses another lmforge module's private names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, aliases = [], {}
    for module, imported, line in imports(name, path, known):
        if imported.startswith("_") and not imported.startswith("__") and module != name:
            found.append(f"{path.name}:{line}: from {module} import {imported}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(name, path.name == "__init__.py", node)
            for a in node.names:
                if f"{source}.{a.name}" in known:
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            continue
        base = ast.unparse(node.value)
        module = aliases.get(base) or (base if base in known else None)
        if module is not None and module != name:
            found.append(f"{path.name}:{node.lineno}: {base}.{node.attr} ({module})")
    return [f for f in found if (name, f.rsplit(" ", 1)[-1]) not in ALLOWED_PRIVATE]


def test_no_private_name_is_used_across_modules():
    known = modules()
    found = [f"{name}: {use}" for name, path in known.items()
             for use in private_uses(name, path, known)]
    assert not found, "private names used across modules (make them public where defined):\n" + \
        "\n".join(found)


@pytest.mark.parametrize(("source", "expected"), [
    ("from lmforge.tokenizer.formats.gpt2 import _x\n", "from lmforge.tokenizer.formats.gpt2"),
    ("from lmforge.tokenizer import bpe\nbpe._bpe\n", "bpe._bpe"),
    ("import lmforge.tokenizer.bpe\nlmforge.tokenizer.bpe._CACHE_MAX\n", "bpe._CACHE_MAX"),
])
def test_the_checker_finds_private_uses(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = private_uses("lmforge.probe", path, modules())
    assert len(found) == 1 and expected in found[0]


def test_the_checker_allows_a_modules_own_privates(tmp_path):
    path = tmp_path / "bpe.py"
    path.write_text("from lmforge.tokenizer import bpe\nbpe._bpe\n_x = 1\n")
    assert private_uses("lmforge.tokenizer.bpe", path, modules()) == []
