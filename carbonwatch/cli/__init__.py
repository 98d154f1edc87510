"""The ``carbonwatch`` command line: a thin layer over the Python API.

Commands are imported lazily, so ``carbonwatch run`` does not pay for Dash or aiohttp."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "run": "carbonwatch.cli.run:run_cmd",
    "daemon": "carbonwatch.cli.daemon:daemon_cmd",
    "report": "carbonwatch.cli.report:report_cmd",
    "devices": "carbonwatch.cli.devices:devices_cmd",
    "replay": "carbonwatch.cli.replay:replay_cmd",
    "record": "carbonwatch.cli.record:record_cmd",
    "intensity": "carbonwatch.cli.grid:intensity_cmd",
    "plan": "carbonwatch.cli.grid:plan_cmd",
    "estimate": "carbonwatch.cli.grid:estimate_cmd",
    "dashboard": "carbonwatch.cli.dashboard:dashboard_cmd",
    "submit": "carbonwatch.cli.schedule:submit_cmd",
    "queue": "carbonwatch.cli.schedule:queue_cmd",
    "cancel": "carbonwatch.cli.schedule:cancel_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="carbonwatch")
def main() -> None:
    """Carbon and cost accounting for ML jobs and inference calls.

    \b
    Examples:
      carbonwatch run -- python train.py
      carbonwatch report --json
      carbonwatch replay tests/fixtures/h200-shared-gpu
    """
