"""The NVML adapter (``NvmlDevice``, ``NvmlBackend``) and the real GpuCollector, driven through a
fake ``pynvml`` that raises what nvidia-ml-py raises (tests/fake_pynvml.py). The truth for energy
is the fake's own counter, which the code under test only reads."""

import math

import fake_pynvml as fake
import pynvml
import pytest
from fake_pynvml import OLD_DRIVER_SYMBOLS, FakeGpu, FakeMig, make_module

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.detect import _nvml_collector
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.gpurefs import resolve_visible_devices
from carbonwatch.collectors.nvml import MIG_DETAIL, NvmlBackend, NvmlDevice
from carbonwatch.errors import DeviceError, DeviceLost, NotSupported
from carbonwatch.model import DeviceState

UUID0 = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
UUID1 = "GPU-1a2b3c4d-0000-1111-2222-333344445555"
T0 = 1_764_000_000.0


def _drive(collector, gpus, clock, seconds, power_w=300.0, every=None):
    """Poll at 10 Hz and collect at 1 Hz for ``seconds`` while every GPU draws ``power_w``, then
    collect at the end. ``every(t)`` runs before each step (to change processes). Returns the
    intervals, and the counter energy the fakes moved (the truth) per device id."""
    moved = {f"gpu{i}": 0.0 for i in range(len(gpus))}
    out = list(collector.collect(clock.time()))  # opens the intervals
    steps = round(seconds / 0.1)
    for k in range(1, steps + 1):
        for i, g in enumerate(gpus):
            before = g.energy_mj
            g.run(0.1, power_w)
            moved[f"gpu{i}"] += (g.energy_mj - before) / 1000
        clock.advance(0.1)
        if every is not None:
            every(clock.time())
        collector.poll(clock.time())
        if k % 10 == 0 or k == steps:
            out.extend(collector.collect(clock.time()))
    return out, moved


def _energy(intervals, device_id):
    return math.fsum(i.energy_j for i in intervals if i.device_id == device_id)


# --- the fake is faithful to nvidia-ml-py ------------------------------------------------------


def test_the_fake_has_pynvmls_codes_and_error_classes():
    real_codes = {n: getattr(pynvml, n) for n in dir(pynvml) if n.startswith("NVML_ERROR_")}
    fake_codes = {n: getattr(fake, n) for n in dir(fake) if n.startswith("NVML_ERROR_")}
    assert fake_codes == real_codes
    real_classes = {n for n in dir(pynvml) if n.startswith("NVMLError_")}
    assert {n for n in dir(fake) if n.startswith("NVMLError_")} == real_classes
    for module in (pynvml, fake):  # NVMLError(code) becomes the code's subclass, in both
        err = module.NVMLError(module.NVML_ERROR_NOT_FOUND)
        assert type(err) is module.NVMLError_NotFound and err.value == 6
        assert isinstance(module.NVMLError_GpuIsLost(), module.NVMLError)
        assert not issubclass(module.NVMLLibraryMismatchError, module.NVMLError)


def test_the_fake_raises_library_mismatch_like_pynvml_on_a_driver_without_v3():
    nv = make_module([FakeGpu(UUID0, pids=[11])], symbols=OLD_DRIVER_SYMBOLS)
    nv.nvmlInit()
    handle = nv.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(nv.NVMLLibraryMismatchError):
        nv.nvmlDeviceGetComputeRunningProcesses(handle)
    assert [p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses_v2(handle)] == [11]


# --- NvmlDevice ----------------------------------------------------------------------------------


def _device(gpu, **kw):
    nv = make_module([gpu], **kw)
    nv.nvmlInit()
    return NvmlDevice(0, nv)


def test_library_mismatch_falls_back_to_v2_for_compute_and_mps_processes():
    gpu = FakeGpu(UUID0, pids=[11, 12], mps_pids=[21])
    dev = _device(gpu, symbols=OLD_DRIVER_SYMBOLS)
    assert dev.compute_pids() == [11, 12, 21]
    gpu.pids = [12]
    assert dev.compute_pids() == [12, 21]  # and again, straight to _v2


def test_no_samples_is_notfound_and_reads_as_none():
    gpu = FakeGpu(UUID0, samples=[(11, 5_000_000, 80, 10)])
    dev = _device(gpu)
    assert [(s.pid, s.ts_us, s.sm_pct) for s in dev.process_utilization(0)] == [
        (11, 5_000_000, 80.0)
    ]
    assert dev.process_utilization(5_000_000) == []  # NVML_ERROR_NOT_FOUND: nothing newer


def test_every_exception_from_pynvml_leaves_as_a_carbonwatch_error():
    gpu = FakeGpu(UUID0, pids=[11])
    dev = _device(gpu)
    gpu.raises["nvmlDeviceGetProcessUtilization"] = OSError("exception: access violation")
    gpu.raises["nvmlDeviceGetComputeRunningProcesses"] = fake.NVMLLibraryMismatchError("v2?")
    gpu.raises["nvmlDeviceGetTotalEnergyConsumption"] = fake.NVMLError(fake.NVML_ERROR_UNKNOWN)
    with pytest.raises(DeviceError, match="unexpected OSError"):
        dev.process_utilization(0)
    with pytest.raises(NotSupported, match="compute processes"):
        dev.compute_pids()
    with pytest.raises(DeviceError, match="NVML error 999"):
        dev.total_energy_mj()
    gpu.lost = True
    with pytest.raises(DeviceLost):
        dev.power_mw()


def test_mps_clients_are_counted_beside_compute_processes():
    gpu = FakeGpu(UUID0, pids=[50], mps_pids=[61, 62])
    assert _device(gpu).compute_pids() == [50, 61, 62]


def test_mig_mode_reads_processes_per_instance_and_says_the_split_is_per_gpu():
    migs = [FakeMig("MIG-aaaa1111-2222-3333-4444-555566667777", pids=[100]),
            FakeMig("MIG-bbbb1111-2222-3333-4444-555566667777", pids=[200], mps_pids=[201])]
    gpu = FakeGpu(UUID0, migs=migs, samples=[(100, 9_000_000, 50, 0)])
    dev = _device(gpu)  # unprivileged: the parent's own process list is NO_PERMISSION
    assert dev.mig_enabled and dev.detail == MIG_DETAIL
    assert dev.compute_pids() == [100, 200, 201]
    assert dev.process_utilization(0) == []  # not offered under MIG; compute pids stand in
    assert dev.mig_uuids() == [m.uuid for m in migs]
    migs.pop()  # an instance destroyed at run time
    assert dev.compute_pids() == [100]


def test_a_gpu_without_mig_has_no_mig_detail():
    dev = _device(FakeGpu(UUID0))
    assert not dev.mig_enabled and dev.detail == "" and dev.mig_uuids() == []


# --- NvmlBackend ---------------------------------------------------------------------------------


def test_no_permission_on_one_gpu_skips_it_and_measures_the_other():
    gpus = [FakeGpu(UUID0, handle_error=fake.NVML_ERROR_NO_PERMISSION), FakeGpu(UUID1, pids=[7])]
    nv = make_module(gpus)
    notes: list[str] = []
    collector = _nvml_collector(required=True, notes=notes, nvml=nv)
    assert collector is not None
    assert [d.device_id for d in collector.devices()] == ["gpu1"]  # the physical index
    assert any("GPU 0: skipped, NVML refused access" in n and "Insufficient Permissions" in n
               for n in notes), notes
    clock = ManualClock(T0)
    intervals, _ = _drive(collector, gpus, clock, 3.0)
    assert {i.device_id for i in intervals} == {"gpu1"}
    assert _energy(intervals, "gpu1") == pytest.approx(900.0)  # 3 s at 300 W by the counter
    assert all(i.shares == {7: 1.0} for i in intervals)
    collector.close()
    assert nv.init_count() == 0


def test_a_gpu_lost_at_start_up_is_listed_lost_and_the_other_is_measured():
    gpus = [FakeGpu(UUID0, pids=[7]), FakeGpu(UUID1, handle_error=fake.NVML_ERROR_GPU_IS_LOST)]
    nv = make_module(gpus)
    notes: list[str] = []
    collector = _nvml_collector(required=True, notes=notes, nvml=nv)
    devices = {d.device_id: d for d in collector.devices()}
    assert devices["gpu1"].state is DeviceState.LOST  # before any read: `carbonwatch devices`
    assert "lost at start-up" in devices["gpu1"].detail and "GPU is lost" in devices["gpu1"].detail
    assert devices["gpu0"].state is DeviceState.OK
    assert any("GPU 1: lost at start-up" in n for n in notes)
    clock = ManualClock(T0)
    intervals, moved = _drive(collector, gpus, clock, 2.0)
    assert {i.device_id for i in intervals} == {"gpu0"}
    assert _energy(intervals, "gpu0") == pytest.approx(moved["gpu0"])


def test_every_gpu_unopenable_is_a_clear_error_when_nvml_is_required():
    gpus = [FakeGpu(UUID0, handle_error=fake.NVML_ERROR_NO_PERMISSION)]
    with pytest.raises(DeviceError, match="no GPU could be opened"):
        _nvml_collector(required=True, notes=[], nvml=make_module(gpus))
    notes: list[str] = []
    assert _nvml_collector(required=False, notes=notes, nvml=make_module(gpus)) is None
    assert notes[-1] == "GPU: not measured (no GPU could be opened)"


def test_nvml_init_failures_keep_their_plain_hints():
    nv = make_module([], init_error=fake.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(DeviceError, match="no NVIDIA driver.*--backend none"):
        NvmlBackend(nv)
    nv = make_module([], init_error=fake.NVML_ERROR_UNKNOWN)
    with pytest.raises(DeviceError, match="nvmlInit: Unknown Error"):
        NvmlBackend(nv)


def test_mig_parents_resolve_cuda_visible_devices_to_the_parent_gpu():
    migs = [FakeMig("MIG-aaaa1111-2222-3333-4444-555566667777")]
    backend = NvmlBackend(make_module([FakeGpu(UUID0), FakeGpu(UUID1, migs=migs)]))
    collector = GpuCollector(backend)
    assert collector.mig_parents() == {migs[0].uuid: UUID1}
    refs = resolve_visible_devices("MIG-aaaa1111", collector.gpu_refs(), collector.mig_parents())
    assert [r.device_id for r in refs] == ["gpu1"]
    assert "per GPU, not per instance" in collector.devices()[1].detail
    collector.close()


# --- the collector never loses an interval, whatever pynvml raises -------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        "old driver",  # _v3 missing: NVMLLibraryMismatchError from the unversioned call
        "process calls raise",  # any exception at all from the share calls
    ],
)
def test_collector_closes_every_interval_and_matches_the_counter(broken):
    gpu = FakeGpu(UUID0, pids=[11])
    old = broken == "old driver"
    nv = make_module([gpu], symbols=OLD_DRIVER_SYMBOLS if old else fake.ALL_SYMBOLS)
    if broken == "process calls raise":
        gpu.raises["nvmlDeviceGetProcessUtilization"] = RuntimeError("ctypes went away")
        gpu.raises["nvmlDeviceGetComputeRunningProcesses"] = fake.NVMLLibraryMismatchError("x")
    collector = GpuCollector(NvmlBackend(nv))
    clock = ManualClock(T0)

    def samples(t):  # a sample every 0.5 s, as NVML gives them, then none after 3 s
        if t < T0 + 3.0 and round((t - T0) * 10) % 5 == 0:
            gpu.samples.append((11, round(t * 1e6), 90, 20))

    intervals, moved = _drive(collector, [gpu], clock, 6.0, power_w=450.0, every=samples)
    # every interval closed, back to back, up to the last one: nothing lost
    assert intervals[-1].end_s == pytest.approx(T0 + 6.0)
    assert all(a.end_s == b.start_s for a, b in zip(intervals, intervals[1:], strict=False))
    assert _energy(intervals, "gpu0") == pytest.approx(moved["gpu0"], rel=1e-12)
    if broken == "old driver":  # _v2 found the process once the samples stopped
        assert intervals[-1].shares == {11: 1.0}
    else:
        assert intervals[-1].shares == {}


def test_real_pynvml_errors_map_through_the_same_code():
    """The mapping catches the real module's classes too (what runs on a GPU machine)."""
    from carbonwatch.collectors.nvml import _mapped

    with pytest.raises(NotSupported), _mapped(pynvml, "x"):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    with pytest.raises(NotSupported, match="versioned"), _mapped(pynvml, "x"):
        raise pynvml.NVMLLibraryMismatchError("use a versioned function")


def test_a_driver_without_the_mps_call_still_lists_compute_processes():
    symbols = fake.ALL_SYMBOLS - {"nvmlDeviceGetMPSComputeRunningProcesses_v2",
                                  "nvmlDeviceGetMPSComputeRunningProcesses_v3"}
    gpu = FakeGpu(UUID0, pids=[11], mps_pids=[21])
    dev = _device(gpu, symbols=symbols)
    assert dev.compute_pids() == [11]
    gpu.pids = [11, 12]
    assert dev.compute_pids() == [11, 12]


def test_the_shared_h200_trace_through_nvml_on_an_old_driver_keeps_every_joule():
    """The recorded H200 trace served through the fake pynvml by a driver without the _v3 calls
    (the issue simulated this at -5.3 %): the device total is the counter delta, and both
    processes are seen."""
    import bisect
    from pathlib import Path

    from carbonwatch.collectors.trace import load_trace
    from carbonwatch.collectors.trace_gpu import drive

    trace = load_trace(Path(__file__).parent / "fixtures" / "h200-shared-gpu")
    clock = ManualClock(trace.start_s)
    windows = trace.pid_windows()

    def at(times, values):
        return values[max(0, bisect.bisect_right(times, clock.time()) - 1)]

    class TraceGpu(FakeGpu):
        @property
        def energy_mj(self):
            return at(trace.energy_t_s, trace.energy_mj)

        @energy_mj.setter
        def energy_mj(self, value):
            pass

        @property
        def power_mw(self):
            return at(trace.power_t_s, trace.power_mw)

        @power_mw.setter
        def power_mw(self, value):
            pass

        @property
        def pids(self):
            return [p for p, (a, b) in windows.items() if a <= clock.time() < b]

        @pids.setter
        def pids(self, value):
            pass

        @property
        def samples(self):
            return [(r.pid, r.sample_ts_us, int(r.sm_pct), int(r.mem_pct))
                    for r in trace.process_util if r.t_s <= clock.time()]

        @samples.setter
        def samples(self, value):
            pass

    nv = make_module([TraceGpu(UUID0)], symbols=OLD_DRIVER_SYMBOLS)
    collector = GpuCollector(NvmlBackend(nv))
    intervals = list(drive(collector, clock, trace.start_s, trace.end_s))
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, rel=1e-12)
    assert trace.energy_j == pytest.approx(8758.0, abs=0.05)  # the trace README's figure
    seen = set().union(*(i.shares for i in intervals))
    assert seen == {416, 438}
