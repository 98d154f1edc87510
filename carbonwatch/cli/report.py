"""``carbonwatch report``: jobs and totals from the store."""

from __future__ import annotations

import csv
import io
import math
import time

import click

from carbonwatch.cli.common import echo_json, handle_errors, load, settings_options
from carbonwatch.config import Settings
from carbonwatch.errors import InputError
from carbonwatch.model import J_PER_KWH
from carbonwatch.store import Store, open_store
from carbonwatch.times import iso_utc_or_none, parse_duration_s, parse_user_time_s

COLUMNS = (
    "id",
    "name",
    "kind",
    "model",
    "status",
    "started",
    "duration_s",
    "energy_j",
    "co2e_g",
    "cost",
    "currency",
    "exit_code",
)


def _since_s(text: str) -> float:
    """ISO-8601, ``now``, or a look-back such as ``-24h``."""
    now_s = time.time()
    if text.strip().startswith("-"):
        return now_s - parse_duration_s(text.strip()[1:])
    return parse_user_time_s(text, now_s)


def job_view(row: dict) -> dict:
    ended = row.get("ended_s")
    return {
        "id": row["id"],
        "name": row["name"],
        "kind": row["kind"],
        "model": row.get("model"),
        "status": row["status"],
        "started": iso_utc_or_none(row["started_s"]),
        "ended": iso_utc_or_none(ended),
        "duration_s": (ended - row["started_s"]) if ended is not None else None,
        "energy_j": row["energy_j"],
        "energy_j_by_device": row.get("energy_by_device") or {},
        "co2e_g": row["co2e_g"],
        "cost": row.get("cost"),
        "currency": row.get("currency"),
        "exit_code": row.get("exit_code"),
        "command": row.get("command"),
        "provenance": row.get("provenance") or {},
    }


def _statement(
    settings: Settings, model: str, statement_format: str, functional_unit: str, as_json: bool
) -> None:
    from carbonwatch.statement import model_statement, render_markdown

    with open_store(settings.db_path, read_only=True) as store:
        statement = model_statement(store, model, settings)
    if statement_format == "sci":
        from carbonwatch.exports import sci

        terms = sci.sci(statement, functional_unit)
        if as_json:
            echo_json(terms)
        else:
            click.echo(sci.render_markdown(terms))
    elif statement_format == "spdx":
        from carbonwatch.exports import spdx

        click.echo(spdx.render(statement))
    elif statement_format == "cyclonedx":
        from carbonwatch.exports import cyclonedx

        click.echo(cyclonedx.render(statement))
    elif statement_format == "eu-ai-act":
        from carbonwatch.exports import euaiact

        click.echo(euaiact.render(statement))
    elif statement_format == "json" or as_json:
        echo_json(statement)
    else:
        click.echo(render_markdown(statement))


def _footprints(store: Store, settings: Settings, job_ids: list[str]) -> dict[str, dict]:
    """Each job's embodied carbon and marginal figure beside its co2e_g (null: unknown)."""
    from carbonwatch.embodied import Amortisation, job_embodied
    from carbonwatch.grid.signals import job_marginal

    emb = job_embodied(store.conn, Amortisation.from_settings(settings), job_ids)
    marg = job_marginal(store.conn, settings, job_ids)
    out = {}
    for j in job_ids:
        e, m = emb.get(j), marg.get(j)
        out[j] = {
            "embodied_co2e_g": e["embodied_co2e_g"] if e else None,
            "co2e_g_marginal": m["co2e_g_marginal"] if m else None,
            "footprint_provenance": {
                "embodied": ({"devices": e["by_device"],
                              "devices_without_figure": e["devices_without_figure"]}
                             if e else "no device time recorded for the job"),
                "marginal": ({"coverage": m["marginal_coverage"], "zones": m["marginal_zones"]}
                             if m else "no energy recorded for the job"),
            },
        }
    return out


@click.command("report")
@click.option("--json", "fmt", flag_value="json", help="JSON output.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV output.")
@click.option("--since", default=None, help="Only jobs started at or after T (ISO-8601 or -24h).")
@click.option("--job", "job_id", default=None, help="Only this job id.")
@click.option("--model", default=None, help="A per-model energy and emissions statement.")
@click.option(
    "--format",
    "statement_format",
    type=click.Choice(["md", "json", "sci", "spdx", "cyclonedx", "eu-ai-act"]),
    default="md",
    help="Format of the --model statement: md, json, sci (ISO/IEC 21031), spdx (SPDX 3.0 AI "
    "package), cyclonedx (CycloneDX 1.6 model card), eu-ai-act (Annex XI section).",
)
@click.option(
    "--functional-unit",
    type=click.Choice(["calls", "1k-output-tokens", "training-run"]),
    default="calls",
    help="R of --format sci: per call, per 1,000 output tokens, or per training run.",
)
@settings_options
@handle_errors
def report_cmd(
    fmt: str | None,
    since: str | None,
    job_id: str | None,
    model: str | None,
    statement_format: str,
    functional_unit: str,
    config_path: str | None,
    db: str | None,
) -> None:
    """Jobs recorded in the store, with energy, gCO2e and cost, and the totals.

    \b
    Examples:
      carbonwatch report
      carbonwatch report --json --since -24h
      carbonwatch report --csv > jobs.csv
      carbonwatch report --model resnet50 --format md > STATEMENT.md
      carbonwatch report --model llama --format sci --functional-unit 1k-output-tokens
      carbonwatch report --model llama --format cyclonedx > bom.cdx.json
    """
    settings = load(config_path, db=db)
    if model is not None:
        _statement(settings, model, statement_format, functional_unit, fmt == "json")
        return
    since_s = _since_s(since) if since else None
    with open_store(settings.db_path, read_only=True) as store:
        rows = store.jobs(since_s=since_s, job_id=job_id)
        extra = _footprints(store, settings, [r["id"] for r in rows]) if fmt == "json" else {}
    if job_id and not rows:
        raise InputError(f"no job with id {job_id!r} in {settings.db_path}")
    jobs = [job_view(r) | extra.get(r["id"], {}) for r in rows]
    costs = [j["cost"] for j in jobs]
    totals = {
        "jobs": len(jobs),
        "energy_j": math.fsum(j["energy_j"] for j in jobs),
        "co2e_g": math.fsum(j["co2e_g"] for j in jobs),
        "cost": math.fsum(c for c in costs if c is not None)
        if any(c is not None for c in costs)
        else None,
        "jobs_with_unknown_cost": sum(1 for c in costs if c is None),
    }
    if fmt == "json":
        echo_json({"jobs": jobs, "totals": totals})
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(jobs)
        click.echo(buf.getvalue(), nl=False)
        return
    if not jobs:
        click.echo("No jobs recorded yet. Wrap one: carbonwatch run -- python train.py")
        return
    click.echo(
        f"{'id':<12} {'name':<20} {'kind':<9} {'status':<11} {'duration':>9} "
        f"{'energy J':>12} {'gCO2e':>10} {'cost':>10}"
    )
    for j in jobs:
        dur = f"{j['duration_s']:.1f}s" if j["duration_s"] is not None else "running"
        cost = f"{j['cost']:.4g}" if j["cost"] is not None else "unknown"
        click.echo(
            f"{j['id']:<12} {j['name'][:20]:<20} {j['kind']:<9} {j['status']:<11} "
            f"{dur:>9} {j['energy_j']:>12.1f} {j['co2e_g']:>10.4g} {cost:>10}"
        )
    t = totals
    cost = f"{t['cost']:.4g}" if t["cost"] is not None else "unknown"
    click.echo(
        f"total: {t['jobs']} jobs, {t['energy_j']:.1f} J ({t['energy_j'] / J_PER_KWH:.6f} kWh), "
        f"{t['co2e_g']:.4g} gCO2e, cost {cost}"
    )
