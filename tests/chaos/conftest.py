"""Fixtures of the chaos suite: the ``--slow`` option (registered in options.py), and the
experiment record.

Every test here is one experiment. It takes the ``experiment`` fixture, states its hypothesis,
records what it observed and its figures, and checks the steady state (``steady.check``) before
it ends; the fixture refuses an experiment that skipped that check. ``--chaos-report PATH``
writes every record, with whether its hypothesis held (the test passed), as JSON: what
``scripts/reliability.py`` turns into ``docs/reliability.md``."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import ChaosDaemon
from .steady import Experiment

CHAOS_DIR = Path(__file__).parent
_RECORDS = pytest.StashKey[list[Experiment]]()
_REPORT = pytest.StashKey[pytest.TestReport]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RECORDS] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --slow")
    for item in items:
        if "slow" in item.keywords and CHAOS_DIR in Path(str(item.path)).parents:
            item.add_marker(skip)
            # Listed in the report as not run, with the hypothesis it would test.
            record = Experiment(family=getattr(item.module, "FAMILY", item.module.__name__),
                                name=_title(item.name), nodeid=item.nodeid,
                                hypothesis=_doc(item), skipped="long variant: run with --slow")
            config.stash[_RECORDS].append(record)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.when == "call" or report.failed:
        previous = item.stash.get(_REPORT, None)
        if previous is None or not previous.failed:
            item.stash[_REPORT] = report
    return report


@pytest.fixture
def experiment(request: pytest.FixtureRequest):
    module = request.module
    record = Experiment(
        family=getattr(module, "FAMILY", module.__name__),
        name=_title(request.node.name),
        nodeid=request.node.nodeid,
        hypothesis=_doc(request.node),
    )
    record.started = time.monotonic()
    try:
        yield record
    finally:
        ChaosDaemon.kill_all()
    record.duration_s = time.monotonic() - record.started
    request.config.stash[_RECORDS].append(record)
    record.item = request.node
    report = request.node.stash.get(_REPORT, None)
    failed = report is not None and report.failed
    if record.steady is None and not record.skipped and not failed:
        raise AssertionError(f"experiment {record.name!r} ended without checking the steady state")


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--chaos-report")
    if not path:
        return
    order = {item.nodeid: i for i, item in enumerate(session.items)}
    records = sorted(session.config.stash.get(_RECORDS, []),
                     key=lambda r: order.get(r.nodeid, len(order)))
    out = []
    for record in records:
        report = record.item.stash.get(_REPORT, None) if record.item is not None else None
        held = (report is not None and report.passed and record.steady is not None
                and not record.skipped)
        failure = None
        if report is not None and report.failed:
            failure = _short(report.longreprtext)
        out.append({**record.as_dict(), "held": held, "failure": failure})
    Path(path).write_text(json.dumps({
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {_cpus()} CPU(s), {platform.system()}",
        "slow": bool(session.config.getoption("--slow")),
        "experiments": out,
    }, indent=2, default=str))


def _title(test_name: str) -> str:
    """``test_kill_9_during_sampling`` -> ``kill -9 during sampling``."""
    return test_name.removeprefix("test_").replace("_", " ").replace("kill 9", "kill -9")


def _doc(item: Any) -> str:
    """The test's docstring, one paragraph: the hypothesis it tests."""
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    return " ".join(doc.split())


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _short(text: str) -> str:
    """The assertion line of a failure (the line starting with ``E``), else its last line."""
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
    return " ".join(lines[:3])[:400] if lines else text.strip().splitlines()[-1][:400]
