"""``carbonwatch dashboard``: the Dash web dashboard over a store, read-only."""

from __future__ import annotations

import ipaddress
import logging

import click

from carbonwatch.cli.common import handle_errors, load, settings_options


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes the store's contents.")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(0, 65535))
@click.option("--refresh", "refresh_s", default=30.0, show_default=True,
              type=click.FloatRange(min=1.0), help="Seconds between automatic refreshes.")
@settings_options
@handle_errors
def dashboard_cmd(
    host: str, port: int, refresh_s: float, config_path: str | None, db: str | None
) -> None:
    """Serve the web dashboard for a store: training against inference, models, jobs, grid and
    schedule, devices. It only reads the store, beside a running daemon.

    \b
    Examples:
      carbonwatch dashboard
      carbonwatch dashboard --db /var/lib/carbonwatch/carbonwatch.db --port 8051
    """
    settings = load(config_path, db=db)
    # Imported here: Dash and plotly cost a second to import, and only this command needs them.
    from carbonwatch.dashboard.app import create_app

    if not _is_loopback(host):
        click.echo(f"carbonwatch: warning: listening on {host}: the dashboard has no "
                   "authentication; anyone who can reach it can read the store.", err=True)
    app = create_app(settings.db_path, refresh_s=refresh_s, currency=settings.currency)
    # The dev server's per-request log lines would drown the terminal on every refresh, and
    # Dash's own handler already prints its banner once (no second copy via the root logger).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.logger.propagate = False
    click.echo(f"carbonwatch dashboard: http://{host}:{port}/  (store {settings.db_path}, "
               "read-only; Ctrl+C to stop)", err=True)
    app.run(host=host, port=port, debug=False)
