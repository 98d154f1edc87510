"""The chaos suite's command-line options, registered by ``tests/conftest.py``: pytest reads
options only from the conftest files it loads before parsing the command line, and when it runs
without arguments (``bash scripts/test.sh``) those are ``tests/conftest.py``, not this
package's."""

from __future__ import annotations

import pytest


def add_chaos_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "chaos experiments (tests/chaos)")
    group.addoption("--slow", action="store_true", default=False,
                    help="also run the long variants (marked slow), e.g. 1,000 clients for 60 s")
    group.addoption("--chaos-report", default=None, metavar="PATH",
                    help="write each chaos experiment's hypothesis, observations, figures and "
                         "outcome to PATH as JSON")
