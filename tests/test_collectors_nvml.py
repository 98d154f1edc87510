"""NVML without a GPU: importing does not initialise it, absence is a clear error, and NVML error
codes map to carbonwatch errors. (The device checks themselves need a GPU machine.)"""

import subprocess
import sys

import pynvml
import pytest

from carbonwatch.errors import DeviceError, DeviceLost, DeviceTimeout, NotSupported


def _nvml_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_importing_the_backend_does_not_initialise_nvml():
    code = (
        "import pynvml, carbonwatch.collectors.nvml, carbonwatch.collectors.detect;"
        "print(pynvml.nvmlLib is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_importing_carbonwatch_collectors_does_not_import_pynvml():
    code = (
        "import sys, carbonwatch.collectors.gpu, carbonwatch.collectors.trace_gpu;"
        "print('pynvml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.skipif(_nvml_present(), reason="this machine has an NVIDIA driver")
def test_missing_driver_is_a_clear_device_error():
    from carbonwatch.collectors.nvml import NvmlBackend

    with pytest.raises(DeviceError, match="NVML unavailable: no NVIDIA driver") as err:
        NvmlBackend()
    assert not isinstance(err.value, NotSupported | DeviceLost | DeviceTimeout)
    assert "--backend none" in str(err.value)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (pynvml.NVML_ERROR_NOT_SUPPORTED, NotSupported),
        (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, NotSupported),
        (pynvml.NVML_ERROR_GPU_IS_LOST, DeviceLost),
        (pynvml.NVML_ERROR_TIMEOUT, DeviceTimeout),
        (pynvml.NVML_ERROR_UNKNOWN, DeviceError),
    ],
)
def test_nvml_errors_map_to_carbonwatch_errors(code, expected):
    from carbonwatch.collectors.nvml import map_nvml_error

    err = map_nvml_error(pynvml.NVMLError(code), "GPU 0: energy counter")
    assert type(err) is expected
    assert str(err).startswith("GPU 0: energy counter:") and f"NVML error {code}" in str(err)


@pytest.mark.skipif(
    not _nvml_present(),
    reason="needs real NVML: no NVIDIA driver (libnvidia-ml.so.1) answers nvmlInit on this machine",
)
def test_real_nvml_gpus_are_measured_by_their_energy_counter():
    """Runs only on a machine with an NVIDIA driver: every GPU this process may open is measured
    and each interval's energy is the counter delta read independently through pynvml."""
    import time

    from carbonwatch.collectors.gpu import GpuCollector
    from carbonwatch.collectors.nvml import NvmlBackend

    backend = NvmlBackend()
    try:
        assert backend.device_count() >= 1, backend.notes
        collector = GpuCollector(backend)
        first = backend.device(0)
        handle = pynvml.nvmlDeviceGetHandleByIndex(first.index)
        counter0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        collector.collect(time.time())
        for _ in range(20):
            time.sleep(0.1)
            collector.poll(time.time())
        intervals = collector.collect(time.time())
        counter1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        mine = [i for i in intervals if i.device_id == f"gpu{first.index}"]
        assert len(mine) == 1 and mine[0].energy_j > 0
        # the collector's reads lie inside ours: its delta is at most ours (counter ticks ~100 ms)
        assert mine[0].energy_j <= (counter1 - counter0) / 1000 + 1e-9
        assert isinstance(first.compute_pids(), list)
        assert isinstance(first.process_utilization(0), list)
    finally:
        backend.close()
