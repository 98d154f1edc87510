"""``carbonwatch dashboard``: the Dash web dashboard over a store and/or a fleet's Prometheus,
read-only."""

from __future__ import annotations

import logging

import click

from carbonwatch.cli.common import handle_errors, load, settings_options
from carbonwatch.config import Settings, is_loopback
from carbonwatch.errors import ConfigError


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback requires a login (a token).")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(0, 65535))
@click.option("--refresh", "refresh_s", default=30.0, show_default=True,
              type=click.FloatRange(min=1.0), help="Seconds between automatic refreshes.")
@click.option("--prometheus", "prometheus_url", default=None, metavar="URL",
              help="Prometheus (or Thanos, Mimir...) scraping the fleet's daemons: adds the Fleet "
              "page. With it, a local store is read only when --db (or the db setting) names one.")
@click.option("--require-auth", is_flag=True, default=False,
              help="Ask for the login on loopback too (off loopback it is always asked): the "
              "token or admin_token setting, as a bearer token or basic auth's password.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Requests served at once (the WSGI server's worker threads).")
@settings_options
@handle_errors
def dashboard_cmd(
    host: str, port: int, refresh_s: float, prometheus_url: str | None, require_auth: bool,
    threads: int, config_path: str | None, db: str | None,
) -> None:
    """Serve the web dashboard for a store: training against inference, models, jobs, grid and
    schedule, devices. It only reads the store, beside a running daemon. With --prometheus, a
    Fleet page shows every node through Prometheus: per node (stale ones marked), per model,
    training against inference.

    It is served by waitress, a production WSGI server. Off loopback (or with --require-auth)
    every request needs a login: the read token (CARBONWATCH_TOKEN) or the admin token
    (CARBONWATCH_ADMIN_TOKEN), as 'Authorization: Bearer <token>' or as the password of HTTP
    basic auth (any user name); without a token it refuses to start. Put TLS in front of it
    (docs/deploy.md): basic auth over plain HTTP shows the token to the network.

    \b
    Examples:
      carbonwatch dashboard
      carbonwatch dashboard --db /var/lib/carbonwatch/carbonwatch.db --port 8051
      carbonwatch dashboard --prometheus http://prometheus:9090
      CARBONWATCH_TOKEN=$(cat /etc/carbonwatch/token) carbonwatch dashboard --host 0.0.0.0
    """
    settings = load(config_path, db=db)
    # With a fleet to show, the default store path is not assumed: only one named explicitly.
    db_path = settings.db_path if settings.db or not prometheus_url else None
    login = require_auth or not is_loopback(host)
    tokens = _login_tokens(settings, host) if login else []
    # Imported here: Dash and plotly cost a second to import, and only this command needs them.
    from waitress import create_server

    from carbonwatch.dashboard.app import create_app
    from carbonwatch.dashboard.auth import RequireLogin

    access = (f"This dashboard (on {host}) asks for a login: any user name, and the read token "
              "(CARBONWATCH_TOKEN) or the admin token (CARBONWATCH_ADMIN_TOKEN) as the password; "
              "scripts send 'Authorization: Bearer <token>'. Serve it behind TLS."
              if login else
              f"This dashboard listens on {host} (loopback) without a login: only this machine "
              "reaches it. Off loopback (--host) it requires CARBONWATCH_TOKEN and asks for a "
              "login.")
    app = create_app(db_path, refresh_s=refresh_s, currency=settings.currency,
                     prometheus_url=prometheus_url, access=access, settings=settings)
    wsgi = RequireLogin(app.server, tokens) if login else app.server
    # waitress logs a line per queue backlog and per bad request; the default handler would
    # print them twice with the root logger's: keep one.
    logging.getLogger("waitress").propagate = False
    server = create_server(wsgi, host=host, port=port, threads=threads, ident="carbonwatch")
    bound = server.effective_port  # the real port when --port 0
    where = [f"store {db_path}" if db_path else "no local store"]
    if prometheus_url:
        where.append(f"fleet page http://{host}:{bound}/fleet from {prometheus_url}")
    where.append("login required" if login else "no login (loopback)")
    click.echo(f"carbonwatch dashboard: http://{host}:{bound}/  ({', '.join(where)}; "
               "read-only; Ctrl+C to stop)", err=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _login_tokens(settings: Settings, host: str) -> list[str]:
    """The tokens the login accepts; refuses to start without one, or with a weak one."""
    from carbonwatch.dashboard.auth import token_problem

    given = {"token": settings.token, "admin_token": settings.admin_token}
    tokens = {name: value for name, value in given.items() if value}
    if not tokens:
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without a login: set CARBONWATCH_TOKEN "
            "(or CARBONWATCH_ADMIN_TOKEN, or token in the config file), or listen on 127.0.0.1")
    for name, value in tokens.items():
        problem = token_problem(name, value)
        if problem:
            raise ConfigError(f"refusing to serve the dashboard on {host}: {problem}")
    return list(tokens.values())
