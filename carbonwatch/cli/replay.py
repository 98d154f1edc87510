"""``carbonwatch replay TRACE_DIR``."""

from __future__ import annotations

from pathlib import Path

import click

from carbonwatch.cli.common import echo_json, handle_errors, load, settings_options
from carbonwatch.collectors.gpushare import gpu_options
from carbonwatch.config import IDLE_POLICIES
from carbonwatch.replayer import replay_trace
from carbonwatch.store import open_store
from carbonwatch.store.gpu_idle import load_gpu_idle


@click.command("replay")
@click.argument("trace_dir", type=click.Path(file_okay=False))
@click.option(
    "--idle-policy", type=click.Choice(IDLE_POLICIES), default="separate", show_default=True
)
@click.option(
    "--power-interval",
    "power_interval_s",
    type=float,
    default=0.1,
    show_default=True,
    help="Seconds between power polls.",
)
@click.option(
    "--counter-interval",
    "counter_interval_s",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between energy-counter reads.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@settings_options
@handle_errors
def replay_cmd(
    trace_dir: str,
    idle_policy: str,
    power_interval_s: float,
    counter_interval_s: float,
    as_json: bool,
    config_path: str | None,
    db: str | None,
) -> None:
    """Run the real collectors and attribution over a recorded trace and print the device total,
    the idle energy and each process's attributed energy.

    The GPU idle baseline is ``gpu_idle_power_w`` when set, else what the store learned earlier
    for the trace's GPU UUID, else learned from the trace's own process-free intervals. --json
    also says how each interval's active energy was split (solo, power-fit, sm-share, even).

    \b
    Example:
      carbonwatch replay tests/fixtures/h200-shared-gpu --idle-policy proportional --json
    """
    if power_interval_s <= 0 or counter_interval_s <= 0:
        raise click.BadParameter("intervals must be > 0")
    settings = load(config_path, db=db)
    report = replay_trace(
        trace_dir,
        idle_policy=idle_policy,
        power_interval_s=power_interval_s,
        counter_interval_s=counter_interval_s,
        gpu_options=gpu_options(settings, _stored_idle(settings.db_path)),
    )
    if as_json:
        echo_json(report.as_json())
        return
    click.echo(f"{report.gpu_name} trace {report.trace_dir}  ({report.provenance})")
    click.echo(
        f"  device total      {report.total_energy_j:10.1f} J  "
        f"(counter delta {report.counter_delta_j:.1f} J, {report.error_pct:+.2f} %)"
    )
    click.echo(f"  idle              {report.idle_energy_j:10.1f} J  (policy {report.idle_policy})")
    click.echo(f"                    {report.idle_baseline.get('detail', '')}")
    for p in report.processes:
        click.echo(f"  pid {p['pid']:<6} {p['role']:<7} {p['energy_j']:10.1f} J")
    click.echo(
        f"  unattributed      {report.unattributed_energy_j:10.1f} J  "
        "(active energy while no process showed GPU activity)"
    )
    methods = ", ".join(f"{m} {v['intervals']}" for m, v in report.split_methods().items())
    click.echo(f"  intervals split by: {methods}")


def _stored_idle(db_path: Path) -> dict[str, float]:
    """Idle baselines learned earlier, read-only; none when there is no store yet."""
    if not db_path.exists():
        return {}
    store = open_store(db_path, read_only=True)
    try:
        return load_gpu_idle(store.conn)
    finally:
        store.close()
