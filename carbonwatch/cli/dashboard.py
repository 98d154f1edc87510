"""``carbonwatch dashboard``: the Dash web dashboard over a store and/or a fleet's Prometheus,
read-only."""

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
@click.option("--prometheus", "prometheus_url", default=None, metavar="URL",
              help="Prometheus (or Thanos, Mimir...) scraping the fleet's daemons: adds the Fleet "
              "page. With it, a local store is read only when --db (or the db setting) names one.")
@settings_options
@handle_errors
def dashboard_cmd(
    host: str, port: int, refresh_s: float, prometheus_url: str | None, config_path: str | None,
    db: str | None,
) -> None:
    """Serve the web dashboard for a store: training against inference, models, jobs, grid and
    schedule, devices. It only reads the store, beside a running daemon. With --prometheus, a
    Fleet page shows every node through Prometheus: per node (stale ones marked), per model,
    training against inference.

    \b
    Examples:
      carbonwatch dashboard
      carbonwatch dashboard --db /var/lib/carbonwatch/carbonwatch.db --port 8051
      carbonwatch dashboard --prometheus http://prometheus:9090
    """
    settings = load(config_path, db=db)
    # With a fleet to show, the default store path is not assumed: only one named explicitly.
    db_path = settings.db_path if settings.db or not prometheus_url else None
    # Imported here: Dash and plotly cost a second to import, and only this command needs them.
    from carbonwatch.dashboard.app import create_app

    if not _is_loopback(host):
        click.echo(f"carbonwatch: warning: listening on {host}: the dashboard has no "
                   "authentication; anyone who can reach it can read the store.", err=True)
    app = create_app(db_path, refresh_s=refresh_s, currency=settings.currency,
                     prometheus_url=prometheus_url)
    # The dev server's per-request log lines would drown the terminal on every refresh, and
    # Dash's own handler already prints its banner once (no second copy via the root logger).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.logger.propagate = False
    where = [f"store {db_path}" if db_path else "no local store"]
    if prometheus_url:
        where.append(f"fleet page http://{host}:{port}/fleet from {prometheus_url}")
    click.echo(f"carbonwatch dashboard: http://{host}:{port}/  ({', '.join(where)}; "
               "read-only; Ctrl+C to stop)", err=True)
    app.run(host=host, port=port, debug=False)
