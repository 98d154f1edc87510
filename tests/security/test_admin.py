"""Finding 1 (critical): one token must not mean root on every node.

Against real daemon processes. On the old code: ``change-me`` (the shipped env file's token) and
short tokens started a daemon on 0.0.0.0; the ingest token every client holds launched commands
(as root); every deferred job's environment carried the token; and a local user's submission was
refused on the unix socket or run as the daemon's user."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess

from .helpers import (
    ADMIN_TOKEN,
    NOBODY,
    OTHER,
    TOKEN,
    PublicDaemon,
    needs_root,
    public_python,
    request_as,
    shared_dir,
    user_env,
)

ROOT = Path(__file__).resolve().parents[2]
DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"CARBONWATCH_TOKEN": "change-me"}, "CARBONWATCH_TOKEN is a placeholder"),
        ({"CARBONWATCH_TOKEN": "CHANGE-ME-" + "x" * 40}, "CARBONWATCH_TOKEN is a placeholder"),
        ({"CARBONWATCH_TOKEN": "s3cret-token"}, "CARBONWATCH_TOKEN is 12 bytes"),
        ({"CARBONWATCH_TOKEN": TOKEN, "CARBONWATCH_ADMIN_TOKEN": "admin"},
         "CARBONWATCH_ADMIN_TOKEN is a placeholder"),
    ],
)
def test_off_loopback_a_guessable_token_is_refused_at_start(tmp_path, env, why):
    result = DaemonProcess(tmp_path / "cw.db", "--host", "0.0.0.0", "--backend", "none",
                           env=env).run_to_exit()
    assert result.returncode == 2, result.stderr
    assert why in result.stderr and "openssl rand -hex 32" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cw.db").exists()


def test_the_shipped_env_file_holds_no_usable_token(tmp_path):
    """Installed as shipped, the systemd unit's daemon (on 0.0.0.0) does not start."""
    lines = (ROOT / "deploy" / "systemd" / "carbonwatch.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    assert env == {"CARBONWATCH_TOKEN": "", "CARBONWATCH_ADMIN_TOKEN": ""}
    result = DaemonProcess(tmp_path / "cw.db", "--host", "0.0.0.0", "--backend", "none",
                           env=env).run_to_exit()
    assert result.returncode == 2 and "without a token" in result.stderr


def _deferred(command: list[str], **extra: object) -> dict[str, object]:
    return {"command": command, "deadline_s": time.time() + 3.0, "duration_s": 1.0,
            "provider": "static", **extra}


def test_the_ingest_token_cannot_launch_commands(tmp_path):
    body = _deferred(["touch", str(tmp_path / "ran")])
    with DaemonProcess(tmp_path / "a.db", "--host", "0.0.0.0", "--backend", "none",
                       env={"CARBONWATCH_TOKEN": TOKEN}) as daemon:
        daemon.url = daemon.url.replace("0.0.0.0", "127.0.0.1")
        status, answer = daemon.request("POST", "/v1/deferred", body, token=TOKEN)
        assert status == 403 and "no admin token (CARBONWATCH_ADMIN_TOKEN)" in answer["error"]
        assert daemon.request("GET", "/v1/deferred", token=TOKEN)[1]["deferred"] == []
    env = {"CARBONWATCH_TOKEN": TOKEN, "CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN}
    with DaemonProcess(tmp_path / "b.db", "--host", "0.0.0.0", "--backend", "none",
                       env=env) as daemon:
        daemon.url = daemon.url.replace("0.0.0.0", "127.0.0.1")
        status, answer = daemon.request("POST", "/v1/deferred", body, token=TOKEN)
        assert status == 403 and "needs the admin token" in answer["error"]
        queued = {**body, "deadline_s": time.time() + 3600, "duration_s": 60}
        status, answer = daemon.request("POST", "/v1/deferred", queued, token=ADMIN_TOKEN)
        assert status == 201, answer
        status, answer = daemon.request("DELETE", f"/v1/deferred/{answer['id']}", token=TOKEN)
        assert status == 403
    assert not (tmp_path / "ran").exists()


def test_no_token_reaches_a_job_and_its_wrapper_still_reports(tmp_path):
    """The submitter's environment holds both tokens; the job's holds neither, and its wrapper
    registers with the daemon (on 0.0.0.0 with a token) over loopback without one."""
    dump = tmp_path / "env.json"
    env = {"CARBONWATCH_TOKEN": TOKEN, "CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN}
    with DaemonProcess(tmp_path / "cw.db", "--host", "0.0.0.0", "--backend", "none",
                       env=env) as daemon:
        daemon.url = daemon.url.replace("0.0.0.0", "127.0.0.1")
        submitted_env = {**user_env(), **env}
        status, view = daemon.request(
            "POST", "/v1/deferred",
            _deferred([sys.executable, "-c", DUMP_ENV, str(dump)], env=submitted_env),
            token=ADMIN_TOKEN)
        assert status == 201, view
        done = daemon.wait_for(
            lambda: (v := daemon.request("GET", f"/v1/deferred/{view['id']}", token=TOKEN)[1])
            ["status"] in ("done", "failed") and v, timeout_s=30, every_s=0.1)
        assert done["status"] == "done", done
        status, job = daemon.request("GET", f"/v1/jobs/{done['job_id']}", token=TOKEN)
        assert status == 200 and job["status"] == "finished" and job["owner_uid"] == 0
    text = dump.read_text()
    assert TOKEN not in text and ADMIN_TOKEN not in text
    seen = json.loads(text)
    assert seen["CARBONWATCH_DAEMON_URL"] == daemon.url  # loopback, not 0.0.0.0


@needs_root
def test_on_the_unix_socket_a_root_daemon_runs_a_users_job_as_that_user(tmp_path):
    """As deployed: TCP on 0.0.0.0 with a token, and a unix socket beside it (local_socket)
    through which the node's users launch, each as itself."""
    with shared_dir() as shared:
        sock = shared / "cw.sock"
        private = tmp_path / "private"  # root's, 0700: nobody may enter it
        private.mkdir(mode=0o700)
        who = shared / "who.txt"
        env = {"CARBONWATCH_SOCKET_MODE": "666", "CARBONWATCH_LOCAL_SOCKET": str(sock),
               "CARBONWATCH_TOKEN": TOKEN}
        with PublicDaemon(tmp_path / "cw.db", "--host", "0.0.0.0", "--backend", "none",
                          env=env) as daemon:
            assert stat.S_IMODE(sock.stat().st_mode) == 0o666
            tcp_url = daemon.url.replace("0.0.0.0", "127.0.0.1")
            daemon.url, daemon.default_token = f"unix:{sock}", None
            status, answer = request_as(NOBODY, tcp_url, "POST", "/v1/deferred", _deferred(
                ["true"]), token=TOKEN)
            assert status == 403 and "--socket" in answer["error"]  # TCP: closed
            job_env = user_env(HOME=str(shared), XDG_DATA_HOME=str(shared / "data"))
            write_ids = ("import os, sys; open(sys.argv[1], 'w').write("
                         "f'{os.getuid()} {os.getgid()} {os.getgroups()}')")
            body = _deferred([public_python(), "-c", write_ids, str(who)], cwd=str(shared),
                             env=job_env)
            status, view = request_as(NOBODY, daemon.url, "POST", "/v1/deferred", body)
            assert status == 201, view
            assert view["owner_uid"] == NOBODY
            # Queued for an hour from now: another user may neither cancel it nor read it.
            later = {**body, "deadline_s": time.time() + 3600, "duration_s": 60}
            status, queued = request_as(NOBODY, daemon.url, "POST", "/v1/deferred", later)
            assert status == 201, queued
            status, answer = request_as(OTHER, daemon.url, "DELETE",
                                        f"/v1/deferred/{queued['id']}")
            assert status == 403 and "only its owner or an operator" in answer["error"]
            status, seen = request_as(OTHER, daemon.url, "GET", f"/v1/deferred/{queued['id']}")
            assert (seen["command"], seen["cwd"], seen["log_path"]) == (None, None, None)
            assert request_as(NOBODY, daemon.url, "DELETE",
                              f"/v1/deferred/{queued['id']}")[0] == 200
            # A directory its user could not enter is not entered as root on its behalf.
            blocked = _deferred([public_python(), "-c", write_ids, str(shared / "blocked")],
                                cwd=str(private), env=job_env)
            status, refused = request_as(NOBODY, daemon.url, "POST", "/v1/deferred", blocked)
            assert status == 201, refused

            def ended(job_id: str) -> dict:
                return daemon.wait_for(
                    lambda: (v := daemon.request("GET", f"/v1/deferred/{job_id}")[1])["status"]
                    in ("done", "failed") and v, timeout_s=30, every_s=0.1)

            done, failed = ended(view["id"]), ended(refused["id"])
            status, job = daemon.request("GET", f"/v1/jobs/{done['job_id']}")
        assert done["status"] == "done", done
        uid, gid, _groups = who.read_text().split(" ", 2)
        assert (int(uid), int(gid)) == (NOBODY, NOBODY)
        # Its wrapper, running as that user, registered the job with the daemon as that user.
        assert status == 200 and job["owner_uid"] == NOBODY and job["status"] == "finished"
        log = Path(done["log_path"])
        assert log.stat().st_uid == NOBODY and stat.S_IMODE(log.stat().st_mode) == 0o600
        assert failed["status"] == "failed" and not (shared / "blocked").exists()
        assert "cannot enter" in Path(failed["log_path"]).read_text()


@needs_root
def test_over_tcp_a_user_without_the_admin_token_launches_nothing(tmp_path):
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none",
                       env={"CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN}) as daemon:
        body = _deferred(["touch", str(tmp_path / "ran")])
        status, answer = request_as(NOBODY, daemon.url, "POST", "/v1/deferred", body)
        assert status == 403 and "needs the admin token" in answer["error"]
        status, answer = request_as(NOBODY, daemon.url, "POST", "/v1/deferred", body,
                                    token=TOKEN)  # not a token of this daemon
        assert status == 401
    assert not (tmp_path / "ran").exists()
    assert os.geteuid() == 0
