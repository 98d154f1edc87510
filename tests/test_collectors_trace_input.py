"""A trace directory that is missing a file or holds a malformed line is a clear InputError
naming the file (and the line)."""

import shutil
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import ReplayGpuBackend
from carbonwatch.errors import InputError, NotSupported

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


@pytest.fixture
def trace_copy(tmp_path):
    dst = tmp_path / "trace"
    shutil.copytree(TRACE, dst)
    return dst


def _replace_line(path, index, text):
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "name", ["power.csv", "energy.csv", "process_util.csv", "events.csv", "meta.json"]
)
def test_missing_required_file_names_it(trace_copy, name):
    (trace_copy / name).unlink()
    with pytest.raises(InputError, match=rf"{name}: required trace file is missing"):
        load_trace(trace_copy)


def test_optional_files_may_be_absent(trace_copy):
    (trace_copy / "calls.csv").unlink()
    (trace_copy / "process_cpu.csv").unlink()
    trace = load_trace(trace_copy)
    assert trace.calls == [] and trace.process_cpu == []


def test_malformed_number_names_file_and_line(trace_copy):
    _replace_line(trace_copy / "power.csv", 5, "1795697479.78,not-a-number,0")
    with pytest.raises(InputError, match=r"power\.csv:6: malformed row") as err:
        load_trace(trace_copy)
    assert "not-a-number" in str(err.value)


def test_short_row_names_file_and_line(trace_copy):
    _replace_line(trace_copy / "process_util.csv", 3, "1795697489.8,416")
    with pytest.raises(InputError, match=r"process_util\.csv:4:"):
        load_trace(trace_copy)


def test_malformed_optional_file_is_reported_too(trace_copy):
    _replace_line(trace_copy / "calls.csv", 10, "1795697490.0,1795697490.1,many")
    with pytest.raises(InputError, match=r"calls\.csv:11:"):
        load_trace(trace_copy)


def test_wrong_header_names_the_missing_column(trace_copy):
    _replace_line(trace_copy / "energy.csv", 0, "t_s,energy_J")
    with pytest.raises(InputError, match=r"energy\.csv:1: header lacks column\(s\) energy_mJ"):
        load_trace(trace_copy)


def test_time_going_backwards_is_reported(trace_copy):
    _replace_line(trace_copy / "energy.csv", 3, "1795697479.0,2250282")
    with pytest.raises(InputError, match=r"energy\.csv:4: t_s goes backwards"):
        load_trace(trace_copy)


def test_invalid_meta_json_is_reported(trace_copy):
    (trace_copy / "meta.json").write_text('{"gpu": "H200", "pids": {"train": 416,}}')
    with pytest.raises(InputError, match=r"meta\.json:1: invalid JSON"):
        load_trace(trace_copy)
    (trace_copy / "meta.json").write_text('{"gpu": "H200", "pids": {"train": "416"}}')
    with pytest.raises(InputError, match=r"meta\.json: \"pids\" must map"):
        load_trace(trace_copy)


def test_empty_power_file_is_reported(trace_copy):
    (trace_copy / "power.csv").write_text("t_s,power_mW,gpu_util_pct\n")
    with pytest.raises(InputError, match=r"power\.csv: no data rows"):
        load_trace(trace_copy)


def test_missing_directory_is_reported(tmp_path):
    with pytest.raises(InputError, match="trace directory not found"):
        load_trace(tmp_path / "nope")


def test_header_only_energy_file_replays_as_a_gpu_without_counter(trace_copy):
    (trace_copy / "energy.csv").write_text("t_s,energy_mJ\n")
    trace = load_trace(trace_copy)
    assert trace.start_s == trace.power_t_s[0]
    device = ReplayGpuBackend(trace, ManualClock(trace.start_s)).device(0)
    with pytest.raises(NotSupported):
        device.total_energy_mj()
