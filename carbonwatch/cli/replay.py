"""``carbonwatch replay TRACE_DIR``."""

from __future__ import annotations

from pathlib import Path

import click

from carbonwatch.cli.common import echo_json, handle_errors, load, settings_options
from carbonwatch.collectors.gpushare import gpu_options
from carbonwatch.config import IDLE_POLICIES
from carbonwatch.store import open_store
from carbonwatch.store.gpu_idle import load_gpu_idle
from carbonwatch.trace_attribution import replay_trace
from carbonwatch.trace_calls import CallsReport, replay_calls


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
@click.option(
    "--calls",
    "with_calls",
    is_flag=True,
    help="Also split each serving process's energy over the calls in TRACE_DIR/calls.csv.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@settings_options
@handle_errors
def replay_cmd(
    trace_dir: str,
    idle_policy: str,
    power_interval_s: float,
    counter_interval_s: float,
    with_calls: bool,
    as_json: bool,
    config_path: str | None,
    db: str | None,
) -> None:
    """Run the real collectors and attribution over a recorded trace and print the device total,
    the idle energy and each process's attributed energy.

    The GPU idle baseline is ``gpu_idle_power_w`` when set, else what the store learned earlier
    for the trace's GPU UUID, else learned from the trace's own process-free intervals. --json
    also says how each interval's active energy was split (solo, power-fit, sm-share, even).

    --calls reads TRACE_DIR/calls.csv (start_s,end_s and optionally pid, model, weight,
    tokens_in, tokens_out, batch; calls without pid go to the trace's inference process) and
    prints each call's energy, apportioned from its process's energy by a fit of how that
    process's power follows its calls' work (power-fit), or by overlap time where the fit is not
    trusted; --json adds "calls" (file order), per-model totals with J/token where tokens are
    given, and per-process calls + between-call energy.

    \b
    Example:
      carbonwatch replay tests/fixtures/h200-shared-gpu --idle-policy proportional --json
      carbonwatch replay tests/fixtures/h200-shared-gpu --calls --json
    """
    if power_interval_s <= 0 or counter_interval_s <= 0:
        raise click.BadParameter("intervals must be > 0")
    settings = load(config_path, db=db)
    options = gpu_options(settings, _stored_idle(settings.db_path))
    calls = None
    if with_calls:
        calls = replay_calls(trace_dir, idle_policy=idle_policy, power_interval_s=power_interval_s,
                             counter_interval_s=counter_interval_s, gpu_options=options)
        report = calls.replay
    else:
        report = replay_trace(
            trace_dir,
            idle_policy=idle_policy,
            power_interval_s=power_interval_s,
            counter_interval_s=counter_interval_s,
            gpu_options=options,
        )
    if as_json:
        echo_json(calls.as_json() if calls is not None else report.as_json())
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
    if calls is not None:
        _print_calls(calls)


def _print_calls(report: CallsReport) -> None:
    a = report.as_json()["apportionment"]
    click.echo(f"calls: {a['fitted_calls']} apportioned by power fit, {a['overlap_calls']} by "
               f"overlap time (readings aligned {a['power_lag_s']:g} s back)")
    for note in a["notes"]:
        click.echo(f"  note: {note}")
    for s in report.services:
        click.echo(f"  pid {s['pid']:<6} {s['role']:<7} {s['energy_j']:10.1f} J = calls "
                   f"{s['calls_energy_j']:.1f} J + between calls {s['between_calls_j']:.1f} J "
                   f"({s['calls']} calls, {s['zero_energy_calls']} with 0 J)")
    for model, m in sorted(report.models.items()):
        per_token = ""
        if m["energy_j_per_output_token"] is not None:
            per_token = f", {m['energy_j_per_output_token']:.4g} J/output token"
        click.echo(f"  model {model}: {m['calls']} calls, {m['energy_j']:.1f} J, "
                   f"{m['energy_j'] / m['calls']:.4g} J/call{per_token}")
    click.echo(f"  {'start_s':>18} {'duration_s':>10} {'model':<12} {'energy_j':>10}  apportioned")
    for c in report.calls:
        click.echo(f"  {c['start_s']:18.6f} {c['end_s'] - c['start_s']:10.6f} "
                   f"{c['model']:<12} {c['energy_j']:10.4f}  {c['provenance']}")


def _stored_idle(db_path: Path) -> dict[str, float]:
    """Idle baselines learned earlier, read-only; none when there is no store yet."""
    if not db_path.exists():
        return {}
    store = open_store(db_path, read_only=True)
    try:
        return load_gpu_idle(store.conn)
    finally:
        store.close()
