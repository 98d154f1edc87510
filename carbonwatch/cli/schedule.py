"""``carbonwatch submit``, ``queue`` and ``cancel``: the carbon-aware scheduler, through the
running daemon (which plans, persists and launches the jobs). Stdlib HTTP only."""

from __future__ import annotations

import http.client
import os
import time
from typing import Any

import click

from carbonwatch.cli.common import echo_json, handle_errors, load, settings_options
from carbonwatch.config import Settings
from carbonwatch.errors import CarbonwatchError
from carbonwatch.scheduler.job import Status
from carbonwatch.times import check_ahead, parse_duration_s, parse_user_time_s

PAUSE_CONTRACT = """\
Interruptible jobs (--interruptible) run only in the lowest-carbon slots before the deadline.
At the end of a slot the daemon sends SIGSTOP to every process group of the job (the wrapper's
and the command's) and SIGCONT at the start of the next. A paused job keeps its memory, GPU
memory and connections, and its wall clock runs on: it must tolerate being frozen for hours (no
collective-op watchdogs, leases or heartbeats that time out across a pause). If it cannot,
leave out --interruptible and use checkpoints instead: submit one contiguous job per stretch of
work, each resuming from the last checkpoint. A job still running after its last slot is left
to finish."""


class DaemonUnavailable(CarbonwatchError):
    pass


def _client(settings: Settings) -> Any:
    from carbonwatch.daemon.attach import DaemonClient, daemon_url

    url = daemon_url(settings)
    if url is None:
        raise DaemonUnavailable("daemon_url is 'none': submit, queue and cancel need the daemon")
    # Launching and cancelling over TCP need the admin token; on the unix socket none is needed.
    return DaemonClient(url, settings.admin_token or settings.token, timeout_s=60.0)


def _call(settings: Settings, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    client = _client(settings)
    try:
        status, payload = client.request(method, path, body)
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise DaemonUnavailable(
            f"no carbonwatch daemon answers at {client.url} ({reason}); start one with "
            "`carbonwatch daemon` (or set daemon_url / CARBONWATCH_DAEMON_URL)"
        ) from None
    except ValueError:
        raise DaemonUnavailable(f"{client.url} did not answer like a carbonwatch daemon") from None
    if status == 404 and not path.startswith("/v1/deferred/"):
        raise DaemonUnavailable(
            f"the daemon at {client.url} has no scheduler (an older carbonwatch?)"
        )
    return status, payload


def _fail(status: int, payload: Any) -> None:
    message = payload.get("error") if isinstance(payload, dict) else None
    raise CarbonwatchError(message or f"the daemon answered HTTP {status}")


def _fmt_g(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_pct(value: float | None, band: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}%" if band is None else f"{value:.1f}±{band:.1f}%"


def _windows(view: dict[str, Any]) -> str:
    """``2026-12-01T02:00:00Z -> 04:00:00Z``; the end's date only when it differs."""
    return ", ".join(
        f"{w['start']} -> {w['end'][11:] if w['end'][:10] == w['start'][:10] else w['end']}"
        for w in view["plan"]
    )


@click.command(
    "submit",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog=PAUSE_CONTRACT,
)
@click.option(
    "--deadline",
    required=True,
    help="Finish by: ISO-8601 with a zone (2026-12-01T06:00:00Z) or +12h from now.",
)
@click.option(
    "--duration",
    required=True,
    help="How long the job runs (45m, 2h, 1h30m), or 'auto': the mean of the "
    "finished runs with the same --name.",
)
@click.option(
    "--interruptible",
    is_flag=True,
    help="Run in the lowest-carbon slots, paused (SIGSTOP) between them: see below.",
)
@click.option("--zone", default=None, help="Grid zone (default: the daemon's).")
@click.option(
    "--provider",
    default=None,
    help="static | electricitymaps | watttime | ukgrid | carbonaware | csv "
    "(default: the daemon's).",
)
@click.option("--provider-url", default=None, help="Provider base URL, or the CSV file/URL: "
              "only the daemon's own or one its provider_urls setting allows.")
@click.option("--name", default=None, help="Job name (default: the command's name).")
@click.option(
    "--kind",
    type=click.Choice(["training", "inference", "other"]),
    default="training",
    show_default=True,
)
@click.option(
    "--via",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: the daemon runs COMMAND at the planned start. slurm: COMMAND is sbatch's "
    "arguments; the daemon submits `sbatch --begin=START --deadline=DEADLINE ARGS` at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the queued job as JSON.")
@settings_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def submit_cmd(
    deadline: str,
    duration: str,
    interruptible: bool,
    zone: str | None,
    provider: str | None,
    provider_url: str | None,
    name: str | None,
    kind: str,
    via: str,
    as_json: bool,
    config_path: str | None,
    db: str | None,
    command: tuple[str, ...],
) -> None:
    """Defer COMMAND to the lowest-carbon time before its deadline.

    The running daemon plans the start on the zone's forecast, keeps the job across restarts,
    and launches it then as `carbonwatch run --name NAME -- COMMAND`, in this directory and with
    this environment, so it is measured like any other job. With no usable forecast it runs at
    the latest start that meets the deadline (or at once: setting no_forecast_policy).

    \b
    Examples:
      carbonwatch submit --deadline +12h --duration 2h --name nightly -- python train.py
      carbonwatch submit --deadline 2026-12-01T06:00:00Z --duration auto --name nightly \\
          --zone DE --provider electricitymaps --interruptible -- python train.py --resume
      carbonwatch submit --via slurm --deadline +24h --duration 4h -- -N2 --gres=gpu:8 train.sbatch

    With --via slurm the job waits in Slurm (held by --begin), is moved with `scontrol update`
    when a newer forecast changes the plan, cancelled with `scancel`, and measured on each node
    through the Slurm prolog/epilog (deploy/slurm/).
    """
    settings = load(config_path, db=db)
    now_s = time.time()
    body: dict[str, Any] = {
        "command": list(command),
        "deadline_s": check_ahead(parse_user_time_s(deadline, now_s), now_s, "--deadline"),
        "interruptible": interruptible,
        "kind": kind,
        "cwd": os.getcwd(),
        # The job's environment, less carbonwatch's tokens: none is ever put into a job's.
        "env": {k: v for k, v in os.environ.items()
                if k not in ("CARBONWATCH_TOKEN", "CARBONWATCH_ADMIN_TOKEN")},
    }
    if duration.strip().lower() == "auto":
        body["duration"] = "auto"
    else:
        body["duration_s"] = parse_duration_s(duration)
        if body["deadline_s"] < now_s + body["duration_s"]:
            raise CarbonwatchError(
                f"the deadline {deadline!r} is before now + {duration}: the job could not "
                "finish in time"
            )
    if via == "slurm":
        body["via"] = "slurm"
        if name is None:
            name = _slurm_name(command)
    for key, value in (("name", name), ("zone", zone), ("provider", provider)):
        if value is not None:
            body[key] = value
    if provider_url is not None:
        is_url = provider_url.startswith(("http://", "https://"))
        # The daemon reads a CSV path from its own working directory: send it absolute.
        body["provider_url"] = provider_url if is_url else os.path.abspath(provider_url)
    status, view = _call(settings, "POST", "/v1/deferred", body)
    if status != 201:
        _fail(status, view)
    for warning in view.get("warnings") or []:
        click.echo(f"carbonwatch: warning: {warning}", err=True)
    if as_json:
        echo_json(view)
        return
    click.echo(f"queued {view['id']} ({view['name']}): {_windows(view)}")
    if view.get("slurm_job_id"):
        click.echo(f"  Slurm job {view['slurm_job_id']}, held until {view['plan'][0]['start']}")
    if view["plan_basis"] == "no_forecast":
        click.echo(
            "  no usable forecast: planned by the daemon's no_forecast_policy "
            "(latest safe start, or now)"
        )
        if view.get("message"):
            click.echo(f"  {view['message']}")
    elif view.get("message") and "running at release" in view["message"]:
        click.echo(f"  {view['message']}")
    if view["expected_saving_pct"] is not None:
        band = view.get("saving_band_pct")
        click.echo(
            f"  mean intensity {view['plan_intensity_g_per_kwh']:.1f} gCO2e/kWh, "
            f"{_fmt_pct(view['expected_saving_pct'], band)} below starting now"
            + ("" if band is not None else " (forecast error unknown)")
        )
    if view["expected_co2e_g"] is not None:
        click.echo(
            f"  expected {view['expected_co2e_g']:.2f} gCO2e "
            f"(now: {_fmt_g(view['expected_baseline_co2e_g'])})"
        )


def _slurm_name(args: tuple[str, ...]) -> str:
    """The job's name from sbatch's arguments: --job-name/-J, else the script's name."""
    for i, arg in enumerate(args):
        if arg.startswith("--job-name="):
            return arg.split("=", 1)[1]
        if arg in ("-J", "--job-name") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("-J") and len(arg) > 2:
            return arg[2:]
    scripts = [a for a in args if not a.startswith("-")]
    return os.path.basename(scripts[-1]) if scripts else "sbatch"


@click.command("queue")
@click.option("--active", is_flag=True, help="Only queued, launching, running and paused jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
@handle_errors
def queue_cmd(active: bool, as_json: bool, config_path: str | None, db: str | None) -> None:
    """Deferred jobs: status, plan windows, expected gCO2e and saving, deadline.

    \b
    Examples:
      carbonwatch queue
      carbonwatch queue --active --json
    """
    settings = load(config_path, db=db)
    status, payload = _call(settings, "GET", "/v1/deferred" + ("?active=1" if active else ""))
    if status != 200:
        _fail(status, payload)
    views = payload["deferred"]
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo("no deferred jobs")
        return
    click.echo(
        f"{'ID':<12}  {'NAME':<16} {'STATUS':<9} {'EXP gCO2e':>9} {'SAVING':>12}  "
        f"{'DEADLINE':<20}  PLAN (UTC)"
    )
    for v in views:
        if v["status"] == Status.DONE:  # realised: measured, no band
            saving = _fmt_pct(v["realised_saving_pct"])
        else:
            saving = _fmt_pct(v["expected_saving_pct"], v.get("saving_band_pct"))
        slurm = ""
        if v.get("slurm_job_id"):
            slurm = f"  slurm {v['slurm_job_id']} {v['slurm_state'] or ''}".rstrip()
        click.echo(
            f"{v['id']:<12}  {v['name'][:16]:<16} {v['status']:<9} "
            f"{_fmt_g(v['expected_co2e_g']):>9} {saving:>12}  "
            f"{v['deadline']:<20}  {_windows(v)}{slurm}"
        )


@click.command("cancel")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the cancelled job as JSON.")
@settings_options
@handle_errors
def cancel_cmd(job_id: str, as_json: bool, config_path: str | None, db: str | None) -> None:
    """Cancel deferred job ID: a queued job is dropped; a running one is terminated (SIGTERM to
    its process groups, SIGKILL a few seconds later).

    \b
    Example:
      carbonwatch cancel 3f2a9c81d0e4
    """
    settings = load(config_path, db=db)
    from urllib.parse import quote

    status, view = _call(settings, "DELETE", f"/v1/deferred/{quote(job_id, safe='')}")
    if status != 200:
        _fail(status, view)
    if as_json:
        echo_json(view)
        return
    click.echo(f"{view['id']} ({view['name']}): {view['status']}")
