#!/usr/bin/env bash
# The whole test suite: set-up (venv, system packages the tests need), lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/system-deps.sh
.venv/bin/ruff check carbonwatch tests benchmarks examples
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
