"""CUDA_VISIBLE_DEVICES -> the GPUs a `carbonwatch run` job is charged device-hours for, over the
NVML adapter driven by the fake pynvml (tests/fake_pynvml.py)."""

import sys

import fake_pynvml as fake
import pytest
from fake_pynvml import FakeGpu, FakeMig, make_module

from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.nvml import NvmlBackend
from carbonwatch.collectors.visible import gpus_given_to_job
from carbonwatch.config import Settings
from carbonwatch.grid.static import StaticSource, world_average
from carbonwatch.runner import run_command

U = [f"GPU-{i}{i}{i}{i}0000-1111-2222-3333-444455556666" for i in range(4)]
MIG = "MIG-aaaa1111-2222-3333-4444-555566667777"


def _collector(gpus):
    return GpuCollector(NvmlBackend(make_module(gpus)))


def _given(gpus, value, **env):
    collector = _collector(gpus)
    try:
        env = {**env, **({} if value is None else {"CUDA_VISIBLE_DEVICES": value})}
        return gpus_given_to_job([collector], env)
    finally:
        collector.close()


def _four():
    return [FakeGpu(u) for u in U]


def test_unset_means_unknown_and_the_energy_rule_decides():
    given = _given(_four(), None)
    assert given.device_ids is None and "unset" in given.how


@pytest.mark.parametrize(
    ("value", "ids"),
    [("2,0", {"gpu2", "gpu0"}), (U[3], {"gpu3"}), ("GPU-1111", {"gpu1"}), ("", set()),
     ("-1", set()), ("1,9", {"gpu1"})],
)
def test_indices_and_uuids_name_the_gpus(value, ids):
    given = _given(_four(), value)
    assert given.device_ids == ids
    assert f"CUDA_VISIBLE_DEVICES={value}" in given.how


def test_a_gpu_nvml_may_not_open_shifts_cudas_ordinals():
    gpus = _four()
    gpus[0].handle_error = fake.NVML_ERROR_NO_PERMISSION  # a cgroup gives GPU 0 to another job
    # CUDA numbers the three GPUs this job may open 0, 1, 2: ordinal 0 is physical GPU 1
    assert _given(gpus, "0,2").device_ids == {"gpu1", "gpu3"}


def test_a_mig_instance_charges_its_parent_gpu():
    gpus = _four()
    gpus[2].migs = [FakeMig(MIG)]
    assert _given(gpus, MIG).device_ids == {"gpu2"}


def test_indices_are_not_trusted_when_cuda_order_may_differ_from_nvmls():
    gpus = _four()
    gpus[3].name = "NVIDIA A100"
    given = _given(gpus, "0")
    assert given.device_ids is None and "CUDA_DEVICE_ORDER" in given.how
    assert _given(gpus, "0", CUDA_DEVICE_ORDER="PCI_BUS_ID").device_ids == {"gpu0"}
    assert _given(gpus, U[3]).device_ids == {"gpu3"}  # a UUID is never ambiguous
    gpus = _four()
    gpus[1].handle_error = fake.NVML_ERROR_GPU_IS_LOST
    assert _given(gpus, "1").device_ids is None


def test_a_run_is_charged_device_hours_for_the_gpus_it_was_given(monkeypatch):
    """A real child process, the real runner; the GPUs are the fake's (no GPU here). The job draws
    no GPU energy (the counters stand still), so only CUDA_VISIBLE_DEVICES can charge it."""
    collector = _collector(_four())
    settings = Settings(energy_price_per_kwh=0.2, gpu_hour_rate=3.6)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"1,{U[3]}")
    result = run_command(
        [sys.executable, "-c", "import time; time.sleep(0.3)"],
        settings=settings, collectors=[collector], intensity=StaticSource(world_average()),
        store=None,
    )
    assert result.exit_code == 0
    assert result.provenance["gpus_given"] == f"CUDA_VISIBLE_DEVICES=1,{U[3]}: gpu1, gpu3"
    # two GPUs for the run's duration at 3.6 per hour; the run drew no energy from them
    expected = 2 * result.duration_s / 3600 * 3.6
    assert result.cost == pytest.approx(expected, rel=1e-6)
    assert "device-hours" in result.provenance["cost"]

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    result = run_command(
        [sys.executable, "-c", "pass"], settings=settings, collectors=[collector],
        intensity=StaticSource(world_average()), store=None,
    )
    assert result.cost == 0.0  # unset: the GPUs it drew energy from, and it drew none
    assert "CUDA_VISIBLE_DEVICES unset" in result.provenance["gpus_given"]
    collector.close()
