"""NVIDIA GPUs through NVML. The only module that imports ``pynvml``.

``nvmlInit()`` runs in :class:`NvmlBackend`'s constructor, never at import, so importing carbonwatch
on a machine without a driver costs nothing. Every exception a ``pynvml`` call raises is mapped to a
carbonwatch error here, not only ``NVMLError``: nvidia-ml-py raises ``NVMLLibraryMismatchError``
(a plain ``Exception``) from its unversioned calls on a driver without the ``_v3`` symbol, and a
half-loaded library can raise ctypes errors. A collector that only ever sees DeviceError closes
every interval, whatever the driver does.

The backend takes the ``pynvml`` module as a parameter (default: the real one), the seam the tests
use to drive this code through a fake with nvidia-ml-py's error classes and codes.

Devices are opened one by one: a GPU that refuses access (``NO_PERMISSION``: a Slurm or container
cgroup that gives this node's other GPUs to other jobs) is skipped with a note, a GPU lost at
start-up is listed as lost, and every other GPU is measured.

MIG: with MIG mode on, NVML lists processes per MIG instance (through MIG device handles) and
offers no per-process utilisation, while the energy counter stays per physical GPU. Processes are
therefore read per instance so that they are seen, and the GPU's energy is split among all its
processes by equal weight, per GPU and not per instance; the device's ``detail`` says so.
MPS: clients of an MPS server are listed by ``nvmlDeviceGetMPSComputeRunningProcesses``; they are
counted beside the compute processes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pynvml

from carbonwatch.collectors.gpu import ProcessSample
from carbonwatch.errors import DeviceError, DeviceLost, DeviceTimeout, NotSupported

log = logging.getLogger(__name__)
T = TypeVar("T")

# NVML error codes are the C library's (nvml.h), the same in every pynvml release.
NVML_SUCCESS = 0
NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
NVML_ERROR_NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
NVML_DEVICE_MIG_ENABLE = 1


class NoPermission(DeviceError):
    """NVML refused access to this device (``NVML_ERROR_NO_PERMISSION``)."""


# NVML error code -> the carbonwatch error it means. FUNCTION_NOT_FOUND is an old driver lacking the
# call, which for a caller is the same as the device not supporting it.
_ERROR_MAP: dict[int, type[DeviceError]] = {
    pynvml.NVML_ERROR_NOT_SUPPORTED: NotSupported,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: NotSupported,
    pynvml.NVML_ERROR_GPU_IS_LOST: DeviceLost,
    pynvml.NVML_ERROR_TIMEOUT: DeviceTimeout,
    pynvml.NVML_ERROR_NO_PERMISSION: NoPermission,
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

MIG_DETAIL = (
    "MIG mode on: processes are read per MIG instance, but the energy counter is per GPU and NVML "
    "gives no per-process utilisation under MIG, so this GPU's energy is split among all the "
    "processes on all its instances by equal weight (per GPU, not per instance)"
)


def map_nvml_error(exc: BaseException, what: str = "NVML call") -> DeviceError:
    """The carbonwatch error for an NVML error (the message keeps NVML's code for support)."""
    code = getattr(exc, "value", None)
    try:
        text = str(exc)
    except Exception:  # str() may call into the library, which might be the thing that is broken
        text = "NVML error"
    cls = _ERROR_MAP.get(code, DeviceError) if isinstance(code, int) else DeviceError
    return cls(f"{what}: {text} (NVML error {code})")


class _Never(Exception):
    """Stands in for an exception class a pynvml release does not define: never raised."""


@contextmanager
def _mapped(nv: Any, what: str) -> Iterator[None]:
    """Run pynvml calls; whatever they raise leaves as a carbonwatch DeviceError."""
    nvml_error = getattr(nv, "NVMLError", _Never)
    mismatch = getattr(nv, "NVMLLibraryMismatchError", _Never)
    try:
        yield
    except DeviceError:
        raise
    except nvml_error as exc:
        raise map_nvml_error(exc, what) from None
    except mismatch as exc:
        raise NotSupported(f"{what}: {exc}") from None
    except Exception as exc:  # ctypes or a half-loaded library: never let it reach the collector
        raise DeviceError(f"{what}: unexpected {type(exc).__name__}: {exc}") from None


def _nvml_code(nv: Any, exc: BaseException) -> int | None:
    if isinstance(exc, getattr(nv, "NVMLError", _Never)):
        code = getattr(exc, "value", None)
        return code if isinstance(code, int) else None
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlDevice:
    """One NVML device handle behind the GpuDevice protocol. ``nvml`` is the pynvml module."""

    lost = False

    def __init__(self, index: int, nvml: Any = None) -> None:
        self._nv = nv = nvml if nvml is not None else pynvml
        self._index = index
        with _mapped(nv, f"GPU {index}: get handle"):
            self._handle = nv.nvmlDeviceGetHandleByIndex(index)
            self._uuid = _text(nv.nvmlDeviceGetUUID(self._handle))
            self._name = _text(nv.nvmlDeviceGetName(self._handle))
        self._mig = self._mig_enabled()  # read once: changing MIG mode needs a GPU reset
        self.detail = MIG_DETAIL if self._mig else ""
        self._mps_offered = True
        # The unversioned process calls (which use _v3) until the driver proves to lack _v3.
        self._process_calls: dict[str, str] = {
            "compute": "nvmlDeviceGetComputeRunningProcesses",
            "mps": "nvmlDeviceGetMPSComputeRunningProcesses",
        }

    @property
    def index(self) -> int:
        return self._index

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def name(self) -> str:
        return self._name

    @property
    def mig_enabled(self) -> bool:
        return self._mig

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        with _mapped(self._nv, f"GPU {self._index}: {what}"):
            return fn(self._handle, *args)

    def _mig_enabled(self) -> bool:
        try:
            with _mapped(self._nv, f"GPU {self._index}: MIG mode"):
                current = self._nv.nvmlDeviceGetMigMode(self._handle)[0]
                return bool(current == NVML_DEVICE_MIG_ENABLE)
        except DeviceError:
            return False  # not a MIG-capable GPU (NOT_SUPPORTED), or an old driver

    def total_energy_mj(self) -> int:
        return int(self._call("energy counter", self._nv.nvmlDeviceGetTotalEnergyConsumption))

    def power_mw(self) -> int:
        return int(self._call("power", self._nv.nvmlDeviceGetPowerUsage))

    def utilization_pct(self) -> float:
        return float(self._call("utilization", self._nv.nvmlDeviceGetUtilizationRates).gpu)

    def process_utilization(self, since_us: int) -> list[ProcessSample]:
        if self._mig:
            return []  # NVML offers no per-process utilisation under MIG: compute pids stand in
        what = f"GPU {self._index}: process utilization"
        with _mapped(self._nv, what):
            try:
                samples = self._nv.nvmlDeviceGetProcessUtilization(self._handle, since_us)
            except self._nv.NVMLError as exc:
                # NOT_FOUND is NVML's way of saying: no samples newer than since_us. pynvml raises
                # NVMLError(NVML_SUCCESS) when the size query itself succeeds with no samples.
                if getattr(exc, "value", None) in (NVML_ERROR_NOT_FOUND, NVML_SUCCESS):
                    return []
                raise
            return [
                ProcessSample(int(s.pid), int(s.timeStamp), float(s.smUtil), float(s.memUtil))
                for s in samples
            ]

    def compute_pids(self) -> list[int]:
        """Compute processes and MPS clients on the GPU (per MIG instance when MIG is on)."""
        handles = self._mig_handles() if self._mig else [self._handle]
        pids: set[int] = set()
        failures: list[DeviceError] = []
        for handle in handles:
            try:
                pids.update(self._processes("compute", handle))
            except DeviceError as exc:
                failures.append(exc)
                continue
            if self._mps_offered:
                try:
                    pids.update(self._processes("mps", handle))
                except NotSupported:
                    self._mps_offered = False  # the driver lacks the call: stop asking
                except DeviceError:
                    pass  # MPS not answering now: its clients are missed this time only
        if failures and len(failures) == len(handles):
            raise failures[0]
        return sorted(pids)

    def _processes(self, kind: str, handle: Any) -> list[int]:
        nv = self._nv
        name = self._process_calls[kind]
        with _mapped(nv, f"GPU {self._index}: {kind} processes"):
            try:
                procs = getattr(nv, name)(handle)
            except getattr(nv, "NVMLLibraryMismatchError", _Never):
                # The driver lacks the _v3 symbol the unversioned call uses: _v2 from now on.
                v2 = name.removesuffix("_v2") + "_v2"
                log.info("GPU %d: driver lacks %s_v3; using %s", self._index, name, v2)
                self._process_calls[kind] = v2
                procs = getattr(nv, v2)(handle)
            return [int(p.pid) for p in procs]

    def _mig_handles(self) -> list[Any]:
        """Handles of the MIG instances that exist now (instances come and go without a reset)."""
        nv = self._nv
        with _mapped(nv, f"GPU {self._index}: MIG devices"):
            count = nv.nvmlDeviceGetMaxMigDeviceCount(self._handle)
            out = []
            for i in range(count):
                try:
                    out.append(nv.nvmlDeviceGetMigDeviceHandleByIndex(self._handle, i))
                except nv.NVMLError:
                    continue  # empty slot (NOT_FOUND)
            return out

    def mig_uuids(self) -> list[str]:
        """UUIDs of this GPU's MIG instances ([] when MIG is off or unsupported)."""
        if not self._mig:
            return []
        try:
            with _mapped(self._nv, f"GPU {self._index}: MIG UUIDs"):
                return [_text(self._nv.nvmlDeviceGetUUID(h)) for h in self._mig_handles()]
        except DeviceError:
            return []


class LostNvmlDevice:
    """A GPU that NVML lists but that was lost at start-up: listed, never measured."""

    lost = True

    def __init__(self, index: int, reason: DeviceLost) -> None:
        self._index = index
        self._reason = reason
        self.detail = f"device lost at start-up: {reason}"

    @property
    def index(self) -> int:
        return self._index

    @property
    def uuid(self) -> str:
        return ""  # unknown: NVML could not be asked

    @property
    def name(self) -> str:
        return f"GPU {self._index} (lost)"

    def _lost(self) -> DeviceLost:
        return DeviceLost(str(self._reason))

    def total_energy_mj(self) -> int:
        raise self._lost()

    def power_mw(self) -> int:
        raise self._lost()

    def utilization_pct(self) -> float:
        raise self._lost()

    def process_utilization(self, since_us: int) -> list[ProcessSample]:
        raise self._lost()

    def compute_pids(self) -> list[int]:
        raise self._lost()

    def mig_uuids(self) -> list[str]:
        return []


class NvmlBackend:
    """Every GPU NVML lets this process open. Raises DeviceError with a plain-language reason when
    NVML itself is unusable; one GPU that cannot be opened only costs that GPU (see ``notes``).

    ``nvml`` is the pynvml module to use (default: nvidia-ml-py's)."""

    # NVML's init is reference counted per process; guard our own pairing of init and shutdown.
    _lock = threading.Lock()

    def __init__(self, nvml: Any = None) -> None:
        self._nv = nv = nvml if nvml is not None else pynvml
        self.notes: list[str] = []
        with self._lock, _mapped(nv, "NVML unavailable: nvmlInit"):
            try:
                nv.nvmlInit()
            except nv.NVMLError as exc:
                hint = _INIT_HINTS.get(_nvml_code(nv, exc) or -1)
                if hint is None:
                    raise
                raise DeviceError(f"NVML unavailable: {hint}") from None
        self._closed = False
        try:
            with _mapped(nv, "NVML: device count"):
                count = nv.nvmlDeviceGetCount()
                self.driver_version = _text(nv.nvmlSystemGetDriverVersion())
            self._devices: list[NvmlDevice | LostNvmlDevice] = []
            for i in range(count):
                self._open(i)
        except DeviceError:
            self.close()
            raise

    def _open(self, index: int) -> None:
        try:
            self._devices.append(NvmlDevice(index, self._nv))
            return
        except DeviceLost as exc:
            self._devices.append(LostNvmlDevice(index, exc))
            note = f"GPU {index}: lost at start-up, not measured ({exc})"
        except NoPermission as exc:
            note = (
                f"GPU {index}: skipped, NVML refused access ({exc}); a Slurm or container cgroup "
                "may give this GPU to another job"
            )
        except DeviceError as exc:
            note = f"GPU {index}: skipped, could not be opened ({exc})"
        self.notes.append(note)
        log.warning("%s", note)

    def device_count(self) -> int:
        return len(self._devices)

    def device(self, index: int) -> NvmlDevice | LostNvmlDevice:
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
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()
