"""The house rules of docs/architecture.md, checked on the source: a reader can trust the layout.

Sizes: no module over 400 lines, no class holding more than 16 attributes of its own (about 15:
the daemon's wiring class holds one per object it wires). Imports: no circle between modules, and
only the command line reaches into agent/tools/ (the off-board tools never load with `run`). One
dialect, the board's Python 3.9: `%` formatting and Optional, never an f-string or `X | None`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

from conftest import ROOT

AGENT = ROOT / "agent"
MAX_LINES = 400
MAX_ATTRIBUTES = 16


def _modules() -> Dict[str, Path]:
    found = {}
    for path in sorted(AGENT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: Dict[str, Path]) -> Set[str]:
    """The agent modules `name` imports, at any depth of its code (a function's import counts too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            out.add(base)
            out.update("%s.%s" % (base, alias.name) for alias in node.names)
    return {m for m in out if m in known and m != name}


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _classes() -> Iterator[Tuple[str, ast.ClassDef]]:
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                yield name, node


def test_no_module_of_the_agent_is_over_400_lines():
    lines = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in lines.items() if n > MAX_LINES} == {}


def test_no_class_holds_more_than_16_attributes_of_its_own():
    crowded = {}
    for module, cls in _classes():
        assigned = {node.attr for node in ast.walk(cls)
                    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"}
        if len(assigned) > MAX_ATTRIBUTES:
            crowded["%s.%s" % (module, cls.name)] = len(assigned)
    assert crowded == {}


def test_no_two_modules_import_each_other_even_through_others():
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    assert _circles(graph) == []


def test_the_circle_finder_sees_a_circle():
    # The check above must be able to fail.
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_command_line_reaches_into_the_tools():
    known = _modules()
    reaching = {name for name, path in known.items()
                if not name.startswith("agent.tools") and name != "agent.cli"
                and any(m.startswith("agent.tools") for m in _imports(name, path, known))}
    assert reaching == set()


def test_one_dialect_everywhere_no_f_strings_and_no_pipe_none():
    """The board's Python is 3.9: `X | None` fails at run time outside annotations, and one way of
    formatting (`%`, as logging takes its arguments) keeps the code one voice."""
    offenders = []
    for folder in ("agent", "tests", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
                continue  # a virtualenv (bench/.peers-venv after `make bench-peers`): not the project's code
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.expr):  # both offenders are expressions, which carry a line
                    continue
                pipe_none = (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                             and any(isinstance(side, ast.Constant) and side.value is None
                                     for side in (node.left, node.right)))
                if isinstance(node, ast.JoinedStr) or pipe_none:
                    offenders.append("%s:%d" % (path.relative_to(ROOT), node.lineno))
    assert offenders == []
