"""``carbonwatch daemon``: the node sidecar (HTTP API, /metrics, continuous sampling)."""

from __future__ import annotations

import dataclasses
import sys

import click

from carbonwatch.cli.common import handle_errors, intensity_source, load, settings_options


@click.command("daemon")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1). "
              "Off loopback a token is required (CARBONWATCH_TOKEN).")
@click.option("--port", type=int, default=None, help="TCP port (default 8787; 0 picks a free one).")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), default=None,
              help="Listen on this Unix socket instead of TCP.")
@click.option("--backend", default=None, help="GPU backend: auto | nvml | none | replay:DIR.")
@click.option("--node", default=None, help="The node label on /metrics (default: the host name; "
              "CARBONWATCH_NODE, or node in the config file).")
@click.option("--replay-speed", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Trace seconds per real second, for replay:DIR.")
@click.option("--replay-gpus", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Serve the replayed trace as this many GPUs (benchmarks).")
@click.option("--replay-latency", type=click.Choice(["none", "h200"]), default=None,
              help="Make every replayed read take as long as on a real device (h200: energy "
              "counter 3.8 ms, power 1.2 us, process list 10 us); config key replay_latency.")
@click.option("--scrape", "scrape", multiple=True, metavar="NAME=URL",
              help="Read an inference server's Prometheus counters (vLLM, TGI, Triton) at URL "
              "(on this node) and split its process's energy over the tokens it reports; "
              "repeatable (setting scrape).")
@click.option("--scrape-interval", "scrape_interval_s", type=float, default=None,
              help="Seconds between scrapes, one window each (default 15).")
@settings_options
@handle_errors
def daemon_cmd(
    host: str | None,
    port: int | None,
    socket_path: str | None,
    backend: str | None,
    node: str | None,
    replay_speed: float,
    replay_gpus: int,
    replay_latency: str | None,
    scrape: tuple[str, ...],
    scrape_interval_s: float | None,
    config_path: str | None,
    db: str | None,
) -> None:
    """Measure this node continuously and serve the HTTP API (v1) and Prometheus /metrics.

    Jobs register with POST /v1/jobs (``carbonwatch run`` does it for you when a daemon runs);
    inference services report call spans with POST /v1/calls. The API is described at
    GET /v1/openapi.json. SIGTERM flushes everything measured so far and exits 0; a restart
    resumes running jobs and call batches acknowledged but not yet settled. A replay runs in the
    trace's own time from its first energy reading, and resumes where the store's last replay of
    the same trace stopped; at the trace's end sampling stops and the API keeps serving.

    \b
    Examples:
      carbonwatch daemon
      CARBONWATCH_TOKEN=$(openssl rand -hex 32) carbonwatch daemon --host 0.0.0.0 --node n1
      carbonwatch daemon --db /tmp/cw.db --backend replay:tests/fixtures/h200-shared-gpu \\
          --replay-speed 10
      carbonwatch daemon --scrape vllm=http://127.0.0.1:8000/metrics
    """
    # sqlite-utils imports pandas whenever it is installed, for DataFrame helpers the daemon never
    # calls: ~35 MB of a sidecar's resident memory. Without it sqlite-utils works the same.
    if "pandas" not in sys.modules:
        sys.modules["pandas"] = None  # type: ignore[assignment]
    from carbonwatch.daemon.build import run_daemon  # aiohttp only when the daemon runs

    settings = load(config_path, db=db, host=host, port=port, socket=socket_path, backend=backend,
                    node=node, scrape=",".join(scrape) if scrape else None,
                    scrape_interval_s=scrape_interval_s)
    if replay_latency is not None:
        settings = dataclasses.replace(
            settings, extra={**settings.extra, "replay_latency": replay_latency})

    def ready(url: str) -> None:
        click.echo(f"carbonwatch: daemon listening on {url} (store {settings.db_path})", err=True)

    run_daemon(
        settings,
        intensity=intensity_source(settings),
        replay_speed=replay_speed,
        replay_gpus=replay_gpus,
        on_ready=ready,
        on_note=lambda note: click.echo(f"carbonwatch: {note}", err=True),
    )
