"""``carbonwatch run -- CMD``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import click

from carbonwatch.cli.common import (
    echo_json,
    handle_errors,
    intensity_source,
    load,
    settings_options,
)
from carbonwatch.collectors.detect import build_collectors, default_process_scanner
from carbonwatch.collectors.gpushare import gpu_options
from carbonwatch.config import Settings
from carbonwatch.errors import CarbonwatchError
from carbonwatch.identity import identity_from_env
from carbonwatch.jobreport import format_summary
from carbonwatch.runner import run_command
from carbonwatch.store import open_store
from carbonwatch.store.gpu_idle import load_gpu_idle, save_gpu_idle


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--name", default=None, help="Job name (default: the command's name).")
@click.option(
    "--kind",
    type=click.Choice(["training", "inference", "other"]),
    default="other",
    show_default=True,
)
@click.option("--model", default=None, help="Model this job trains or serves.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@click.option("--backend", default=None, help="GPU backend: auto | nvml | none | replay:DIR.")
@settings_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def run_cmd(
    name: str | None,
    kind: str,
    model: str | None,
    as_json: bool,
    backend: str | None,
    config_path: str | None,
    db: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND, measure the energy of its whole process tree, record and print it.

    \b
    Example:
      carbonwatch run --name resnet --kind training -- python train.py --epochs 3

    Exits with COMMAND's own exit code. SIGINT/SIGTERM are forwarded to the command; the record
    is written either way.
    """
    settings = load(config_path, db=db, backend=backend)
    found = identity_from_env(os.environ)  # Slurm job, torchrun run, pod: ranks are one job
    identity = found.key if found else None
    child = None
    if backend is None:  # an explicit backend means: measure here, with it
        child = _run_with_daemon_if_any(settings, command, name, kind, model, as_json, identity)
        if child is not None:
            identity = None  # measured alone, as one wrapper: no rank to join
    scanner = default_process_scanner()
    try:
        store = open_store(settings.db_path)
    except CarbonwatchError as exc:
        if child is None:
            raise
        # The command already runs: measure and print it even where no store can be written.
        click.echo(f"carbonwatch: not recording this run ({exc})", err=True)
        store = None

    def idle_learned(uuid: str, idle_w: float, learned_s: float) -> None:
        if store is not None:
            save_gpu_idle(store.conn, uuid, idle_w, learned_s, time.time())

    try:
        stored_idle = load_gpu_idle(store.conn) if store is not None else {}
        collectors, notes = build_collectors(
            settings.backend, rapl_root=settings.rapl_root, processes=scanner,
            gpu_options=gpu_options(settings, stored_idle, idle_learned),
        )
    except BaseException:
        if store is not None:
            store.close()
        raise
    for note in notes:
        click.echo(f"carbonwatch: {note}", err=True)
    try:
        result = run_command(
            list(command),
            settings=settings,
            collectors=collectors,
            intensity=intensity_source(settings),
            store=store,
            name=name,
            kind=kind,
            model=model,
            identity=identity,
            processes=scanner,
            child=child,
        )
    except FileNotFoundError as exc:
        click.echo(f"carbonwatch: error: {exc}", err=True)
        sys.exit(127)
    finally:
        for collector in collectors:
            collector.close()
        if store is not None:
            store.close()
    if as_json:
        echo_json(result.as_json())
    else:
        click.echo(format_summary(result), err=True)  # stdout stays the command's
    sys.exit(result.exit_code)


def _run_with_daemon_if_any(
    settings: Settings,
    command: tuple[str, ...],
    name: str | None,
    kind: str,
    model: str | None,
    as_json: bool,
    identity: str | None = None,
) -> subprocess.Popen[Any] | None:
    """A running daemon already measures this node: register the command with it (and exit with
    the command's code) rather than measure twice. Returns when no daemon answers (None), or
    when the daemon refused the job: then the command, already running, is returned to be
    measured here; it is never killed over a refusal."""
    from carbonwatch.daemon.attach import (  # stdlib only
        DaemonRefused,
        EndNotRecorded,
        run_if_daemon,
    )

    try:
        # With an identity, ranks of one job merge into one daemon job; the last to exit ends it.
        attached = run_if_daemon(
            list(command), settings=settings, name=name, kind=kind, model=model,
            identity=identity,
        )
    except FileNotFoundError as exc:
        click.echo(f"carbonwatch: error: {exc}", err=True)
        sys.exit(127)
    except DaemonRefused as refused:
        click.echo(f"carbonwatch: {refused.reason}; measuring the command here instead", err=True)
        return refused.child
    except EndNotRecorded as exc:
        click.echo(f"carbonwatch: warning: {exc}; the command itself exited with "
                   f"{exc.exit_code}", err=True)
        sys.exit(exc.exit_code)
    if attached is None:
        return None
    if as_json:
        echo_json(attached.as_json())
    else:
        click.echo(format_summary(attached), err=True)  # stdout stays the command's
    sys.exit(attached.exit_code)
