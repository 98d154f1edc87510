#!/usr/bin/env bash
# The main job on the embedded default: train a small model on the CPU under `carbonwatch run`
# (SQLite store, static grid data, no GPU needed), then show the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export CARBONWATCH_CONFIG=${CARBONWATCH_CONFIG:-examples/carbonwatch.toml}
export CARBONWATCH_DB=${CARBONWATCH_DB:-$PWD/.demo/carbonwatch.db}
.venv/bin/carbonwatch devices
.venv/bin/carbonwatch run --name demo-mlp --kind training --model demo-mlp -- \
  .venv/bin/python examples/train_mlp.py --epochs "${EPOCHS:-30}"
.venv/bin/carbonwatch report
