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


def describe_hardware(device: str | torch.device = "cpu") -> dict[str, object]:
    import torch  # not at module level: now_iso serves commands that never load torch (hpo study summary)

    device = torch.device(device)
    info: dict[str, object] = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
