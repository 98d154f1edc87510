"""Which GPUs a job was given: device ids by physical index, and ``CUDA_VISIBLE_DEVICES``
(indices, GPU UUIDs and their prefixes, MIG UUIDs) resolved to them. Pure: no NVML here; the
collector supplies its GPUs as :class:`GpuRef`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def gpu_device_id(index: int) -> str:
    """Device ids follow the physical (NVML) index, never the CUDA ordinal a job sees."""
    return f"gpu{index}"


@dataclass(frozen=True)
class GpuRef:
    index: int  # physical (NVML) index
    uuid: str  # "GPU-..." as NVML reports it

    @property
    def device_id(self) -> str:
        return gpu_device_id(self.index)


def resolve_visible_devices(
    env_value: str | None,
    gpus: Sequence[GpuRef],
    mig_parents: Mapping[str, str] | None = None,
) -> list[GpuRef]:
    """Map a ``CUDA_VISIBLE_DEVICES`` value to the physical GPUs it exposes, in CUDA ordinal order.

    Follows CUDA's rules: unset means every GPU, an empty value none; entries are indices, ``GPU-``
    UUIDs or unique UUID prefixes, or MIG identifiers; parsing stops at the first entry that is
    invalid, unknown, ambiguous or repeated (CUDA then exposes only the devices before it).
    A MIG entry maps to its parent GPU: old-style ``MIG-GPU-<uuid>/<gi>/<ci>`` carries the parent,
    new-style ``MIG-<uuid>`` needs ``mig_parents`` (MIG uuid -> parent GPU uuid) from the backend.
    Several MIG slices of one GPU map to that GPU once.
    """
    if env_value is None:
        return list(gpus)
    by_index = {g.index: g for g in gpus}
    out: list[GpuRef] = []
    for raw in env_value.split(","):
        entry = raw.strip()
        if not entry:
            break
        ref = _resolve_entry(entry, gpus, by_index, mig_parents or {})
        if ref is None:
            break
        if ref in out:
            if entry.upper().startswith("MIG-"):
                continue  # two slices of one GPU: the GPU is visible once
            break  # CUDA treats a repeated device as invalid
        out.append(ref)
    return out


def _resolve_entry(
    entry: str,
    gpus: Sequence[GpuRef],
    by_index: Mapping[int, GpuRef],
    mig_parents: Mapping[str, str],
) -> GpuRef | None:
    if entry.isdigit():
        return by_index.get(int(entry))
    upper = entry.upper()
    if upper.startswith("MIG-GPU-"):
        return _by_uuid_prefix(entry[4:].split("/")[0], gpus)
    if upper.startswith("MIG-"):
        for mig_uuid, parent in mig_parents.items():
            if mig_uuid.upper().startswith(upper):
                return _by_uuid_prefix(parent, gpus)
        return None
    return _by_uuid_prefix(entry, gpus)


def _by_uuid_prefix(prefix: str, gpus: Sequence[GpuRef]) -> GpuRef | None:
    want = prefix.upper()
    if not want.startswith("GPU-"):
        want = "GPU-" + want
    hits = [g for g in gpus if g.uuid.upper().startswith(want)]
    return hits[0] if len(hits) == 1 else None  # ambiguous prefixes are invalid for CUDA too
