"""The shape of the code, checked from its source (issue 13): dependencies point one way.

Imports are read with ``ast``: module-level and function-level ones alike (a function-level import
hides a cycle, it does not remove it); those under ``if TYPE_CHECKING:`` are left out, since they
never run. Each test fails naming the modules that break its rule."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "carbonwatch"
MAX_LINES = 500

# Modules allowed over MAX_LINES for now, each with who shrinks it. Keep this list short: an entry
# is a debt with an owner, not an exemption.
LONG_ALLOWED = {
}


def _module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(inner) for inner in ast.walk(node))
    return skip


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The module names an import statement loads (``from pkg import name``: pkg, and pkg.name
    when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """carbonwatch module -> the carbonwatch modules it imports (TYPE_CHECKING aside)."""
    files = _module_files()
    graph: dict[str, frozenset[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(module, path.name == "__init__.py", node):
                if target in files and target != module:
                    deps.add(target)
        graph[module] = frozenset(deps)
    return graph


def import_cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def _imports_from(prefix: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for module, deps in import_graph().items():
        if module == prefix or module.startswith(prefix + "."):
            hits = sorted(d for d in deps
                          if any(d == f or d.startswith(f + ".") for f in forbidden))
            if hits:
                bad[module] = hits
    return bad


def test_the_checker_finds_a_cycle_hidden_in_a_function():
    """The rule can fail: a cycle closed by a function-level import is a cycle."""
    assert import_cycles({"a": frozenset({"b"}), "b": frozenset({"a"}), "c": frozenset()}) == [
        ["a", "b"]
    ]
    source = "def f():\n    from carbonwatch.runner import run_command\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    assert "carbonwatch.runner" in _targets("carbonwatch.x", False, node)


def test_no_import_cycle_among_carbonwatch_modules():
    assert import_cycles(import_graph()) == []


def test_the_daemon_never_imports_the_wrapper():
    """``carbonwatch run`` uses the daemon (attach.py), never the reverse: process handling both
    need is ``proc.py``."""
    assert _imports_from("carbonwatch.daemon", ("carbonwatch.runner",)) == {}


def test_identity_detection_imports_nothing_of_carbonwatch():
    assert import_graph()["carbonwatch.identity"] == frozenset()


def test_proc_is_low_level():
    """``proc.py`` is imported by the wrapper, the ranks and the daemon: it imports none of them."""
    assert import_graph()["carbonwatch.proc"] == frozenset()


def _third_party_imports(prefix: str, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules under ``prefix`` importing any of ``names`` (outside carbonwatch), TYPE_CHECKING
    aside."""
    bad = {}
    for module, path in _module_files().items():
        if not (module == prefix or module.startswith(prefix + ".")):
            continue
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        hits = sorted({
            target
            for node in ast.walk(tree)
            if id(node) not in skip and isinstance(node, ast.Import | ast.ImportFrom)
            for target in _targets(module, path.name == "__init__.py", node)
            if any(target == n or target.startswith(n + ".") for n in names)
        })
        if hits:
            bad[module] = hits
    return bad


def test_the_scheduler_never_imports_the_daemon():
    """The daemon depends on the scheduler (its routes are ``daemon/deferred_routes.py``), never
    the reverse."""
    assert _imports_from("carbonwatch.scheduler", ("carbonwatch.daemon",)) == {}


def test_the_scheduler_serves_no_http():
    assert _third_party_imports("carbonwatch.scheduler", ("aiohttp",)) == {}


def test_the_store_imports_nothing_of_its_callers():
    """The table modules are functions over a connection: they know no daemon, scheduler or CLI."""
    callers = ("carbonwatch.daemon", "carbonwatch.scheduler", "carbonwatch.cli")
    assert _imports_from("carbonwatch.store", callers) == {}
    assert _third_party_imports("carbonwatch.store", ("aiohttp",)) == {}


def test_the_third_party_check_sees_a_function_level_import():
    """The aiohttp rule can fail: an import inside a function is seen."""
    source = "def f():\n    import aiohttp.web\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import))
    assert _targets("carbonwatch.scheduler.x", False, node) == ["aiohttp.web"]


@pytest.mark.parametrize("module", sorted(_module_files()))
def test_no_module_over_500_lines(module):
    lines = len(_module_files()[module].read_text().splitlines())
    if module in LONG_ALLOWED:
        pytest.skip(f"{lines} lines, allowed for now: {LONG_ALLOWED[module]}")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (limit {MAX_LINES}): split it"


def test_the_allow_list_holds_only_long_modules():
    """An entry whose module shrank (or went) must leave the list, so it cannot grow stale."""
    files = _module_files()
    stale = [m for m in LONG_ALLOWED if m not in files
             or len(files[m].read_text().splitlines()) <= MAX_LINES]
    assert stale == []
