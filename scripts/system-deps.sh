#!/usr/bin/env bash
# System packages some tests need (a headless browser, a Prometheus server, setpriv,
# systemd-analyze, a single-node Slurm). Installed only when missing; needs root (as in CI).
# Without root, the tests that need them say so and are skipped. Slurm is then started
# (scripts/slurm-up.sh) for the Slurm deferral tests.
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# setpriv: the security fuzz runs the daemon it feeds hostile commands as nobody when run as root.
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# systemd-analyze: checks the shipped unit with systemd's own parser and exposure rating.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# slurm-wlm and munge: `carbonwatch submit --via slurm` is tested against a real Slurm.
command -v slurmctld >/dev/null 2>&1 || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "system-deps: not root; missing ${need[*]} (tests needing them will be skipped)" >&2
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null \
    && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "system-deps: could not install ${need[*]}" >&2
fi
if [ "$(id -u)" = 0 ] && command -v slurmctld >/dev/null 2>&1; then
  bash "$(dirname "$0")/slurm-up.sh" >/dev/null \
    || echo "system-deps: Slurm did not start (its tests will be skipped)" >&2
fi
exit 0
