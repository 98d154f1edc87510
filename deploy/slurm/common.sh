# Shared by prolog.sh and epilog.sh (sourced, not run). Settings, from the environment or from
# /etc/carbonwatch/slurm.env (CARBONWATCH_SLURM_ENV names another file):
#   CARBONWATCH_URL          the node's daemon (default http://127.0.0.1:8787)
#   CARBONWATCH_TOKEN_FILE   a file holding its API token (default /etc/carbonwatch/token)
#   CARBONWATCH_SLURM_KIND   the jobs' kind: training | inference | other (default training)
#   CARBONWATCH_SLURM_STATE  where the prolog leaves each job's id for the epilog
#                            (default /run/carbonwatch/slurm)
SLURM_ENV_FILE=${CARBONWATCH_SLURM_ENV:-/etc/carbonwatch/slurm.env}
# shellcheck disable=SC1090
[ -r "$SLURM_ENV_FILE" ] && . "$SLURM_ENV_FILE"
CARBONWATCH_URL=${CARBONWATCH_URL:-http://127.0.0.1:8787}
CARBONWATCH_TOKEN_FILE=${CARBONWATCH_TOKEN_FILE:-/etc/carbonwatch/token}
CARBONWATCH_SLURM_KIND=${CARBONWATCH_SLURM_KIND:-training}
CARBONWATCH_SLURM_STATE=${CARBONWATCH_SLURM_STATE:-/run/carbonwatch/slurm}
export CARBONWATCH_SLURM_KIND

log() {
  logger -t carbonwatch-slurm -- "$*" 2>/dev/null || echo "carbonwatch-slurm: $*" >&2
}

# api METHOD PATH [JSON]: the daemon's answer on stdout; non-zero on a transport error or an HTTP
# status >= 400. The token goes to curl on stdin (-K -), never on a command line others can read.
api() {
  local method=$1 path=$2 body=${3:-}
  {
    if [ -r "$CARBONWATCH_TOKEN_FILE" ]; then
      printf 'header = "Authorization: Bearer %s"\n' "$(tr -d '\n' < "$CARBONWATCH_TOKEN_FILE")"
    fi
    printf 'header = "Content-Type: application/json"\n'
  } | curl -sS --fail --max-time 5 -K - -X "$method" ${body:+--data "$body"} \
      "$CARBONWATCH_URL$path"
}
