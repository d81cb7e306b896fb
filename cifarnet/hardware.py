"""What a figure was measured on: saved beside every result."""

from __future__ import annotations

import datetime as dt
import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes bf16 natively: CUDA GPUs that support it, CPUs with AVX512-BF16 or AMX tiles.
    Elsewhere torch emulates bf16, about 10x slower than fp32 (measured on a 2-core AVX2 EPYC: 38 vs 396 img/s
    for a 195k-parameter member), so a bf16 request runs in fp32 there (cifarnet.train)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def describe_hardware(device: str | torch.device = "cpu") -> dict[str, object]:
    import torch  # not at module level: now_iso serves commands that never load torch (hpo study summary)

    device = torch.device(device)
    info: dict[str, object] = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # Other processes compete for a 2-core machine: a load above the core count means slower figures.
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
