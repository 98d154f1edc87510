"""/metrics stays bounded and honest: ended jobs' series fold into the node's job_id="" series
with every counter monotonic and the sum over series unchanged; spans clients dropped are
counted; the node label comes from the `node` setting (flag > environment > config file)."""

from __future__ import annotations

import math

from daemon_helpers import MODEL, TRAIN_PID, DaemonProcess, InProcessDaemon, fixture_calls
from prometheus_client.parser import text_string_to_metric_families

ENERGY = "carbonwatch_energy_joules"
Series = dict[tuple[tuple[str, str], ...], float]


def scrape(daemon: InProcessDaemon) -> dict[str, Series]:
    status, text = daemon.request("GET", "/metrics")
    assert status == 200
    return {
        f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
    }


def job_ids(series: Series) -> set[str]:
    return {dict(k)["job_id"] for k in series}


def folded_key(key: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**dict(key), "job_id": "", "job_name": ""}.items()))


def test_ended_jobs_fold_into_the_node_series_keeping_every_counter_monotonic(tmp_path):
    db = tmp_path / "cw.db"
    # 5 s of trace time after its end (0.5 s real at 10x), a job's series are folded.
    with InProcessDaemon(db, replay_speed=10, node="n1", metrics_job_retention_s=5.0) as d:
        status, train = d.request("POST", "/v1/jobs", {"name": "pretrain", "kind": "training",
                                                        "model": "llm", "pid": TRAIN_PID})
        assert status == 201
        assert d.request("POST", "/v1/calls", {"calls": fixture_calls()})[0] == 200
        scrapes: list[dict[str, Series]] = []
        ended = False

        def step() -> bool:
            nonlocal ended
            scrapes.append(scrape(d))
            ids = job_ids(scrapes[-1].get(ENERGY, {}))
            if not ended and train["id"] in ids:  # it has energy: end it mid-replay
                assert d.request("POST", f"/v1/jobs/{train['id']}/end", {})[0] == 200
                ended = True
            return ended and train["id"] not in ids and d.replay_finished()

        d.wait_for(step, timeout_s=60)
        # Every counter only grows while the job runs, ends and folds, and a folded job's series
        # never comes back; the sum over all series never decreases.
        for metric in (ENERGY, "carbonwatch_emissions_grams"):
            history = [s.get(metric, {}) for s in scrapes]
            gone: set[tuple[tuple[str, str], ...]] = set()
            for before, after in zip(history, history[1:], strict=False):
                assert not gone & after.keys(), metric
                for key, value in before.items():
                    if key in after:
                        assert after[key] >= value, (metric, key)
                    else:
                        assert dict(key)["job_id"], key  # only a job's own series may stop
                        gone.add(key)
                assert math.fsum(after.values()) >= math.fsum(before.values()) * (1 - 1e-12)
            assert any(dict(k)["job_id"] == train["id"] for k in gone)

        # Now nothing is measured: the inference service's job folds, and its energy only moves.
        d.wait_for(lambda: d.request("GET", "/healthz")[1]["pending_calls"] == 0)
        before = scrape(d)[ENERGY]
        (service,) = {i for i in job_ids(before) if i}
        assert d.request("POST", f"/v1/jobs/{service}/end", {})[0] == 200
        after = d.wait_for(lambda: service not in job_ids(s := scrape(d)[ENERGY]) and s)
        assert job_ids(after) == {""}
        assert math.isclose(math.fsum(after.values()), math.fsum(before.values()), rel_tol=1e-12)
        expected: dict[tuple[tuple[str, str], ...], float] = {}
        for key, value in before.items():
            expected[folded_key(key)] = expected.get(folded_key(key), 0.0) + value
        assert after.keys() == expected.keys()
        for key, value in expected.items():  # each folded total = the sum of what was folded in
            assert math.isclose(after[key], value, rel_tol=1e-12), key
            assert after[key] >= before.get(key, 0.0)  # and the node's series only grew

    # A restart seeds from the store and folds the jobs ended past the retention: the same
    # series. (A replay's clock resumes at the trace's end, before the service's end, so here
    # that takes the retention again; on a live node's clock it is the first scrape.)
    with InProcessDaemon(db, node="n1", metrics_job_retention_s=5.0) as d:
        again = d.wait_for(lambda: job_ids(s := scrape(d)[ENERGY]) == {""} and s)
        assert again.keys() == after.keys()
        assert all(math.isclose(again[k], after[k], rel_tol=1e-9) for k in after)


def test_spans_clients_dropped_are_a_counter_per_node_that_survives_a_restart(tmp_path):
    db = tmp_path / "cw.db"
    dropped = "carbonwatch_inference_spans_dropped"
    call = {"model": MODEL, "start": 1795697490.0, "end": 1795697490.5}
    with InProcessDaemon(db, node="n1") as d:
        assert list(scrape(d)[dropped].values()) == [0.0]
        assert d.request("POST", "/v1/calls", {"calls": [call], "dropped": 7})[0] == 200
        assert d.request("POST", "/v1/calls", {"calls": [], "dropped": 5})[0] == 200
        assert scrape(d)[dropped] == {(("node", "n1"),): 12.0}
    with InProcessDaemon(db, node="n1") as d:
        assert scrape(d)[dropped] == {(("node", "n1"),): 12.0}


def test_the_node_label_is_the_node_setting_flag_over_environment_over_config(tmp_path):
    config = tmp_path / "cw.toml"
    config.write_text('node = "from-config"\n')

    def node(*args: str, env: dict[str, str] | None = None) -> str:
        with DaemonProcess(tmp_path / "cw.db", "--backend", "none", "--config", str(config),
                           *args, env=env) as d:
            status, health = d.request("GET", "/healthz")
            _, text = d.request("GET", "/metrics")
            (up,) = [s for f in text_string_to_metric_families(text) if f.name == "carbonwatch_up"
                     for s in f.samples]
            assert up.labels["node"] == health["node"]
            return health["node"]

    assert node() == "from-config"
    assert node(env={"CARBONWATCH_NODE": "from-env"}) == "from-env"
    assert node("--node", "from-flag", env={"CARBONWATCH_NODE": "from-env"}) == "from-flag"
