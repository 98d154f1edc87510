"""A stand-in for nvidia-ml-py's ``pynvml`` module, for driving ``carbonwatch.collectors.nvml``
without a GPU. It copies the real module where carbonwatch depends on it (nvidia-ml-py 13.x,
``pynvml.py``):

- the ``NVML_ERROR_*`` codes (nvml.h), and ``NVMLError`` whose ``__new__`` turns
  ``NVMLError(code)`` into the ``NVMLError_<Name>`` subclass built by the same
  ``_extractNVMLErrorsAsClasses`` loop;
- ``NVMLLibraryMismatchError``, a plain ``Exception`` (not an NVMLError), raised by the unversioned
  ``nvmlDeviceGetComputeRunningProcesses`` / ``...MPSComputeRunningProcesses`` (the
  ``throwOnVersionMismatch`` decorator) when the driver lacks the ``_v3`` symbol;
- a symbol the driver lacks raises ``NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)``
  (``_nvmlGetFunctionPointer``);
- ``nvmlDeviceGetProcessUtilization`` raises ``NOT_FOUND`` when no sample is newer than the
  timestamp, ``NOT_SUPPORTED`` under MIG; every call before ``nvmlInit`` raises ``UNINITIALIZED``;
- ``nvmlDeviceGetSamples(handle, sampling_type, timeStamp)`` -> ``(value_type, [c_nvmlSample_t])``
  from the GPU's ``power_samples`` (mW) or ``util_samples`` (%), only those with a timestamp
  greater than ``timeStamp``; ``NOT_FOUND`` when there is none, ``NOT_SUPPORTED`` on a MIG handle,
  ``INVALID_ARGUMENT`` for another sampling type. The samples are ctypes structures laid out as
  pynvml's, so ``.sampleValue`` is a real union (``uiVal`` holds the value; ``dVal`` is garbage);
- MIG: ``nvmlDeviceGetMigMode`` -> ``[current, pending]``, ``NOT_SUPPORTED`` on a GPU without MIG;
  MIG handles by index (``NOT_FOUND`` for an empty slot); an unprivileged process list on the parent
  of a MIG GPU raises ``NO_PERMISSION`` (NVML gives per-instance lists through MIG handles only).

Each :func:`make_module` call returns a new module object (never put in ``sys.modules``) over its
own GPUs; the error classes are shared, as in the one real module. Tests change a
:class:`FakeGpu`'s fields between calls to move its counter, power and processes.
"""

from __future__ import annotations

import ctypes
import string
import sys
import types
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1
NVML_TEMPERATURE_GPU = 0
NVML_COMPUTEMODE_DEFAULT = 0

# nvmlValueType_t and nvmlSamplingType_t (only the two sampling types carbonwatch could use)
NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6
NVML_VALUE_TYPE_COUNT = 7
NVML_TOTAL_POWER_SAMPLES = 0
NVML_GPU_UTILIZATION_SAMPLES = 1

# How many samples a FakeGpu's buffers keep by default. The fake's choice, not NVML's: the real
# depth is what benchmarks/nvml_probe.py measures.
SAMPLE_BUFFER_DEPTH = 120


class c_nvmlValue_t(ctypes.Union):  # noqa: N801 - pynvml's name and layout
    _fields_ = [
        ("dVal", ctypes.c_double),
        ("uiVal", ctypes.c_uint),
        ("ulVal", ctypes.c_ulong),
        ("ullVal", ctypes.c_ulonglong),
        ("sllVal", ctypes.c_longlong),
        ("siVal", ctypes.c_int),
        ("usVal", ctypes.c_ushort),
    ]


class c_nvmlSample_t(ctypes.Structure):  # noqa: N801 - pynvml's name and layout
    _fields_ = [("timeStamp", ctypes.c_ulonglong), ("sampleValue", c_nvmlValue_t)]


class c_nvmlMemory_t(ctypes.Structure):  # noqa: N801 - pynvml's name and layout (bytes)
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]


class NVMLLibraryMismatchError(Exception):
    pass


class NVMLError(Exception):
    _valClassMapping: dict[int, type] = {}
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    def __new__(typ, value):  # noqa: N804 - as pynvml writes it
        if typ == NVMLError:
            typ = NVMLError._valClassMapping.get(value, typ)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return NVMLError._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return self.value == getattr(other, "value", None)

    __hash__ = Exception.__hash__


def _extractNVMLErrorsAsClasses() -> None:  # noqa: N802 - pynvml's name
    """Each NVML_ERROR_X gets an NVMLError_X subclass, exactly as pynvml builds them."""
    this_module = sys.modules[__name__]
    for err_name in [x for x in dir(this_module) if x.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(
            err_name.replace("NVML_ERROR_", ""), "_"
        ).replace("_", "")
        err_val = getattr(this_module, err_name)

        def gen_new(val: int) -> Callable[..., Any]:
            def new(typ: type, *args: Any) -> Any:
                return NVMLError.__new__(typ, val)

            return new

        new_error_class = type(class_name, (NVMLError,), {"__new__": gen_new(err_val)})
        new_error_class.__module__ = __name__
        setattr(this_module, class_name, new_error_class)
        NVMLError._valClassMapping[err_val] = new_error_class


_extractNVMLErrorsAsClasses()


def throwOnVersionMismatch(func: Callable[..., Any]) -> Callable[..., Any]:  # noqa: N802
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NVMLError_FunctionNotFound:  # type: ignore[name-defined]  # noqa: F821
            raise NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML lib "
                "version. Either use matching pyNVML and NVML lib versions or use a versioned "
                "function such as " + func.__name__ + "_v2"
            ) from None

    return wrapper


# --- the simulated driver ----------------------------------------------------------------------

# Symbols of a current driver; an old driver is this set minus the _v3 calls.
ALL_SYMBOLS = frozenset({
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses_v2",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    "nvmlDeviceGetProcessUtilization",
    "nvmlDeviceGetSamples",
    "nvmlDeviceGetTotalEnergyConsumption",
})
OLD_DRIVER_SYMBOLS = ALL_SYMBOLS - {
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
}


@dataclass
class FakeMig:
    uuid: str
    pids: list[int] = field(default_factory=list)
    mps_pids: list[int] = field(default_factory=list)


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H200"
    power_mw: int = 80_000
    energy_mj: int = 1_000_000_000
    util_pct: int = 0
    pids: list[int] = field(default_factory=list)  # compute processes
    mps_pids: list[int] = field(default_factory=list)  # MPS clients
    # (pid, timeStamp us, smUtil, memUtil), as nvmlDeviceGetProcessUtilization reports them
    samples: list[tuple[int, int, int, int]] = field(default_factory=list)
    handle_error: int | None = None  # code nvmlDeviceGetHandleByIndex raises (NO_PERMISSION, ...)
    lost: bool = False  # every call on the device raises GPU_IS_LOST
    migs: list[FakeMig] | None = None  # None: not MIG-capable; a list: MIG mode on
    raises: dict[str, BaseException] = field(default_factory=dict)  # function name -> exception
    # The driver's sample buffers read by nvmlDeviceGetSamples: (timeStamp us, value), oldest
    # first; power in mW, utilisation in %. A deque with a maxlen is a buffer of that depth: the
    # oldest samples fall out as tests append new ones (NVML's own depth is unknown).
    power_samples: deque[tuple[int, int]] = field(
        default_factory=lambda: deque(maxlen=SAMPLE_BUFFER_DEPTH))
    util_samples: deque[tuple[int, int]] = field(
        default_factory=lambda: deque(maxlen=SAMPLE_BUFFER_DEPTH))
    # What other tools (codecarbon's tracker) read beside the calls carbonwatch makes.
    memory_total_bytes: int = 143_771_369_472  # an H200's 141 GB HBM3e
    memory_used_bytes: int = 0
    temperature_c: int = 30
    power_limit_mw: int = 700_000

    def run(self, seconds: float, power_w: float) -> None:
        """The GPU draws power_w for seconds: the counter moves and power reads power_w."""
        self.energy_mj += round(power_w * seconds * 1000)
        self.power_mw = round(power_w * 1000)


@dataclass
class _Handle:
    gpu: FakeGpu
    mig: FakeMig | None = None


class _Proc:
    """Like pynvml's nvmlFriendlyObject for a c_nvmlProcessInfo_v2/v3_t."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.usedGpuMemory = 1 << 30
        self.gpuInstanceId = 0xFFFFFFFF
        self.computeInstanceId = 0xFFFFFFFF


class _Sample:
    """Like a c_nvmlProcessUtilizationSample_t."""

    def __init__(self, pid: int, ts_us: int, sm: int, mem: int) -> None:
        self.pid, self.timeStamp, self.smUtil, self.memUtil = pid, ts_us, sm, mem
        self.encUtil = self.decUtil = 0


class _Util:
    def __init__(self, gpu: int) -> None:
        self.gpu, self.memory = gpu, 0


def make_module(
    gpus: Sequence[FakeGpu],
    *,
    symbols: frozenset[str] = ALL_SYMBOLS,
    init_error: int | None = None,
    privileged: bool = False,
    driver: str = "580.159.04",
) -> types.ModuleType:
    """A pynvml-like module over ``gpus``. ``symbols``: what the simulated libnvidia-ml exports
    (``OLD_DRIVER_SYMBOLS`` for a driver without ``_v3``); ``init_error``: the code nvmlInit
    returns; ``privileged``: whether a MIG parent's process list is answered (root only)."""
    mod = types.ModuleType("pynvml")  # not registered in sys.modules: nothing leaks
    this = sys.modules[__name__]
    for name in dir(this):
        if name.startswith(("NVML_", "NVMLError", "c_nvml")) or name == "NVMLLibraryMismatchError":
            setattr(mod, name, getattr(this, name))
    state = {"init": 0}
    mod.init_count = lambda: state["init"]  # for tests: is nvmlInit paired with nvmlShutdown?

    def check_init() -> None:
        if state["init"] == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def fn(name: str) -> None:
        """_nvmlGetFunctionPointer: a symbol the driver lacks is FUNCTION_NOT_FOUND."""
        check_init()
        if name in ALL_SYMBOLS and name not in symbols:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)

    def device(handle: _Handle, call: str) -> FakeGpu:
        gpu = handle.gpu
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if call in gpu.raises:
            raise gpu.raises[call]
        return gpu

    def nvmlInit() -> None:  # noqa: N802
        if init_error is not None:
            raise NVMLError(init_error)
        state["init"] += 1

    def nvmlShutdown() -> None:  # noqa: N802
        check_init()
        state["init"] -= 1

    def nvmlDeviceGetCount() -> int:  # noqa: N802
        check_init()
        return len(gpus)

    def nvmlSystemGetDriverVersion() -> str:  # noqa: N802
        check_init()
        return driver

    def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:  # noqa: N802
        check_init()
        if not 0 <= index < len(gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = gpus[index]
        if gpu.handle_error is not None:
            raise NVMLError(gpu.handle_error)
        return _Handle(gpu)

    def nvmlDeviceGetUUID(handle: _Handle) -> str:  # noqa: N802
        check_init()
        gpu = device(handle, "nvmlDeviceGetUUID")
        return handle.mig.uuid if handle.mig is not None else gpu.uuid

    def nvmlDeviceGetName(handle: _Handle) -> str:  # noqa: N802
        check_init()
        return device(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetTotalEnergyConsumption(handle: _Handle) -> int:  # noqa: N802
        fn("nvmlDeviceGetTotalEnergyConsumption")
        if handle.mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # the counter is per physical GPU
        return device(handle, "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:  # noqa: N802
        check_init()
        return device(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetUtilizationRates(handle: _Handle) -> _Util:  # noqa: N802
        check_init()
        return _Util(device(handle, "nvmlDeviceGetUtilizationRates").util_pct)

    def nvmlDeviceGetProcessUtilization(handle: _Handle, timeStamp: int) -> list[_Sample]:  # noqa: N802,N803
        fn("nvmlDeviceGetProcessUtilization")
        gpu = device(handle, "nvmlDeviceGetProcessUtilization")
        if gpu.migs is not None or handle.mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        newer = [_Sample(*s) for s in gpu.samples if s[1] > timeStamp]
        if not newer:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return newer

    def nvmlDeviceGetSamples(  # noqa: N802
        handle: _Handle, sampling_type: int, timeStamp: int,  # noqa: N803
    ) -> tuple[int, list[c_nvmlSample_t]]:
        fn("nvmlDeviceGetSamples")
        gpu = device(handle, "nvmlDeviceGetSamples")
        if handle.mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        buffers = {NVML_TOTAL_POWER_SAMPLES: gpu.power_samples,
                   NVML_GPU_UTILIZATION_SAMPLES: gpu.util_samples}
        if sampling_type not in buffers:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        newer = [c_nvmlSample_t(ts, c_nvmlValue_t(uiVal=value))
                 for ts, value in buffers[sampling_type] if ts > timeStamp]
        if not newer:  # the size query fails first, as in pynvml
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return NVML_VALUE_TYPE_UNSIGNED_INT, newer

    def processes(handle: _Handle, call: str, mps: bool) -> list[_Proc]:
        fn(call)
        gpu = device(handle, call.removesuffix("_v2").removesuffix("_v3"))
        if handle.mig is not None:
            return [_Proc(p) for p in (handle.mig.mps_pids if mps else handle.mig.pids)]
        if gpu.migs is not None:
            if not privileged:
                raise NVMLError(NVML_ERROR_NO_PERMISSION)
            return [_Proc(p) for m in gpu.migs for p in (m.mps_pids if mps else m.pids)]
        return [_Proc(p) for p in (gpu.mps_pids if mps else gpu.pids)]

    def nvmlDeviceGetComputeRunningProcesses_v2(handle: _Handle) -> list[_Proc]:  # noqa: N802
        return processes(handle, "nvmlDeviceGetComputeRunningProcesses_v2", mps=False)

    def nvmlDeviceGetComputeRunningProcesses_v3(handle: _Handle) -> list[_Proc]:  # noqa: N802
        return processes(handle, "nvmlDeviceGetComputeRunningProcesses_v3", mps=False)

    @throwOnVersionMismatch
    def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[_Proc]:  # noqa: N802
        return nvmlDeviceGetComputeRunningProcesses_v3(handle)

    def nvmlDeviceGetMPSComputeRunningProcesses_v2(handle: _Handle) -> list[_Proc]:  # noqa: N802
        return processes(handle, "nvmlDeviceGetMPSComputeRunningProcesses_v2", mps=True)

    def nvmlDeviceGetMPSComputeRunningProcesses_v3(handle: _Handle) -> list[_Proc]:  # noqa: N802
        return processes(handle, "nvmlDeviceGetMPSComputeRunningProcesses_v3", mps=True)

    @throwOnVersionMismatch
    def nvmlDeviceGetMPSComputeRunningProcesses(handle: _Handle) -> list[_Proc]:  # noqa: N802
        return nvmlDeviceGetMPSComputeRunningProcesses_v3(handle)

    def nvmlDeviceGetGraphicsRunningProcesses(handle: _Handle) -> list[_Proc]:  # noqa: N802
        check_init()
        device(handle, "nvmlDeviceGetGraphicsRunningProcesses")
        return []  # a data-centre GPU runs no graphics contexts

    def nvmlDeviceGetMemoryInfo(handle: _Handle) -> c_nvmlMemory_t:  # noqa: N802
        check_init()
        gpu = device(handle, "nvmlDeviceGetMemoryInfo")
        return c_nvmlMemory_t(gpu.memory_total_bytes,
                              gpu.memory_total_bytes - gpu.memory_used_bytes,
                              gpu.memory_used_bytes)

    def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:  # noqa: N802
        check_init()
        gpu = device(handle, "nvmlDeviceGetTemperature")
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_c

    def nvmlDeviceGetEnforcedPowerLimit(handle: _Handle) -> int:  # noqa: N802
        check_init()
        return device(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetComputeMode(handle: _Handle) -> int:  # noqa: N802
        check_init()
        device(handle, "nvmlDeviceGetComputeMode")
        return NVML_COMPUTEMODE_DEFAULT

    def nvmlDeviceGetMigMode(handle: _Handle) -> list[int]:  # noqa: N802
        check_init()
        gpu = device(handle, "nvmlDeviceGetMigMode")
        if gpu.migs is None or handle.mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(handle: _Handle) -> int:  # noqa: N802
        check_init()
        gpu = device(handle, "nvmlDeviceGetMaxMigDeviceCount")
        if gpu.migs is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return 7  # an H100/H200 has 7 MIG slots, however many instances exist

    def nvmlDeviceGetMigDeviceHandleByIndex(handle: _Handle, index: int) -> _Handle:  # noqa: N802
        check_init()
        gpu = device(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if gpu.migs is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.migs):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return _Handle(gpu, gpu.migs[index])

    for f in list(locals().values()):
        if callable(f) and getattr(f, "__name__", "").startswith("nvml"):
            setattr(mod, f.__name__, f)
    return mod
