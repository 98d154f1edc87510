"""`carbonwatch daemon --scrape NAME=URL`: a real daemon process scrapes a real HTTP server on
127.0.0.1 that speaks vLLM's (or TGI's) exposition format, finds the server's process by its
port, and splits that process's energy over the tokens the server reports, per model.

The GPU is the shared H200 trace replayed with its inference process's pid replaced by this test
process's pid (the exposition server runs here), so the replay's attribution gives the scraped
server the inference process's energy: a truth from the recording, not from the scraper."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time

import pytest
from daemon_helpers import FIXTURE, INFER_PID, DaemonProcess
from serving_helpers import ExpositionServer, tgi_text, vllm_text

LLAMA, MISTRAL = "meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3"
# Per scrape, each model's counters grow by these: the energy split is 400 : 150 in every window.
STEP = {LLAMA: {"tokens_in": 300, "tokens_out": 100, "requests": 4, "busy_s": 2.0},
        MISTRAL: {"tokens_in": 100, "tokens_out": 50, "requests": 2, "busy_s": 0.5}}
GARBAGE_AT = {3, 4}  # the server answers these scrapes with text that is not exposition
RESET_AT = 9  # the server "restarts": its counters start again from this small value
RESET_VALUE = {LLAMA: {"tokens_in": 30, "tokens_out": 10, "requests": 1, "busy_s": 0.2},
               MISTRAL: {"tokens_in": 10, "tokens_out": 5, "requests": 1, "busy_s": 0.05}}


def trace_with_pid(tmp_path, pid: int):
    """The H200 trace, its inference process renumbered to ``pid``."""
    trace = tmp_path / "trace"
    shutil.copytree(FIXTURE, trace)
    meta = json.loads((trace / "meta.json").read_text())
    meta["pids"]["infer"] = pid
    (trace / "meta.json").write_text(json.dumps(meta))
    for name, column in (("process_util.csv", 1), ("process_cpu.csv", 2)):
        lines = (trace / name).read_text().splitlines()
        out = [lines[0]]
        for line in lines[1:]:
            cells = line.split(",")
            if cells[column] == str(INFER_PID):
                cells[column] = str(pid)
            out.append(",".join(cells))
        (trace / name).write_text("\n".join(out) + "\n")
    return trace


class Script:
    """What the fake vLLM serves at each scrape, and the cumulative values a correct reader
    derives (Prometheus increase() semantics: baseline first, a drop is a reset)."""

    def __init__(self) -> None:
        self.values: list[dict[str, dict[str, float]]] = []  # good answers, in order
        self.frozen = False

    def respond(self, n: int) -> str:
        if n in GARBAGE_AT:
            return "<html><body>502 Bad Gateway</body></html>\n"
        if self.frozen and self.values:
            current = self.values[-1]
        elif n == RESET_AT:
            current = RESET_VALUE
        elif self.values:
            last = self.values[-1]
            current = {m: {k: last[m][k] + STEP[m][k] for k in STEP[m]} for m in STEP}
        else:
            current = {m: {k: 1000.0 * v for k, v in STEP[m].items()} for m in STEP}
        self.values.append(current)
        return vllm_text(current)

    def increases(self) -> dict[str, dict[str, float]]:
        out = {m: dict.fromkeys(STEP[m], 0.0) for m in STEP}
        for before, after in zip(self.values, self.values[1:], strict=False):
            for m in STEP:
                for k in STEP[m]:
                    a, b = after[m][k], before[m][k]
                    out[m][k] += a if a < b else a - b
        return out


def _healthz_scrape(daemon):
    status, health = daemon.request("GET", "/healthz")
    assert status == 200
    return health["scrape"][0]


def test_vllm_tokens_get_the_server_process_energy_per_model(tmp_path):
    script = Script()
    db = tmp_path / "cw.db"
    with ExpositionServer(script.respond) as server:
        trace = trace_with_pid(tmp_path, server.pid)
        with DaemonProcess(db, "--backend", f"replay:{trace}", "--replay-speed", "5",
                           "--scrape", f"vllm={server.url}", "--scrape-interval", "1") as daemon:
            daemon.wait_for(daemon.replay_finished, timeout_s=60)
            script.frozen = True  # nothing more to count: every later window has no work
            seen = len(server.served)
            daemon.wait_for(lambda: len(server.served) >= seen + 2, timeout_s=20)
            view = _healthz_scrape(daemon)
            assert daemon.stop() == 0
        stderr = "".join(daemon.stderr)

    # Garbage was logged and counted, the daemon kept scraping, and the reset was seen.
    assert view["server"] == "vllm" and view["pid"] == server.pid
    assert view["errors"] == len(GARBAGE_AT) and view["last_error"] is None
    assert view["counter_resets"] > 0
    assert "scrape vllm" in stderr and "not Prometheus text exposition" in stderr

    conn = sqlite3.connect(db)
    job_id, pids, tags, calls, calls_j, between_j = conn.execute(
        "SELECT id, pids, tags, calls, calls_energy_j, between_calls_j FROM jobs"
        " WHERE source = 'scrape'").fetchone()
    assert json.loads(pids) == [server.pid] and json.loads(tags)["scrape"] == "vllm"
    job_j = conn.execute("SELECT SUM(energy_j) FROM energy_minute WHERE consumer = ?",
                         [f"job:{job_id}"]).fetchone()[0]
    trace_j = conn.execute("SELECT SUM(energy_j) FROM energy_minute").fetchone()[0]
    # The inference process drew a real share of the GPU (it ran ~20 s of the 30 s trace).
    assert 0 < job_j < trace_j

    rows = {m: (n, e, t_in, t_out, tc, busy) for m, n, e, t_in, t_out, tc, busy in conn.execute(
        "SELECT model, SUM(calls), SUM(energy_j), SUM(tokens_in), SUM(tokens_out),"
        " SUM(token_calls), SUM(busy_s) FROM call_minute GROUP BY model")}
    truth = script.increases()
    for model in STEP:
        n, _, t_in, t_out, token_calls, busy_s = rows[model]
        assert t_in == truth[model]["tokens_in"] and t_out == truth[model]["tokens_out"]
        assert n == token_calls == truth[model]["requests"]
        assert busy_s == pytest.approx(truth[model]["busy_s"])
    # Every window's energy went 400 : 150 (the models' tokens), so the totals did too.
    assert rows[LLAMA][1] / rows[MISTRAL][1] == pytest.approx(400 / 150, rel=1e-9)
    # Conservation: the process's energy is in the models' rows or between windows, once.
    assert calls_j == pytest.approx(rows[LLAMA][1] + rows[MISTRAL][1], rel=1e-9)
    assert calls_j + between_j == pytest.approx(job_j, rel=1e-9)
    assert calls == rows[LLAMA][0] + rows[MISTRAL][0]
    # The job starts at the first scrape, which is also the baseline, and tokens grow in every
    # window after it: its energy goes to tokens (at most the interval that straddles the
    # baseline stays between windows).
    assert calls_j >= 0.9 * job_j
    # Joules per output token, as the per-token figures read them.
    j_per_token = rows[LLAMA][1] / rows[LLAMA][3]
    assert j_per_token > 0


def test_tgi_server_is_read_with_the_target_name_as_its_model(tmp_path):
    values: list[tuple[int, int, int, float]] = []

    def respond(n: int) -> str:
        v = (600 + 120 * n, 300 + 40 * n, 10 + 2 * n, 5.0 + 0.75 * n)
        values.append(v)
        return tgi_text(*v)

    db = tmp_path / "cw.db"
    with ExpositionServer(respond) as server:
        trace = trace_with_pid(tmp_path, server.pid)
        with DaemonProcess(db, "--backend", f"replay:{trace}", "--replay-speed", "10",
                           "--scrape", f"tgi-llama={server.url}", "--scrape-interval", "2") as d:
            d.wait_for(d.replay_finished, timeout_s=60)
            assert d.stop() == 0
    conn = sqlite3.connect(db)
    n, t_in, t_out, busy_s, energy_j = conn.execute(
        "SELECT SUM(calls), SUM(tokens_in), SUM(tokens_out), SUM(busy_s), SUM(energy_j)"
        " FROM call_minute WHERE model = 'tgi-llama'").fetchone()
    # The windows the daemon cut end at the last scrape it read (the server may have answered
    # one more that the daemon, stopping, never used): compare with the prefix read.
    used = next(i for i in range(len(values)) if values[i][0] - values[0][0] == t_in)
    assert (t_out, n) == (values[used][1] - values[0][1], values[used][2] - values[0][2])
    assert busy_s == pytest.approx(values[used][3] - values[0][3])
    assert energy_j > 0
    model = conn.execute("SELECT model FROM jobs WHERE source = 'scrape'").fetchone()[0]
    assert model == "tgi-llama"
    # TGI counts output tokens for every request: all of the rows' energy is the tokens'.
    token_calls, token_j = conn.execute(
        "SELECT SUM(token_calls), SUM(token_energy_j) FROM call_minute WHERE model = ?",
        [model]).fetchone()
    assert token_calls == n and token_j == pytest.approx(energy_j, rel=1e-12)
    # The summary's per-token figures, against the server's own counters and the serving
    # energy in energy_minute (the job's, between windows included): not from call_minute.
    serving_j, serving_g = conn.execute(
        "SELECT SUM(energy_j), SUM(co2e_g) FROM energy_minute WHERE model = ?"
        " AND phase = 'inference'", [model]).fetchone()
    conn.close()
    true_in, true_out = values[used][0] - values[0][0], values[used][1] - values[0][1]
    with DaemonProcess(db, "--backend", "none") as d:
        status, summary = d.request("GET", "/v1/summary?group_by=model")
        assert status == 200, summary
    got = {g["key"]: g for g in summary["groups"]}[model]
    assert (got["tokens_in"], got["tokens_out"], got["token_energy_share"]) == (
        true_in, true_out, 1.0)
    assert got["energy_j_per_output_token"] == pytest.approx(serving_j / true_out, rel=1e-9)
    assert got["energy_j_per_token"] == pytest.approx(serving_j / (true_in + true_out), rel=1e-9)
    assert got["co2e_g_per_1k_output_tokens"] == pytest.approx(serving_g / true_out * 1000,
                                                               rel=1e-9)


def test_a_scrape_url_off_this_node_is_refused_at_start(tmp_path):
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none",
                           "--scrape", "vllm=http://203.0.113.7:8000/metrics")
    done = daemon.run_to_exit()
    assert done.returncode == 2
    assert "203.0.113.7 is not an address of this node" in done.stderr


def test_an_unreachable_server_is_counted_and_the_daemon_keeps_serving(tmp_path):
    with ExpositionServer(lambda n: "") as server:
        port = server.port
    # Nothing listens there any more.
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", "--scrape",
                       f"gone=http://127.0.0.1:{port}/metrics", "--scrape-interval", "0.2") as d:
        view = d.wait_for(lambda: (v := _healthz_scrape(d))["errors"] >= 2 and v)
        assert view["scrapes"] == 0 and f"nothing listens on 127.0.0.1:{port}" in view["last_error"]
        time.sleep(0.3)
        assert d.request("GET", "/healthz")[0] == 200


def test_a_large_exposition_is_read_whole(tmp_path):
    """60 models on 2 engines: ~270 kB of vLLM text, arriving in many chunks."""
    models = [f"org/model-{i:02d}" for i in range(60)]

    def respond(n: int) -> str:
        return vllm_text({m: {"tokens_in": 1000 + 10 * n * (i + 1), "tokens_out": 5 * n,
                              "requests": n, "busy_s": 0.5 * n} for i, m in enumerate(models)})

    assert len(respond(0)) > 200_000
    db = tmp_path / "cw.db"
    with ExpositionServer(respond) as server, DaemonProcess(
            db, "--backend", "none", "--scrape", f"big={server.url}",
            "--scrape-interval", "0.3") as d:
        d.wait_for(lambda: _healthz_scrape(d)["scrapes"] >= 4, timeout_s=30)
        view = _healthz_scrape(d)
        assert d.stop() == 0
    assert view["errors"] == 0 and view["server"] == "vllm"
    conn = sqlite3.connect(db)
    got = dict(conn.execute("SELECT model, SUM(tokens_in) FROM call_minute GROUP BY model"))
    # The windows read cover scrapes 0..k: model i grew by 10 (i + 1) tokens per scrape.
    k = got[models[0]] // 10
    assert k >= 3 and got == {m: 10 * (i + 1) * k for i, m in enumerate(models)}


@pytest.mark.parametrize("spec, message", [
    ("vllm", "is not NAME=URL"),
    ("a b=http://127.0.0.1:1/m", "is not NAME=URL"),
    ("v=http://127.0.0.1:1/m,v=http://127.0.0.1:2/m", "given twice"),
    ("v=http://127.0.0.1:1/m,w=http://127.0.0.1:1/x", "both use port 1"),
    ("v=ftp://127.0.0.1:1/m", "is not an http(s) URL"),
    ("v=http://user:pw@127.0.0.1:1/m", "credentials"),
    ("v=http://metrics.example.com:1/m", "must be an IP address of this node or localhost"),
    ("v=http://127.0.0.1:99999/m", "invalid port"),
])
def test_bad_scrape_settings_are_refused_with_the_reason(spec, message):
    from carbonwatch.daemon.scraping import parse_targets
    from carbonwatch.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_targets(spec)


def test_a_restarted_daemon_keeps_measuring_the_same_server_as_the_same_job(tmp_path):
    def respond(n: int) -> str:
        return vllm_text({LLAMA: {"tokens_in": 100 * n, "tokens_out": 10 * n, "requests": n}})

    db = tmp_path / "cw.db"
    with ExpositionServer(respond) as server:
        args = ("--backend", "none", "--scrape", f"vllm={server.url}", "--scrape-interval", "0.2")
        for _ in range(2):
            with DaemonProcess(db, *args) as d:
                d.wait_for(lambda d=d: _healthz_scrape(d)["scrapes"] >= 3, timeout_s=30)
                job_id = _healthz_scrape(d)["job_id"]
                assert d.stop() == 0
    conn = sqlite3.connect(db)
    jobs = conn.execute("SELECT id, status FROM jobs WHERE source = 'scrape'").fetchall()
    assert jobs == [(job_id, "running")]  # adopted after the restart, not registered twice
    tokens = conn.execute("SELECT SUM(tokens_in) FROM call_minute").fetchone()[0]
    # Each run's first scrape is a baseline: only increases seen within a run are counted.
    assert tokens % 100 == 0 and tokens >= 400
