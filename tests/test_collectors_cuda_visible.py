"""CUDA_VISIBLE_DEVICES -> the physical GPUs (and carbonwatch device ids) a job can use."""

from carbonwatch.collectors.gpurefs import GpuRef, resolve_visible_devices

GPUS = [
    GpuRef(0, "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"),
    GpuRef(1, "GPU-1a2b3c4d-0000-1111-2222-333344445555"),
    GpuRef(2, "GPU-1a2bffff-0000-1111-2222-333344445555"),
    GpuRef(3, "GPU-77777777-0000-1111-2222-333344445555"),
]


def _ids(value, **kw):
    return [g.device_id for g in resolve_visible_devices(value, GPUS, **kw)]


def test_unset_means_every_gpu_and_empty_means_none():
    assert _ids(None) == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert _ids("") == []


def test_indices_map_in_cuda_ordinal_order():
    assert _ids("2,0") == ["gpu2", "gpu0"]
    assert _ids(" 3 , 1 ") == ["gpu3", "gpu1"]


def test_uuids_and_unique_prefixes_map_to_their_gpu():
    assert _ids("GPU-8932f937-d72c-4106-c12f-20bd9faed9f6") == ["gpu0"]
    assert _ids("GPU-7777,gpu-8932") == ["gpu3", "gpu0"]


def test_parsing_stops_at_the_first_invalid_entry_as_cuda_does():
    assert _ids("1,7,2") == ["gpu1"]  # no GPU 7
    assert _ids("0,GPU-1a2b,3") == ["gpu0"]  # ambiguous prefix
    assert _ids("0,0,1") == ["gpu0"]  # repeated device
    assert _ids("-1") == []  # the usual way to hide all GPUs


def test_mig_devices_map_to_their_parent_gpu():
    assert _ids("MIG-GPU-8932f937-d72c-4106-c12f-20bd9faed9f6/1/0") == ["gpu0"]
    parents = {
        "MIG-aaaa1111-2222-3333-4444-555566667777": GPUS[3].uuid,
        "MIG-bbbb1111-2222-3333-4444-555566667777": GPUS[3].uuid,
    }
    assert _ids("MIG-aaaa1111", mig_parents=parents) == ["gpu3"]
    assert _ids("MIG-aaaa,MIG-bbbb", mig_parents=parents) == ["gpu3"]  # one GPU, once
    assert _ids("MIG-cccc", mig_parents=parents) == []


def test_uuid_is_carried_for_device_info():
    (ref,) = resolve_visible_devices("1", GPUS)
    assert ref.index == 1 and ref.uuid == GPUS[1].uuid
