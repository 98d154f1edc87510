#!/usr/bin/env bash
# What a session lent an NVIDIA GPU runs once (issue 16), all steps in at most ~8 minutes (each
# step has its own time limit; a normal run takes about 3):
#   1. benchmarks/nvml_probe.py on the idle GPU (--seconds 10)
#   2. the same under --load train, if PyTorch is importable (else said and skipped)
#   3. benchmarks/gpu_check.py --seconds 10 --gap 3
#   4. nvidia-smi -q -d POWER,PERFORMANCE, if nvidia-smi exists
# Everything goes under ${OUT:-/tmp/carbonwatch-device}; summary.txt holds one line per step with
# its exit code. A failed step does not stop the next (set -u, not -e). Exit 2 when the idle probe
# could not run (no GPU, no driver or no nvidia-ml-py: nothing was measured), 0 otherwise.
#   OUT=/tmp/cw bash scripts/device_check.sh      # PYTHON=... to choose the interpreter
set -u
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-/tmp/carbonwatch-device}"
mkdir -p "$OUT" || exit 2
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
started=$SECONDS

say() {
  echo "$1" | tee -a "$SUMMARY"
}

# step NAME LIMIT_S LOG COMMAND...: run it with a time limit, say its exit code and, for exit 2
# (the scripts' "cannot run here"), their one-line reason.
step() {
  local name=$1 limit=$2 log=$3 rc note=""
  shift 3
  timeout -k 10 "$limit" "$@" >"$OUT/$log" 2>&1
  rc=$?
  if [ "$rc" -eq 2 ]; then
    note=" (not run: $(grep -m1 -o 'cannot run here: .*' "$OUT/$log" | cut -d' ' -f4-))"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note=" (stopped at its ${limit} s limit)"
  fi
  say "$name: exit $rc$note; output in $OUT/$log"
  return "$rc"
}

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  uname -a
  "$PYTHON" --version
  "$PYTHON" -c "import importlib.metadata as m; print('nvidia-ml-py', m.version('nvidia-ml-py'))"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
} >"$OUT/env.txt" 2>&1
say "env: python $PYTHON; see $OUT/env.txt"

step "probe idle" 90 probe-idle.txt \
  "$PYTHON" benchmarks/nvml_probe.py --seconds 10 --out "$OUT/probe-idle.json"
idle_rc=$?

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  step "probe under train" 150 probe-train.txt \
    "$PYTHON" benchmarks/nvml_probe.py --seconds 10 --load train --out "$OUT/probe-train.json"
else
  say "probe under train: skipped (PyTorch is not importable by $PYTHON)"
fi

step "gpu_check" 210 gpu-check.txt "$PYTHON" benchmarks/gpu_check.py --seconds 10 --gap 3

if command -v nvidia-smi >/dev/null; then
  step "nvidia-smi" 20 nvidia-smi.txt nvidia-smi -q -d POWER,PERFORMANCE
else
  say "nvidia-smi: skipped (not found)"
fi

say "device_check: done in $((SECONDS - started)) s; results in $OUT"
if [ "$idle_rc" -eq 2 ]; then
  say "device_check: no GPU measured here (the idle probe could not run)"
  exit 2
fi
exit 0
