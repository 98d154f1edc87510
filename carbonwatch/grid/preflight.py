"""Pre-flight estimates: energy and carbon of a planned GPU job before it runs.

The board power (TDP) of each accelerator is its vendor's datasheet maximum, so an estimate is an
upper bound for the GPUs alone: real jobs often draw less, and host CPU, RAM and cooling (PUE)
are not in the TDP. Every result says so (``estimate: True``); measured runs replace it.

Sources (vendor datasheets / product pages):
- NVIDIA H100 Tensor Core GPU datasheet: SXM up to 700 W, PCIe 300-350 W, NVL 350-400 W.
- NVIDIA H200 datasheet: SXM up to 700 W, NVL up to 600 W.
- NVIDIA HGX B200 specification: up to 1000 W per GPU.
- NVIDIA A100 datasheet: 80GB SXM 400 W, 80GB PCIe 300 W, 40GB PCIe 250 W.
- NVIDIA V100 datasheet: SXM2 300 W, PCIe 250 W.
- NVIDIA L40S 350 W, L40 300 W, L4 72 W, A40 300 W, A10 150 W, T4 70 W,
  RTX 6000 Ada 300 W, RTX A6000 300 W (product datasheets).
- AMD Instinct MI300X 750 W, MI250X 560 W, MI210 300 W (AMD product specifications).
- Intel Gaudi 2 600 W (Intel Gaudi 2 product brief).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from carbonwatch.errors import InputError

GPU_TDP_W: dict[str, float] = {
    "h100-sxm": 700.0,
    "h100-pcie": 350.0,
    "h100-nvl": 400.0,
    "h200-sxm": 700.0,
    "h200-nvl": 600.0,
    "b200": 1000.0,
    "a100-sxm": 400.0,
    "a100-pcie": 300.0,
    "a100-pcie-40gb": 250.0,
    "v100-sxm2": 300.0,
    "v100-pcie": 250.0,
    "l40s": 350.0,
    "l40": 300.0,
    "l4": 72.0,
    "a40": 300.0,
    "a10": 150.0,
    "t4": 70.0,
    "rtx-6000-ada": 300.0,
    "rtx-a6000": 300.0,
    "mi300x": 750.0,
    "mi250x": 560.0,
    "mi210": 300.0,
    "gaudi2": 600.0,
}

# A bare family name means its highest-power form: an upper bound must not under-count.
_ALIASES = {
    "h100": "h100-sxm",
    "h100-sxm5": "h100-sxm",
    "h200": "h200-sxm",
    "a100": "a100-sxm",
    "a100-sxm4": "a100-sxm",
    "a100-80gb": "a100-sxm",
    "v100": "v100-sxm2",
    "v100-sxm": "v100-sxm2",
    "gaudi-2": "gaudi2",
}


def gpu_key(name: str) -> str:
    """Normalise ``NVIDIA H100 SXM5`` / ``h100_sxm`` / ``H100`` to a table key."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    for prefix in ("nvidia-", "amd-", "instinct-", "intel-", "tesla-"):
        key = key.removeprefix(prefix)
    key = _ALIASES.get(key, key)
    if key not in GPU_TDP_W:
        raise InputError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPU_TDP_W))}")
    return key


@dataclass(frozen=True)
class Estimate:
    gpu: str
    tdp_w: float
    count: int
    hours: float
    pue: float
    energy_kwh: float
    intensity_g_per_kwh: float
    co2e_g: float


def estimate_gpu_job(
    gpu: str, *, count: int, hours: float, intensity_g_per_kwh: float, pue: float = 1.0
) -> Estimate:
    """Energy = TDP x count x hours x PUE; carbon = energy x intensity. An upper bound."""
    if count < 1:
        raise InputError(f"count must be >= 1, got {count}")
    if not (math.isfinite(hours) and hours > 0):
        raise InputError(f"hours must be > 0, got {hours}")
    key = gpu_key(gpu)
    tdp_w = GPU_TDP_W[key]
    energy_kwh = tdp_w * count * hours * pue / 1000.0
    return Estimate(
        key,
        tdp_w,
        count,
        hours,
        pue,
        energy_kwh,
        intensity_g_per_kwh,
        energy_kwh * intensity_g_per_kwh,
    )
