"""The deployment files parse, and what they reference exists: `carbonwatch daemon` flags, API
endpoints in the daemon's OpenAPI document, metric names the daemon exposes. The Slurm scripts
open and close a job on a real daemon."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
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


SYSTEMD = DEPLOY / "systemd"
UDEV_RULE = DEPLOY / "udev" / "90-carbonwatch-rapl.rules"


def _unit(*paths: Path) -> configparser.ConfigParser:
    """A unit with its drop-ins applied in order (later files win, as systemd reads them)."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    for path in paths:
        unit.read(path)
    return unit


def test_systemd_unit_runs_unprivileged_and_sandboxed_by_default():
    service = _unit(SYSTEMD / "carbonwatch.service")["Service"]
    assert service["User"] == service["Group"] == "carbonwatch"
    # No capability to hold or gain, nothing to escalate to.
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "PrivateTmp": "yes", "StateDirectory": "carbonwatch",
                "StateDirectoryMode": "0700", "UMask": "0077", "RestrictSUIDSGID": "yes"}
    assert {k: service.get(k) for k in expected} == expected
    assert "/var/lib/carbonwatch" in service["ReadWritePaths"].split()
    assert 1024 < int(service["LimitNOFILE"]) <= 65536
    # What would break measuring: NVML needs /dev/nvidia*, attribution every user's /proc.
    assert "PrivateDevices" not in service and "ProtectProc" not in service
    sysusers = (SYSTEMD / "carbonwatch.sysusers.conf").read_text()
    assert re.search(r"^u carbonwatch ", sysusers, flags=re.M)  # creates the user and group


def test_the_scheduler_drop_in_is_root_with_only_the_capabilities_launching_needs():
    base = _unit(SYSTEMD / "carbonwatch.service")["Service"]
    service = _unit(SYSTEMD / "carbonwatch.service", SYSTEMD / "carbonwatch-scheduler.conf")
    service = service["Service"]
    assert service["User"] == "root"
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_SETUID", "CAP_SETGID"} <= caps
    assert caps <= {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_READ_SEARCH"}
    # Ambient capabilities would pass on to every job; uid 0 -> the user's uid clears them.
    assert service["AmbientCapabilities"] == "" and service["NoNewPrivileges"] == "yes"
    # The rest of the default unit's sandbox stays.
    for key in ("ProtectKernelModules", "RestrictSUIDSGID", "StateDirectoryMode", "LimitNOFILE"):
        assert service[key] == base[key]


SD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SD_ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")
def test_systemd_accepts_the_unit_and_the_drop_in(tmp_path):
    """systemd's own parser: every key known, and the default unit's exposure rating low."""
    unit = tmp_path / "carbonwatch.service"
    # verify checks that the program exists: point ExecStart at one that does.
    text = (SYSTEMD / "carbonwatch.service").read_text()
    unit.write_text(text.replace("/opt/carbonwatch/venv/bin/carbonwatch", sys.executable))
    env = {"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"}

    def analyze(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SD_ANALYZE, *args], capture_output=True, text=True,  # noqa: S603
                              env=env, timeout=60)

    verified = analyze("verify", str(unit))
    assert "Unknown" not in verified.stderr and "Failed" not in verified.stderr, verified.stderr
    security = analyze("security", "--offline=yes", str(unit))
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 4.0  # measured 3.5 with systemd 252: "OK"
    drop_in = tmp_path / "carbonwatch.service.d"
    drop_in.mkdir()
    shutil.copy(SYSTEMD / "carbonwatch-scheduler.conf", drop_in / "scheduler.conf")
    env["SYSTEMD_UNIT_PATH"] = f"{tmp_path}:"
    verified = analyze("verify", "carbonwatch.service")
    assert "Unknown" not in verified.stderr and "Failed" not in verified.stderr, verified.stderr


def _env_file() -> dict[str, str]:
    lines = (SYSTEMD / "carbonwatch.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_the_env_file_ships_no_usable_token_and_the_daemon_refuses_to_start_with_it(tmp_path):
    env = _env_file()
    assert {"CARBONWATCH_TOKEN", "CARBONWATCH_ADMIN_TOKEN"} <= set(env)
    assert all(value == "" for name, value in env.items() if "TOKEN" in name)
    assert all(n.removeprefix("CARBONWATCH_").lower() in Settings.__dataclass_fields__
               for n in env)
    # As installed: the unit's host, this file's settings. The daemon must not come up open.
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none", "--host", "0.0.0.0", env=env)
    done = daemon.run_to_exit()
    assert done.returncode == 2 and "without a token" in done.stderr, done.stderr


def _powercap(root: Path) -> Path:
    """One RAPL package as the kernel shows it since CVE-2020-8694: energy_uj root-only."""
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True)
    for name, value, mode in (("name", "package-0", 0o444), ("energy_uj", "1000000", 0o400),
                              ("max_energy_range_uj", "262143328850", 0o444)):
        (zone / name).write_text(value + "\n")
        (zone / name).chmod(mode)
    return zone


def _cpu_device(daemon: DaemonProcess) -> dict:
    status, body = daemon.request("GET", "/v1/devices")
    assert status == 200, body
    (cpu,) = [d for d in body["devices"] if d["class"] == "cpu"]
    return cpu


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root (to own the fake sysfs files) and setpriv (util-linux)")
def test_an_unprivileged_daemon_reads_rapl_through_the_udev_rule():
    """The daemon as nobody:nogroup over a powercap tree whose energy_uj is root-only, as the
    kernel has it: CPU energy is modelled. The udev rule's own commands applied to the tree (the
    group being the test's stand-in for carbonwatch): the same daemon measures it with RAPL, and
    the counter is still not world-readable."""
    rule = UDEV_RULE.read_text()
    assert re.search(r'^SUBSYSTEM=="powercap", KERNEL=="intel-rapl\*", ACTION=="add"', rule, re.M)
    commands = re.findall(r'RUN\+="([^"]+)"', rule)
    assert commands and all("/sys%p/energy_uj" in c for c in commands)
    assert all(" carbonwatch " in c for c in commands if "chgrp" in c)
    # Outside pytest's tmp_path: its folders are 0700, closed to nobody.
    base = Path(tempfile.mkdtemp(prefix="cw-unprivileged-"))
    try:
        base.chmod(0o755)
        zone = _powercap(base / "powercap")
        store = base / "store"
        store.mkdir(mode=0o700)
        os.chown(store, 65534, 65534)
        env = {"CARBONWATCH_RAPL_ROOT": str(base / "powercap"), "XDG_CONFIG_HOME": str(base),
               "XDG_DATA_HOME": str(base)}

        def daemon() -> DaemonProcess:
            return _Unprivileged(store / "cw.db", "--backend", "none", env=env).start()

        d = daemon()
        try:
            assert _cpu_device(d)["provenance"] != "measured"
        finally:
            d.stop()
        for command in commands:
            words = shlex.split(command.replace("/sys%p", str(zone)))
            words = ["nogroup" if w == "carbonwatch" else w for w in words]
            subprocess.run(words, check=True, timeout=30)  # noqa: S603
        mode = (zone / "energy_uj").stat().st_mode
        assert mode & 0o040 and not mode & 0o004  # group-readable, never world-readable
        d = daemon()
        try:
            cpu = _cpu_device(d)
            assert (cpu["provenance"], cpu["method"]) == ("measured", "rapl"), cpu
        finally:
            assert d.stop() == 0
    finally:
        shutil.rmtree(base)


class _Unprivileged(DaemonProcess):
    def command(self) -> list[str]:
        drop = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        return [*drop, *super().command()]


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


def test_daemonset_runs_the_daemon_non_root_read_only_and_without_capabilities():
    pod = _k8s()["DaemonSet"]["spec"]["template"]["spec"]
    pod_ctx = pod["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx.get("runAsUser", pod_ctx["runAsUser"]) != 0 and ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    # The image's own user is the pod's: runAsNonRoot can check it (numeric), files agree.
    user = re.search(r"^USER (\d+):(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert user and (int(user[1]), int(user[2])) == (pod_ctx["runAsUser"], pod_ctx["runAsGroup"])
    # The one step as uid 0 hands the store's hostPath over, with no other capability.
    for init in pod.get("initContainers", []):
        init_ctx = init["securityContext"]
        assert init_ctx["allowPrivilegeEscalation"] is False
        assert init_ctx["capabilities"]["drop"] == ["ALL"]
        assert set(init_ctx["capabilities"].get("add", [])) <= {"CHOWN", "FOWNER"}
        assert f"{pod_ctx['runAsUser']}:{pod_ctx['runAsGroup']}" in " ".join(init["command"])
        assert {m["name"] for m in init["volumeMounts"]} == {"store"}


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
