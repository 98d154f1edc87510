#!/bin/bash
# Slurm Epilog: end the carbonwatch job prolog.sh opened for this Slurm job on this node
# (POST /v1/jobs/{id}/end). The id comes from the prolog's state file, else from the daemon's
# running jobs with identity "slurm:<SLURM_JOB_ID>". The exit code is the job's where Slurm gives
# it (SLURM_JOB_EXIT_CODE, a wait status). Never fails the Slurm job.
set -u
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

job=${SLURM_JOB_ID:-${SLURM_JOBID:-}}
[ -n "$job" ] || { log "epilog: no SLURM_JOB_ID"; exit 0; }
state="$CARBONWATCH_SLURM_STATE/$job"

id=$(cat "$state" 2>/dev/null)
if [ -z "$id" ]; then
  id=$(api GET "/v1/jobs?status=running&limit=1000" | SLURM_IDENTITY="slurm:$job" python3 -c '
import json, os, sys
ids = [j["id"] for j in json.load(sys.stdin)["jobs"] if j["identity"] == os.environ["SLURM_IDENTITY"]]
print(ids[0] if ids else "")
' 2>/dev/null)
fi
if [ -z "$id" ]; then
  log "epilog: job $job: no carbonwatch job to end"
  exit 0
fi

body=$(python3 -c '
import json, os
raw = os.environ.get("SLURM_JOB_EXIT_CODE", "")
if not raw.isdigit():
    print("{}")
else:
    status = int(raw)  # a wait status: exit code in the high byte, else the signal
    print(json.dumps({"exit_code": status >> 8 if status & 0x7F == 0 else 128 + (status & 0x7F)}))
')
if ! api POST "/v1/jobs/$id/end" "$body" > /dev/null; then
  log "epilog: job $job: the daemon at $CARBONWATCH_URL did not end carbonwatch job $id"
fi
rm -f "$state"
exit 0
