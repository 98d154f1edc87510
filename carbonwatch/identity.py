"""Which distributed job a process belongs to, from its environment and its cgroup.

The ranks of one job on one node must be one job, never counted twice. Each rank may be started
through its own ``carbonwatch run``, so the wrappers need a key they all compute alike:

- Slurm: ``slurm:<SLURM_JOB_ID>``. Every step and task of the job on this node shares it (the
  prolog/epilog scripts in ``deploy/slurm`` open and close the same key over the daemon's API);
  the step is kept as a detail.
- torchrun (and ``torch.distributed`` launchers): ``torchrun:<TORCHELASTIC_RUN_ID>``, or
  ``torchrun:<MASTER_ADDR>:<MASTER_PORT>`` when the run id is torchrun's default ``none``.
- Kubernetes: ``k8s-pod:<pod uid>``, read from ``/proc/<pid>/cgroup`` (cgroupfs and systemd
  drivers, cgroup v1 and v2). Inside a private cgroup namespace the path is just ``/``: then hand
  the pod UID in with the downward API as ``CARBONWATCH_POD_UID``.

``CARBONWATCH_IDENTITY`` overrides all of them (a launcher of your own), and ``none`` turns
identity off (every wrapper its own job). Otherwise the first match in the order above wins: a
torchrun job inside one Slurm job is the Slurm job, and the ranks of one torchrun job in several
pods on one node are one job.

Joining the ranks of one job into one, without a daemon, is ``carbonwatch.ranks``. With a daemon,
the daemon measures and merges by identity (``POST /v1/jobs`` answers 200 ``merged``); the last
rank to exit ends the job. This module only detects: it imports nothing of carbonwatch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SELF_CGROUP = "/proc/self/cgroup"

# A pod UID in a cgroup path: "pod<uid>" with dashes (cgroupfs driver) or underscores (systemd).
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)
# Slurm's cgroup plugins: /slurm/uid_1000/job_42/step_0 (v1), /.../slurmstepd.scope/job_42/... (v2)
_SLURM_JOB = re.compile(r"slurm[^/]*/(?:uid_\d+/)?job_(\d+)(?:/|$)")


@dataclass(frozen=True)
class Identity:
    """A job's identity on one node: ``key`` is what ``jobs.identity`` holds."""

    key: str
    source: str  # slurm | torchrun | kubernetes
    details: Mapping[str, str] = field(default_factory=dict)


def pod_uid_from_cgroup(text: str) -> str | None:
    """The Kubernetes pod UID in a ``/proc/<pid>/cgroup`` file's text, or None."""
    match = _POD_UID.search(text)
    return match.group(1).replace("_", "-") if match else None


def slurm_job_from_cgroup(text: str) -> str | None:
    """The Slurm job id in a ``/proc/<pid>/cgroup`` file's text, or None."""
    match = _SLURM_JOB.search(text)
    return match.group(1) if match else None


def _read(path: str | Path | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:  # gone, unreadable (another user's process), or no /proc
        return ""


def identity_from_env(
    env: Mapping[str, str], cgroup_path: str | Path | None = SELF_CGROUP
) -> Identity | None:
    """The identity of a process with environment ``env`` and cgroup file ``cgroup_path``."""
    explicit = env.get("CARBONWATCH_IDENTITY", "").strip()
    if explicit:
        return None if explicit.lower() == "none" else Identity(explicit, "explicit")
    cgroup = _read(cgroup_path)
    slurm_job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or slurm_job_from_cgroup(cgroup)
    if slurm_job:
        step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")
        details = {"job_id": slurm_job}
        if step:
            details["step_id"] = step
        return Identity(f"slurm:{slurm_job}", "slurm", details)

    ranks = {k.lower(): env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if env.get(k)}
    if ranks:
        run_id = env.get("TORCHELASTIC_RUN_ID", "")
        addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
        if run_id and run_id != "none":  # torchrun's default --rdzv-id is "none": not unique
            return Identity(f"torchrun:{run_id}", "torchrun", ranks)
        if addr and port:
            return Identity(f"torchrun:{addr}:{port}", "torchrun", ranks)

    pod = env.get("CARBONWATCH_POD_UID") or pod_uid_from_cgroup(cgroup)
    if pod:
        return Identity(f"k8s-pod:{pod}", "kubernetes", {"pod_uid": pod})
    return None


def identity_of_pid(pid: int, proc_root: str | Path = "/proc") -> Identity | None:
    """The identity of a running process, as a node daemon sees it (host PID namespace; reading
    another user's environment needs root, else only its cgroup is used)."""
    base = Path(proc_root) / str(pid)
    raw = _read(base / "environ")
    env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
    return identity_from_env(env, base / "cgroup")
