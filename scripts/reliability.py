#!/usr/bin/env python3
"""Run the chaos experiments (tests/chaos) and write docs/reliability.md from what they record.

    .venv/bin/python scripts/reliability.py            # the default variants (~3 min, 2 cores)
    .venv/bin/python scripts/reliability.py --slow     # also 1,000 clients for 60 s
    .venv/bin/python scripts/reliability.py -- -k kill # extra pytest arguments after --

Each experiment is a pytest test that states its hypothesis (its docstring), records what it
observed and its figures, and checks the steady state before it ends; the suite's
``--chaos-report`` option writes those records as JSON, which this script turns into a table.
Exits 1 when any hypothesis did not hold (the report is written all the same)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

STEADY_STATE = """\
After every experiment the steady-state hypothesis is checked (`tests/chaos/steady.py`):

1. **Energy is conserved.** Per device and minute, the energy the store gives to consumers
   (`energy_minute`, idle included) equals the energy the collector measured for that device and
   minute (the daemon's `interval_log`, written before attribution); where the replayed trace's
   counter is usable, the stored energy per device equals the counter's delta up to where the
   store says the replay got; every job's total equals its minute rows.
2. **Nothing acknowledged is lost.** Every acknowledged call batch (with its call count), job,
   job end and deferred job is in the store; after a clean stop every stored call is settled
   exactly once (`call_minute` calls = `call_batches` calls, none pending).
3. **The daemon answers `/healthz`** (200) at the end of the experiment.
"""

SEAMS = """\
## Fault-injection seams

The experiments run real daemon processes (`carbonwatch daemon --backend replay:DIR` on the
recorded H200 trace, or `--backend none` measuring this machine's CPU and RAM) on free ports of
127.0.0.1. Three config-file keys exist for them (`carbonwatch/daemon/hooks.py`):

- `replay_faults`: faults the replay backend injects, a TOML array of tables or a JSON string:
  `[{"kind": "lost", "device": 3, "from_s": 12.0}]` (kinds: `lost`, `counter-unsupported`,
  `counter-reset`, `power-zero`, `power-absurd`, `timeout`; `from_s`/`to_s` are seconds into the
  trace; `reads` limits a timeout to `counter`, `power` or `process` reads).
- `replay_latency`: `none` or `h200`, how long each replayed read takes (the daemon's
  `--replay-latency` flag sets it): `h200` is 3.8 ms per energy-counter read, 1.2 us per power
  read, 10 us per process-utilisation read.
- `interval_log`: a file receiving every device interval the collectors close (JSON lines),
  the "measured" side of the energy-conservation check.

The clock-step experiment injects a stepping wall clock through `Daemon(clock=...)` in-process.
The full disk is a small tmpfs when `mount` is allowed (root), else the daemon's
`RLIMIT_FSIZE`; the lock is a second process holding `BEGIN EXCLUSIVE`; corruption is garbage
written over the jobs table's pages.
"""

SECURITY_INTRO = """\
## Security: deployment and fuzz

Not chaos experiments but the tests that hold the deployment and the API to account
(`tests/test_dashboard_auth.py`, `tests/test_deploy_files.py`,
`tests/security/test_fuzz_routes.py`).
"""

# (input tried, result, test): the security table of docs/reliability.md.
SECURITY_ROWS = [
    ("`carbonwatch dashboard --host 0.0.0.0` (or `--require-auth`) with no token; with "
     "`change-me`; with a 14-byte token",
     "refuses to start, exit 2, one line naming the setting",
     "`test_refuses_to_start_without_a_usable_token`"),
    ("the dashboard off loopback: no `Authorization`, empty, wrong or truncated or extended "
     "bearer token, the token without a scheme, basic auth with a wrong password, no colon, "
     "not base64, non-UTF-8 bytes, an unknown scheme, on the page and on Dash's callback "
     "routes",
     "401 with a basic-auth challenge; compared with `hmac.compare_digest` against every "
     "token",
     "`test_off_loopback_every_request_needs_the_read_or_admin_token`"),
    ("the same with the read or the admin token, as bearer or as basic auth's password (any "
     "user name)",
     "200; in Chromium the first-run panel says a login is asked",
     "same, and `test_the_first_run_panel_says_whether_a_login_is_asked`"),
    ("the shipped `carbonwatch.env` (tokens empty) with the unit's `--host 0.0.0.0`",
     "the daemon refuses to start, exit 2",
     "`test_the_env_file_ships_no_usable_token_and_the_daemon_refuses_to_start_with_it`"),
    ("the shipped unit through `systemd-analyze verify` and `security --offline`",
     "no unknown key; `User=carbonwatch`, no capabilities, exposure 3.5 (\"OK\", systemd 252); "
     "the scheduler drop-in: uid 0 with only SETUID, SETGID, KILL, DAC_READ_SEARCH",
     "`test_systemd_accepts_the_unit_and_the_drop_in` and the two before it"),
    ("the daemon as `nobody` over a powercap tree whose `energy_uj` is root-only (0400), "
     "then after the udev rule's own commands",
     "CPU modelled, then measured by RAPL; `energy_uj` group-readable, never world-readable",
     "`test_an_unprivileged_daemon_reads_rapl_through_the_udev_rule`"),
    ("the DaemonSet and image",
     "uid 10001, `runAsNonRoot`, read-only root, every capability dropped; only the init "
     "container is uid 0, with CHOWN and FOWNER",
     "`test_daemonset_runs_the_daemon_non_root_read_only_and_without_capabilities`"),
    ("every operation of `/v1/openapi.json` (14), schemathesis positive and negative cases, "
     "100 each (300 where half the positive ones are laid over an accepted request), `{id}` "
     "routes with created and missing ids; ~1,400 to 2,400 requests in a 75 s budget, daemon "
     "as `nobody`",
     "no 5xx, no traceback in the log, SIGTERM exits 0, the daemon starts again on the same "
     "store and answers",
     "`test_every_route_fuzzed_gives_no_5xx_no_traceback_and_the_daemon_restarts`"),
    ("300 random `Authorization` values (any byte but CR, LF, NUL; with and without "
     "`Bearer`)",
     "401 (400 from the HTTP parser for control bytes), never a 5xx",
     "`test_any_authorization_header_but_the_token_gets_401_never_a_5xx`"),
]

SECURITY_FOUND = """\
What the fuzz found on the code before issue 12's fixes (nothing is marked expected to fail):
`POST /v1/deferred` with `deadline_s` 1e300, -1e16 or 1e12, `deadline` `+99999999d`, or
`duration` `99999999999h` answered 500 and stored the job; `GET /v1/deferred` then always
answered 500 (`ValueError: year ... is out of range` in `iso_utc`) and the daemon could not start
again (`OverflowError: timestamp out of range` arming the stored job). An `Authorization` header
with a non-UTF-8 byte (`Bearer \\xa4`) answered 500 (`UnicodeEncodeError`) before auth; one with
a control byte (`Bearer \\x01`) is refused 400 by aiohttp's parser, which logged a traceback,
header bytes included, for every such request.
"""

# (experiment, what broke, the fix): the bugs these experiments found, fixed since.
FIXED = [
    ("disk full",
     "A flush that failed (disk full, or the database locked past the busy timeout) was "
     "dropped: its minute rows were lost (stored energy fell 5 % short of the counter) and its "
     "settled batches stayed pending until a restart.",
     "`SamplingLoop.flush` keeps a failed flush and writes it again, before its own rows and in "
     "the same transaction, with the next flush."),
    ("clock steps",
     "The sampler was paced by the wall clock: a step forward made one interval an hour long "
     "(RAM/CPU model energy for an hour that never happened), a step back stopped sampling for "
     "as long as the clock went back.",
     "Collectors measure on `SteadyClock` (wall time at start + monotonic time); "
     "`WallTimeLabels` moves their intervals onto the wall clock for the record."),
    ("kill -9 around a deferred launch",
     "A wrapper that looked for the daemon while it restarted measured on its own beside it, "
     "and the restarted daemon adopted that wrapper's job as its own: the job's energy was "
     "counted twice (its total disagreed with its minute rows).",
     "`carbonwatch run` with an explicit daemon URL (the scheduler sets one) waits up to 10 s "
     "for the daemon; the daemon resumes only its own jobs (not `source = 'run'`)."),
    ("kill -9 while a deferred job runs",
     "A job ending while the daemon was down: the wrapper died with a traceback, the job stayed "
     "`running` and the deferred job `failed`.",
     "The wrapper waits up to 60 s for the daemon to take the job's end, then says so in one "
     "line."),
    ("corrupt page while running",
     "A read hitting a corrupt page answered 500, with a traceback in the daemon's log.",
     "The API answers 503 `store unavailable: database disk image is malformed`."),
    ("start on a corrupt store",
     "The error said \"store write failed\" and named no file.",
     "\"cannot start on the store PATH: ... restore a backup or move it aside\"."),
]


# Hand-written (its figures come from the tests in tests/security/, not from the chaos run).
SECURITY_BOUNDS = ROOT / "scripts" / "security_bounds.md"


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


FAMILY_ORDER = ["kill -9 and restart", "NVML faults (replay backend)", "grid provider faults",
                "store under pressure", "clock steps", "load", "security"]


def render(report: dict[str, Any], command: str, elapsed_s: float) -> str:
    rows = sorted(report["experiments"], key=lambda r: (
        FAMILY_ORDER.index(r["family"]) if r["family"] in FAMILY_ORDER else len(FAMILY_ORDER)))
    held = sum(r["held"] for r in rows)
    skipped = [r for r in rows if r["skipped"]]
    ran = len(rows) - len(skipped)
    seeds = {r["figures"].get("seed") for r in rows if "seed" in r["figures"]}
    out = [
        "# Reliability: chaos experiments",
        "",
        f"Produced by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({report['machine']}, Python {report['python']}; {elapsed_s:.0f} s"
        + (f"; random seed {', '.join(map(str, sorted(seeds)))}" if seeds else "") + "). "
        "Do not edit by hand: run the script again.",
        "",
        f"**{held} of {ran} hypotheses held**" +
        (f"; {len(skipped)} long variant(s) not run (`--slow`)." if skipped else "."),
        "",
        STEADY_STATE,
        "## Results",
        "",
        "| Family | Experiment | Hypothesis | Observed | Figures | Held |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["skipped"]:
            observed, figures, verdict = f"not run: {r['skipped']}", "", "not run"
        else:
            observed = "; ".join(r["observed"])
            steady = r.get("steady") or {}
            if steady:
                observed += ". Steady state: " + "; ".join(
                    f"{k}: {v}" for k, v in steady.items() if k != "held")
            if r.get("failure"):
                observed += f" **Failed:** {r['failure']}"
            figures = "; ".join(f"{k}: {_fmt(v)}" for k, v in r["figures"].items())
            verdict = "**yes**" if r["held"] else "**NO**"
        out.append("| " + " | ".join(_cell(c) for c in (
            r["family"], r["name"], r["hypothesis"], observed.strip(), figures, verdict)) + " |")
    out += ["", "## Bugs these experiments found (fixed)", "",
            "| Experiment | What broke | Fix |", "|---|---|---|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in FIXED]
    out += ["", SECURITY_INTRO, "| Input tried | Result | Test |", "|---|---|---|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in SECURITY_ROWS]
    # Each section once, a blank line between: deployment and fuzz (above), what the fuzz found,
    # the bounds (scripts/security_bounds.md), the seams, the scopes and owners (docs/security.md).
    out += ["", SECURITY_FOUND.rstrip(), "", SECURITY_BOUNDS.read_text().rstrip(), "",
            SEAMS.rstrip()]
    security = ROOT / "docs" / "security.md"  # hand-kept: the tests/security/ inputs and results
    if security.exists():
        out += ["", "## Security", "", security.read_text().strip()]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="also run the long variants")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("--json", type=Path, default=None, help="keep the raw records here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    python = ROOT / ".venv" / "bin" / "python"
    python = python if python.exists() else Path(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        json_path = args.json or Path(tmp) / "chaos.json"
        cmd = [str(python), "-m", "pytest", "tests/chaos", "-q", "-p", "no:cacheprovider",
               f"--chaos-report={json_path}", *(["--slow"] if args.slow else []),
               *args.pytest_args]
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, env=os.environ.copy())
        elapsed_s = time.monotonic() - started
        if not json_path.exists():
            print("reliability: pytest wrote no report", file=sys.stderr)
            return 2
        report = json.loads(json_path.read_text())
    shown = "python scripts/reliability.py" + (" --slow" if args.slow else "")
    args.out.write_text(render(report, shown, elapsed_s))
    rows = report["experiments"]
    failed = [r["name"] for r in rows if not r["held"] and not r["skipped"]]
    print(f"reliability: wrote {args.out} ({len(rows) - len(failed)} rows held or not run, "
          f"{len(failed)} did not hold{': ' + ', '.join(failed) if failed else ''})")
    return 1 if failed or done.returncode not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
