"""Option bundles and helpers shared by the commands (in the manner of sqlite-utils)."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

import click

from carbonwatch.config import Settings, load_settings
from carbonwatch.errors import CarbonwatchError
from carbonwatch.grid.types import IntensitySource


def settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config and --db, shared by every command that reads settings or the store."""
    fn = click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False),
        default=None,
        help="SQLite store (default: <user data dir>/carbonwatch/carbonwatch.db).",
    )(fn)
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        envvar="CARBONWATCH_CONFIG",
        help="TOML settings file.",
    )(fn)
    return fn


def load(config_path: str | None, **flags: Any) -> Settings:
    return load_settings(config_path, flags={k: v for k, v in flags.items() if v is not None})


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's errors into one clear line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.WARNING, format="carbonwatch: %(levelname)s: %(message)s")
        try:
            return fn(*args, **kwargs)
        except CarbonwatchError as exc:
            click.echo(f"carbonwatch: error: {exc}", err=True)
            sys.exit(2)
        except sqlite3.DatabaseError as exc:  # a damaged page met by a read, not only at open
            click.echo(f"carbonwatch: error: cannot read the store ({exc}); if the file is "
                       "damaged, restore a backup or move it aside", err=True)
            sys.exit(2)

    return wrapper


def intensity_source(settings: Settings) -> IntensitySource:
    """The intensity source accounting uses: the provider's series (cached and fetched) with the
    static average where it has no point; static alone by default (provider = "static")."""
    from carbonwatch.grid.feed import accounting_source

    source = accounting_source(settings)
    if settings.marginal_provider:  # keep the marginal signal beside it (grid/signals.py)
        from carbonwatch.grid.signals import WithMarginal, marginal_recorder

        return WithMarginal(source, marginal_recorder(settings))
    return source


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))
