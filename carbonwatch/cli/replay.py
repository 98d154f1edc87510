"""``carbonwatch replay TRACE_DIR``."""

from __future__ import annotations

import click

from carbonwatch.cli.common import echo_json, handle_errors
from carbonwatch.config import IDLE_POLICIES
from carbonwatch.replayer import replay_trace


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
@handle_errors
def replay_cmd(
    trace_dir: str,
    idle_policy: str,
    power_interval_s: float,
    counter_interval_s: float,
    as_json: bool,
) -> None:
    """Run the real collectors and attribution over a recorded trace and print the device total,
    the idle energy and each process's attributed energy.

    \b
    Example:
      carbonwatch replay tests/fixtures/h200-shared-gpu --idle-policy proportional --json
    """
    if power_interval_s <= 0 or counter_interval_s <= 0:
        raise click.BadParameter("intervals must be > 0")
    report = replay_trace(
        trace_dir,
        idle_policy=idle_policy,
        power_interval_s=power_interval_s,
        counter_interval_s=counter_interval_s,
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
    for p in report.processes:
        click.echo(f"  pid {p['pid']:<6} {p['role']:<7} {p['energy_j']:10.1f} J")
    click.echo(
        f"  unattributed      {report.unattributed_energy_j:10.1f} J  "
        "(active energy while no process showed GPU activity)"
    )
