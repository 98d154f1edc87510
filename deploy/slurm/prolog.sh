#!/bin/bash
# Slurm Prolog: open a carbonwatch job on this node's daemon when a Slurm job starts here.
#
#   slurm.conf:  Prolog=/etc/carbonwatch/slurm/prolog.sh
#                Epilog=/etc/carbonwatch/slurm/epilog.sh
#
# The job is opened over the daemon's HTTP API (POST /v1/jobs) with the identity
# "slurm:<SLURM_JOB_ID>": the key `carbonwatch run` computes from SLURM_JOB_ID, so every task
# started as `srun carbonwatch run -- CMD` joins this one job (the daemon merges by identity)
# rather than recording its own, and the ranks on this node are counted once. The tag
# ended_by=epilog tells the ranks to leave the job open: epilog.sh ends it. The job belongs to the
# Slurm job's user (owner_uid, SLURM_JOB_UID): the prolog runs as root, an operator, and opens it
# on that user's behalf, so the user's ranks may merge into it.
# Never fails the Slurm job: a daemon that is down costs the record, not the job.
set -u
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

job=${SLURM_JOB_ID:-${SLURM_JOBID:-}}
[ -n "$job" ] || { log "prolog: no SLURM_JOB_ID"; exit 0; }

body=$(python3 -c '
import json, os
e = os.environ
job = e.get("SLURM_JOB_ID") or e["SLURM_JOBID"]
tags = {"ended_by": "epilog", "slurm_job_id": job}
for tag, name in (("user", "SLURM_JOB_USER"), ("partition", "SLURM_JOB_PARTITION"),
                  ("account", "SLURM_JOB_ACCOUNT")):
    if e.get(name):
        tags[tag] = e[name]
body = {"name": e.get("SLURM_JOB_NAME") or f"slurm-{job}",
        "kind": e["CARBONWATCH_SLURM_KIND"], "identity": f"slurm:{job}", "tags": tags}
if e.get("SLURM_JOB_UID", "").isdigit():
    body["owner_uid"] = int(e["SLURM_JOB_UID"])
print(json.dumps(body))
')
if ! answer=$(api POST /v1/jobs "$body"); then
  log "prolog: job $job: the daemon at $CARBONWATCH_URL did not open it"
  exit 0
fi
id=$(printf '%s' "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
mkdir -p "$CARBONWATCH_SLURM_STATE" && printf '%s\n' "$id" > "$CARBONWATCH_SLURM_STATE/$job"
exit 0
