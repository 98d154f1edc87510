"""Which GPUs a job was given: ``CUDA_VISIBLE_DEVICES`` resolved to physical GPUs, so that a
``carbonwatch run`` job is charged device-hours for the GPUs it held, not only those it drew energy
from (a job given two GPUs that used one still held two)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from carbonwatch.collectors.base import Collector
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.gpurefs import GpuRef, resolve_visible_devices
from carbonwatch.model import DeviceState


@dataclass(frozen=True)
class GpusGiven:
    """The GPUs a job was given. ``device_ids`` None: not known, the GPUs it drew energy from
    stand in; ``how`` says which rule decided."""

    device_ids: frozenset[str] | None
    how: str


def gpus_given_to_job(collectors: Sequence[Collector], env: Mapping[str, str]) -> GpusGiven:
    """Resolve ``CUDA_VISIBLE_DEVICES`` (indices, GPU UUIDs, MIG UUIDs) to the physical GPUs.

    CUDA numbers only the GPUs this process may open, so an index is an ordinal over the GPUs the
    NVML backend opened (one skipped for NO_PERMISSION, as under a Slurm cgroup, shifts the
    ordinals), not a physical index. Indices are trusted only where CUDA's order is NVML's
    (PCI bus order): ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, or every GPU the same model (CUDA's
    default FASTEST_FIRST then keeps bus order), and no GPU lost; otherwise, as when the variable
    is unset (every GPU visible, which says nothing about what the job used), None."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return GpusGiven(None, "GPUs the job drew energy from (CUDA_VISIBLE_DEVICES unset)")
    refs: list[GpuRef] = []
    parents: dict[str, str] = {}
    names: set[str] = set()
    lost = False
    for c in collectors:
        if not isinstance(c, GpuCollector):
            continue
        states = {d.device_id: d for d in c.devices()}
        for ref in c.gpu_refs():
            d = states[ref.device_id]
            if d.state is DeviceState.LOST:
                lost = True
                continue
            refs.append(ref)
            names.add(d.name)
        parents.update(c.mig_parents())
    uses_index = any(e.strip().isdigit() for e in value.split(","))
    if uses_index and (lost or (len(names) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID")):
        why = (
            "a GPU is lost" if lost else "GPU models differ and CUDA_DEVICE_ORDER is not PCI_BUS_ID"
        )
        return GpusGiven(
            None,
            f"GPUs the job drew energy from (CUDA_VISIBLE_DEVICES={value} uses indices, and {why}:"
            " CUDA's ordinals may not be NVML's)",
        )
    by_ordinal = [GpuRef(k, ref.uuid) for k, ref in enumerate(refs)]
    physical = {ref.uuid: ref for ref in refs}
    visible = resolve_visible_devices(value, by_ordinal, parents)
    ids = [physical[v.uuid].device_id for v in visible]
    return GpusGiven(
        frozenset(ids), f"CUDA_VISIBLE_DEVICES={value}: {', '.join(ids) or 'no GPU'}"
    )
