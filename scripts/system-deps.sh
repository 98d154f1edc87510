#!/usr/bin/env bash
# System packages some tests need (a headless browser, a Prometheus server, setpriv,
# systemd-analyze). Installed only when missing; needs root (as in CI). Without root, the tests
# that need them say so and are skipped.
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# setpriv: the security fuzz runs the daemon it feeds hostile commands as nobody when run as root.
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# systemd-analyze: checks the shipped unit with systemd's own parser and exposure rating.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: not root; missing ${need[*]} (tests needing them will be skipped)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "system-deps: could not install ${need[*]}" >&2
exit 0
