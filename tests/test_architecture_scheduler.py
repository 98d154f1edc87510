"""The scheduler and store rules of docs/architecture.md, checked on the source: the daemon
depends on the scheduler, never the reverse; the scheduler serves no HTTP; the store's table
modules know nothing of their callers. Function-level imports count; TYPE_CHECKING blocks do
not (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "carbonwatch"


def _imports(path: Path, package: str) -> set[str]:
    """Every module an import statement of ``path`` names (absolute; relative ones resolved)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _offenders(folder: str, banned: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((PKG / folder).rglob("*.py")):
        package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
        bad = sorted(m for m in _imports(path, package) if m.startswith(banned))
        if bad:
            out.append(f"{path.relative_to(PKG.parent)}: {', '.join(bad)}")
    return out


def test_the_scheduler_imports_nothing_of_the_daemon_and_serves_no_http():
    assert _offenders("scheduler", ("carbonwatch.daemon", "aiohttp")) == []


def test_the_store_imports_nothing_of_its_callers():
    callers = ("carbonwatch.daemon", "carbonwatch.scheduler", "carbonwatch.cli", "aiohttp")
    assert _offenders("store", callers) == []


def test_the_check_sees_function_level_imports_and_skips_type_checking(tmp_path):
    # The rules would pass vacuously if function-level imports were missed.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from carbonwatch.daemon.app import Daemon\n"
        "def f():\n    from carbonwatch.daemon import validation\n    import aiohttp\n"
    )
    found = _imports(probe, "carbonwatch.scheduler")
    assert {"carbonwatch.daemon", "carbonwatch.daemon.validation", "aiohttp"} <= found
    assert "carbonwatch.daemon.app" not in found
