"""Every command and every setting is documented where users look (the README), and every
command's help carries an example."""

import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from carbonwatch.cli import COMMANDS, main
from carbonwatch.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_is_in_the_readme_and_has_an_example(name):
    assert re.search(rf"carbonwatch {name}\b", README), f"README does not show `carbonwatch {name}`"
    out = CliRunner().invoke(main, [name, "--help"])
    assert out.exit_code == 0, out.output
    assert "Example" in out.output, f"`carbonwatch {name} --help` has no example"


@pytest.mark.parametrize(
    "name", [f.name for f in dataclasses.fields(Settings) if f.name != "extra"]
)
def test_every_setting_is_in_the_readme_table(name):
    assert f"`{name}`" in README, f"setting {name!r} is not documented in README.md"


def test_the_readme_quick_start_is_two_commands_that_exist():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^bash (scripts/\S+)", quick, flags=re.M)
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert all((ROOT / c).exists() for c in commands)
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_reliability_md_holds_every_security_table_as_the_script_writes_them():
    """docs/reliability.md's sections after the chaos results (the deployment and fuzz table,
    what the fuzz found, the bounds table of scripts/security_bounds.md, the seams, and
    docs/security.md) are exactly what scripts/reliability.py writes: none lost in a merge."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "reliability.py"
    spec = importlib.util.spec_from_file_location("reliability", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.render({"experiments": [], "machine": "-", "python": "-"}, "-", 0.0)
    doc = (root / "docs" / "reliability.md").read_text()
    start = "## Bugs these experiments found (fixed)"
    assert doc[doc.index(start):] == written[written.index(start):]
    for heading in ("## Security: deployment and fuzz", "## Security: bounds", "## Security\n"):
        assert doc.count(heading) == 1, heading
