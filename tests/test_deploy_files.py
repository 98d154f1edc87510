"""The deployment files parse, and what they reference exists: `carbonwatch daemon` flags, API
endpoints in the daemon's OpenAPI document, metric names the daemon exposes. The Slurm scripts
open and close a job on a real daemon."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from daemon_helpers import DaemonProcess
from prometheus_client.parser import text_string_to_metric_families

from carbonwatch.cli.daemon import daemon_cmd
from carbonwatch.config import Settings
from carbonwatch.daemon.metrics import DaemonCollector, Health, MetricTotals, render
from carbonwatch.daemon.openapi import DOCUMENT
from carbonwatch.fleet import queries
from carbonwatch.identity import identity_from_env

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "carbonwatch-rules.yml"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool is not installed (Debian's prometheus package ships it)"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def daemon_flags() -> set[str]:
    return {opt for p in daemon_cmd.params for opt in p.opts}


def exposed_metrics() -> set[str]:
    """Every sample name the daemon's /metrics can carry (a priced node, one job, one call)."""
    totals = MetricTotals()
    totals.add_energy([(("j1", "train", "m", "training", "gpu0"), 1.0, 1.0, 1.0)])
    totals.add_calls({"m": 1})
    health = Health(
        up=True, collector_errors=0, device_power_w={"gpu0": 1.0}, device_age_s={"gpu0": 1.0}
    )
    text = render(DaemonCollector(totals, lambda: health, "n", "USD")).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def flags_in(command: str) -> set[str]:
    return {w.split("=")[0] for w in shlex.split(command) if w.startswith("--")}


def api_paths() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in DOCUMENT["paths"].items() for method in ops}


# --- systemd ---------------------------------------------------------------------------------


def test_systemd_unit_runs_the_daemon_with_flags_it_has_and_a_writable_store():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read(DEPLOY / "systemd" / "carbonwatch.service")
    service = unit["Service"]
    words = shlex.split(service["ExecStart"])
    assert words[1:3] == ["daemon", "--config"] and words[0].endswith("/carbonwatch")
    assert flags_in(service["ExecStart"]) <= daemon_flags()
    db = Path(words[words.index("--db") + 1])
    assert str(db.parent) in service["ReadWritePaths"].split()
    assert service["KillSignal"] == "SIGTERM" and "PrivateDevices" not in service  # NVML: /dev
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    config = DEPLOY / "systemd" / "config.toml"
    assert str(config.name) in service["ExecStart"]
    settings = tomllib.loads(config.read_text())
    assert set(settings) <= set(Settings.__dataclass_fields__)
    assert "node" in config.read_text()  # the node label is a setting, shown commented out


# --- Kubernetes ------------------------------------------------------------------------------


def _k8s() -> dict[str, dict]:
    out = {}
    for name in ("daemonset.yaml", "podmonitor.yaml", "prometheusrule.yaml"):
        for doc in docs(DEPLOY / "kubernetes" / name):
            out[doc["kind"]] = doc
    return out


def test_daemonset_has_host_pid_the_nvidia_runtime_and_a_persistent_store():
    objs = _k8s()
    ds = objs["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["runtimeClassName"] == "nvidia"
    (container,) = pod["containers"]
    assert "command" not in container  # the image's entrypoint, `carbonwatch`; no shell
    assert 'ENTRYPOINT ["carbonwatch"]' in (DEPLOY / "Dockerfile").read_text()
    assert container["args"][0] == "daemon"
    command = shlex.join(container["args"])
    assert flags_in(command) <= daemon_flags()
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["CARBONWATCH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "carbonwatch-token"
    # The node label is the Kubernetes node name, through the `node` setting's variable.
    assert env["CARBONWATCH_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert all(n.removeprefix("CARBONWATCH_").lower() in Settings.__dataclass_fields__
               for n in env if n.startswith("CARBONWATCH_"))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "--db " + mounts["store"] in command and "hostPath" in volumes["store"]
    for key, value in objs["ConfigMap"]["data"].items():  # settings the daemon knows
        assert key.startswith("CARBONWATCH_")
        assert key.removeprefix("CARBONWATCH_").lower() in Settings.__dataclass_fields__
        assert isinstance(value, str)


def test_metrics_service_and_pod_monitor_reach_the_daemons_port():
    objs = _k8s()
    pod_template = objs["DaemonSet"]["spec"]["template"]
    labels = pod_template["metadata"]["labels"]
    (container,) = pod_template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = objs["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert ports[port["targetPort"]] == port["port"]
    for notes in (service["metadata"]["annotations"], pod_template["metadata"]["annotations"]):
        assert notes["prometheus.io/scrape"] == "true"
        assert int(notes["prometheus.io/port"]) == ports["http"]
        assert notes["prometheus.io/path"] == "/metrics"
    monitor = objs["PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is False  # the daemon's labels never collide with targets
    assert endpoint["authorization"]["credentials"]["name"] == "carbonwatch-token"


def test_the_prometheus_rule_object_carries_the_shipped_rules_file():
    assert _k8s()["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())
    script = subprocess.run(  # noqa: S603
        [sys.executable, str(ROOT / "scripts" / "prometheusrule.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert script.stdout == (DEPLOY / "kubernetes" / "prometheusrule.yaml").read_text()


# --- Prometheus ------------------------------------------------------------------------------


def _rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r.get("record") or r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def test_rules_and_fleet_queries_use_only_metrics_the_daemon_exposes():
    exposed = exposed_metrics() | {"up"}
    recorded = {name for name, _ in _rule_exprs() if ":" in name}
    for name, expr in _rule_exprs():
        for metric in re.findall(r"\b(carbonwatch_[a-z_]+)\b(?![:a-z_])", expr):
            assert metric in exposed, f"{name}: {metric} is not on the daemon's /metrics"
        for used in re.findall(r"\b([a-z_]+:[a-z_]+:[a-z0-9_]+)\b", expr):
            assert used in recorded, f"{name}: {used} is recorded by no rule"
    for metric in (queries.ENERGY, queries.EMISSIONS, queries.COST, queries.CALLS, queries.UP):
        assert metric in exposed
    kinds = {"node", "model", "phase"}
    for metric in ("energy_joules", "emissions_grams"):
        assert {f"{k}:carbonwatch_{metric}:rate5m" for k in kinds} <= recorded
        assert {f"{k}:carbonwatch_{metric}:sum" for k in kinds} <= recorded


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_accepts_the_rules_and_the_scrape_config():
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)],  # noqa: S603
        capture_output=True,
        text=True,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run(  # noqa: S603
        [
            PROMTOOL,
            "check",
            "config",
            "--syntax-only",
            str(DEPLOY / "prometheus" / "prometheus.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_scrape_configs_keep_honor_labels_off_and_reference_the_rules_file():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]
    k8s = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus-scrape.yaml").read_text())
    for job in config["scrape_configs"] + k8s["scrape_configs"]:
        assert not job.get("honor_labels", False)
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job["authorization"]["type"] == "Bearer"
        # a `node` target label would push the daemon's own to `exported_node`
        assert all(r.get("target_label") != "node" for r in job.get("relabel_configs", []))


# --- Slurm -----------------------------------------------------------------------------------

SLURM = DEPLOY / "slurm"


def test_slurm_scripts_use_endpoints_of_the_openapi_document():
    text = "\n".join(p.read_text() for p in SLURM.glob("*.sh"))
    calls = re.findall(r'api (GET|POST) "?(/v1/[^" ?]*)', text)
    assert {m for m, _ in calls} == {"GET", "POST"}
    for method, path in calls:
        path = re.sub(r"\$\w+", "{id}", path)
        assert (method, path) in api_paths(), f"{method} {path} is not in the OpenAPI document"


@pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("curl")),
    reason="the Slurm scripts need bash and curl",
)
def test_slurm_prolog_opens_the_job_ranks_join_it_and_the_epilog_ends_it(tmp_path):
    token = tmp_path / "token"
    token.write_text("slurm-test-token\n")
    with DaemonProcess(
        tmp_path / "cw.db", "--backend", "none", env={"CARBONWATCH_TOKEN": "slurm-test-token"}
    ) as daemon:
        env = {
            "PATH": "/usr/bin:/bin",
            "CARBONWATCH_URL": daemon.url,
            "CARBONWATCH_TOKEN_FILE": str(token),
            "CARBONWATCH_SLURM_ENV": "/nonexistent",
            "CARBONWATCH_SLURM_STATE": str(tmp_path / "state"),
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NAME": "llm-pretrain",
            "SLURM_JOB_USER": "alice",
        }

        def script(name: str, **extra: str) -> None:
            done = subprocess.run(
                [str(SLURM / name)],
                env={**env, **extra},  # noqa: S603
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0 and not done.stderr, done.stderr

        def job(job_id: str) -> dict:
            return daemon.request("GET", f"/v1/jobs/{job_id}", token="slurm-test-token")[1]

        script("prolog.sh")
        job_id = (tmp_path / "state" / "4242").read_text().strip()
        opened = job(job_id)
        assert (opened["status"], opened["name"], opened["kind"]) == (
            "running",
            "llm-pretrain",
            "training",
        )
        # A rank's `carbonwatch run` computes the same identity and merges into the job.
        identity = identity_from_env({"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0"}, None)
        assert identity.key == opened["identity"] == "slurm:4242"
        rank = subprocess.Popen(["sleep", "30"])  # noqa: S603, S607
        try:
            status, merged = daemon.request(
                "POST",
                "/v1/jobs",
                {"name": "rank0", "kind": "training", "pid": rank.pid, "identity": identity.key},
                token="slurm-test-token",
            )
            assert (status, merged) == (200, {"id": job_id, "merged": True})
            script("epilog.sh", SLURM_JOB_EXIT_CODE="256")  # wait status: exit code 1
        finally:
            rank.kill()
            rank.wait()
        ended = job(job_id)
        assert (ended["status"], ended["exit_code"]) == ("failed", 1)
        assert rank.pid in ended["pids"] and ended["tags"]["ended_by"] == "epilog"
        assert not (tmp_path / "state" / "4242").exists()

        # Without the prolog's state file the epilog finds the job by its identity.
        script("prolog.sh", SLURM_JOB_ID="4243")
        (tmp_path / "state" / "4243").unlink()
        script("epilog.sh", SLURM_JOB_ID="4243")
        status, body = daemon.request("GET", "/v1/jobs", token="slurm-test-token")
        statuses = {j["identity"]: j["status"] for j in body["jobs"]}
        assert statuses == {"slurm:4242": "failed", "slurm:4243": "finished"}


def test_slurm_scripts_never_fail_the_job_when_no_daemon_answers(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "CARBONWATCH_URL": "http://127.0.0.1:9",
        "CARBONWATCH_SLURM_ENV": "/nonexistent",
        "CARBONWATCH_TOKEN_FILE": "/nonexistent",
        "CARBONWATCH_SLURM_STATE": str(tmp_path),
        "SLURM_JOB_ID": "1",
    }
    for name in ("prolog.sh", "epilog.sh"):
        done = subprocess.run(
            [str(SLURM / name)],
            env=env,
            capture_output=True,  # noqa: S603
            text=True,
            timeout=30,
        )
        assert done.returncode == 0


# --- docs ------------------------------------------------------------------------------------


def test_every_deploy_file_is_described_in_the_deploy_guide():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            assert str(path.relative_to(ROOT)) in guide, f"{path} is not in docs/deploy.md"
