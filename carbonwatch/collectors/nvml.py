"""NVIDIA GPUs through NVML. The only module that imports ``pynvml``.

``nvmlInit()`` runs in :class:`NvmlBackend`'s constructor, never at import, so importing carbonwatch
on a machine without a driver costs nothing. Every NVML error is mapped to a carbonwatch error here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pynvml

from carbonwatch.collectors.gpu import ProcessSample
from carbonwatch.errors import DeviceError, DeviceLost, DeviceTimeout, NotSupported

T = TypeVar("T")

# NVML error code -> the carbonwatch error it means. FUNCTION_NOT_FOUND is an old driver lacking the
# call, which for a caller is the same as the device not supporting it.
_ERROR_MAP: dict[int, type[DeviceError]] = {
    pynvml.NVML_ERROR_NOT_SUPPORTED: NotSupported,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: NotSupported,
    pynvml.NVML_ERROR_GPU_IS_LOST: DeviceLost,
    pynvml.NVML_ERROR_TIMEOUT: DeviceTimeout,
}

_INIT_HINTS: dict[int, str] = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: (
        "no NVIDIA driver: libnvidia-ml.so.1 was not found (install the NVIDIA driver, or run with "
        "--backend none for CPU/RAM only)"
    ),
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: (
        "no NVIDIA driver loaded: NVML is installed but the kernel driver is not running"
    ),
    pynvml.NVML_ERROR_NO_PERMISSION: "NVML refused access (no permission on /dev/nvidia*)",
}


def map_nvml_error(exc: pynvml.NVMLError, what: str = "NVML call") -> DeviceError:
    """The carbonwatch error for an NVML error (the message keeps NVML's code for support)."""
    code = getattr(exc, "value", None)
    try:
        text = str(exc)
    except Exception:  # str() may call into the library, which might be the thing that is broken
        text = "NVML error"
    cls = _ERROR_MAP.get(code, DeviceError) if isinstance(code, int) else DeviceError
    return cls(f"{what}: {text} (NVML error {code})")


@contextmanager
def _nvml(what: str) -> Iterator[None]:
    try:
        yield
    except pynvml.NVMLError as exc:
        raise map_nvml_error(exc, what) from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlDevice:
    """One NVML device handle behind the GpuDevice protocol."""

    def __init__(self, index: int) -> None:
        self._index = index
        with _nvml(f"GPU {index}: get handle"):
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._uuid = _text(pynvml.nvmlDeviceGetUUID(self._handle))
            self._name = _text(pynvml.nvmlDeviceGetName(self._handle))

    @property
    def index(self) -> int:
        return self._index

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def name(self) -> str:
        return self._name

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        with _nvml(f"GPU {self._index}: {what}"):
            return fn(self._handle, *args)

    def total_energy_mj(self) -> int:
        return int(self._call("energy counter", pynvml.nvmlDeviceGetTotalEnergyConsumption))

    def power_mw(self) -> int:
        return int(self._call("power", pynvml.nvmlDeviceGetPowerUsage))

    def utilization_pct(self) -> float:
        return float(self._call("utilization", pynvml.nvmlDeviceGetUtilizationRates).gpu)

    def process_utilization(self, since_us: int) -> list[ProcessSample]:
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(self._handle, since_us)
        except pynvml.NVMLError as exc:
            if getattr(exc, "value", None) == pynvml.NVML_ERROR_NOT_FOUND:
                return []  # NVML's way of saying: no samples newer than since_us
            raise map_nvml_error(exc, f"GPU {self._index}: process utilization") from None
        return [
            ProcessSample(int(s.pid), int(s.timeStamp), float(s.smUtil), float(s.memUtil))
            for s in samples
        ]

    def compute_pids(self) -> list[int]:
        procs = self._call("compute processes", pynvml.nvmlDeviceGetComputeRunningProcesses)
        return [int(p.pid) for p in procs]

    def mig_uuids(self) -> list[str]:
        """UUIDs of this GPU's MIG instances ([] when MIG is off or unsupported)."""
        try:
            with _nvml(f"GPU {self._index}: MIG"):
                count = pynvml.nvmlDeviceGetMaxMigDeviceCount(self._handle)
                out = []
                for i in range(count):
                    try:
                        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(self._handle, i)
                    except pynvml.NVMLError:
                        continue  # empty slot
                    out.append(_text(pynvml.nvmlDeviceGetUUID(mig)))
                return out
        except DeviceError:
            return []


class NvmlBackend:
    """All GPUs NVML sees. Raises DeviceError with a plain-language reason when NVML is unusable."""

    # NVML's init is reference counted per process; guard our own pairing of init and shutdown.
    _lock = threading.Lock()

    def __init__(self) -> None:
        with self._lock:
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                code = getattr(exc, "value", None)
                hint = _INIT_HINTS.get(code) if isinstance(code, int) else None
                if hint is not None:
                    raise DeviceError(f"NVML unavailable: {hint}") from None
                raise map_nvml_error(exc, "NVML unavailable: nvmlInit") from None
        self._closed = False
        try:
            with _nvml("NVML: device count"):
                count = pynvml.nvmlDeviceGetCount()
                self.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
            self._devices = [NvmlDevice(i) for i in range(count)]
        except DeviceError:
            self.close()
            raise

    def device_count(self) -> int:
        return len(self._devices)

    def device(self, index: int) -> NvmlDevice:
        return self._devices[index]

    def mig_parents(self) -> dict[str, str]:
        """MIG uuid -> parent GPU uuid, for CUDA_VISIBLE_DEVICES resolution."""
        return {mig: d.uuid for d in self._devices for mig in d.mig_uuids()}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # shutting down a half-dead driver must not mask the original problem
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
