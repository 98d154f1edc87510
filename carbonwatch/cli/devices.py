"""``carbonwatch devices``: what was detected and how each device is measured."""

from __future__ import annotations

import dataclasses

import click

from carbonwatch.cli.common import echo_json, handle_errors, load, settings_options
from carbonwatch.collectors.detect import build_collectors


@click.command("devices")
@click.option("--backend", default=None, help="auto | nvml | none | replay:DIR")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@settings_options
@handle_errors
def devices_cmd(
    backend: str | None, as_json: bool, config_path: str | None, db: str | None
) -> None:
    """List the devices carbonwatch measures on this machine, and how (measured or estimated).

    \b
    Example:
      carbonwatch devices --json
    """
    settings = load(config_path, db=db, backend=backend)
    collectors, notes = build_collectors(settings.backend, rapl_root=settings.rapl_root)
    try:
        devices = [d for c in collectors for d in c.devices()]
    finally:
        for c in collectors:
            c.close()
    if as_json:
        echo_json(
            {
                "devices": [
                    {
                        k: (v.value if hasattr(v, "value") else v)
                        for k, v in dataclasses.asdict(d).items()
                    }
                    for d in devices
                ],
                "notes": notes,
            }
        )
        return
    for d in devices:
        click.echo(
            f"{d.device_id:<6} {d.device_class.value:<4} {d.name[:40]:<40} "
            f"{d.provenance.value:<9} {d.method:<22} {d.state.value}"
        )
        if d.detail:
            click.echo(f"       {d.detail}")
    for note in notes:
        click.echo(f"note: {note}")
