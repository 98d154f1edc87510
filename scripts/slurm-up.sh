#!/usr/bin/env bash
# A single-node Slurm for the scheduler's tests (and for trying `carbonwatch submit --via slurm`
# on one machine): munge, slurmctld and slurmd on this host, cgroup-less, configured in DIR.
#
#   scripts/slurm-up.sh [DIR]     start (idempotent); prints "SLURM_CONF=DIR/slurm.conf"
#   scripts/slurm-up.sh --down [DIR]   stop the daemons this script started in DIR
#
# DIR (default /tmp/carbonwatch-slurm) holds slurm.conf, the daemons' state, logs and pid files,
# and prolog/epilog wrappers that run deploy/slurm/{prolog,epilog}.sh with
# CARBONWATCH_SLURM_ENV=DIR/slurm.env, so a test points the prolog at its own daemon by writing
# that file. Needs root (slurmd runs jobs as their users) and Debian's slurm-wlm and munge.
# Ports: CARBONWATCH_SLURMCTLD_PORT (default 6817), CARBONWATCH_SLURMD_PORT (default 6818).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
down=0
if [ "${1:-}" = "--down" ]; then down=1; shift; fi
dir=${1:-/tmp/carbonwatch-slurm}
mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
conf="$dir/slurm.conf"

stop() {
  local f
  # munged too, but only when this script started it (its pid is then kept in DIR/run).
  for f in "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid" "$dir/run/munged.pid"; do
    if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
      kill "$(cat "$f")" 2>/dev/null || true
      pid=$(cat "$f" 2>/dev/null) || continue
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
  done
}
if [ "$down" = 1 ]; then stop; exit 0; fi

for bin in slurmctld slurmd munged sbatch; do
  command -v "$bin" >/dev/null || { echo "slurm-up: $bin not installed (apt-get install slurm-wlm munge)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "slurm-up: needs root (slurmd starts jobs as their users)" >&2; exit 2; }

# munge: the key comes with the package; one munged per host serves every Slurm on it.
if ! munge -n </dev/null >/dev/null 2>&1; then
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged --force
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$dir/run/munged.pid" 2>/dev/null || true
fi

node=$(hostname -s)
# This host as slurmd sees it (CPUs, sockets, memory), so the node is not drained as invalid.
hw=$(slurmd -C 2>/dev/null | head -1 | sed 's/^NodeName=[^ ]* //')
for kind in prolog epilog; do
  cat >"$dir/$kind.sh" <<WRAP
#!/bin/bash
CARBONWATCH_SLURM_ENV="$dir/slurm.env" CARBONWATCH_SLURM_STATE="$dir/jobstate" \\
  exec "$here/deploy/slurm/$kind.sh"
WRAP
  chmod 0755 "$dir/$kind.sh"
done
[ -e "$dir/slurm.env" ] || : >"$dir/slurm.env"
cat >"$conf.new" <<CONF
# Written by scripts/slurm-up.sh: one node, no cgroups, no accounting database.
ClusterName=carbonwatch
SlurmctldHost=localhost
SlurmctldPort=${CARBONWATCH_SLURMCTLD_PORT:-6817}
SlurmdPort=${CARBONWATCH_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Jobs held by --begin are looked at every few seconds, so a window a few seconds ahead is met.
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=300
ReturnToService=2
Prolog=$dir/prolog.sh
Epilog=$dir/epilog.sh
NodeName=$node $hw State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
mv "$conf.new" "$conf"
export SLURM_CONF=$conf

if ! { [ -s "$dir/run/slurmctld.pid" ] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null; }; then
  slurmctld -f "$conf" -i
fi
if ! { [ -s "$dir/run/slurmd.pid" ] && kill -0 "$(cat "$dir/run/slurmd.pid")" 2>/dev/null; }; then
  slurmd -f "$conf"
fi
for _ in $(seq 100); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1)
  case "$state" in idle*|mix*|alloc*) echo "SLURM_CONF=$conf"; exit 0 ;; esac
  sleep 0.2
done
echo "slurm-up: the node did not become idle (state '${state:-none}'); see $dir/log/" >&2
tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 2>/dev/null || true
exit 1
