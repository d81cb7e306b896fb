"""`--workers auto`: how many trials to run at once on this machine, from measured trial packing.

benchmarks/packing.py measures aggregate trials per hour for K concurrent trials (K local worker processes on
the CPU, or K trials per GPU) and writes results/packing.json, and the same file beside this module as package
data (an installed package has no results/ folder). `choose_workers` picks the K with the most
trials per hour among the measurements taken on a machine like this one (same device kind and core count;
for GPUs the same GPU model), and falls back to one trial per device when nothing matches: running several
at once is only worth it where a measurement shows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

PACKING_RESULTS = Path(__file__).with_name("packing.json")


@dataclass(frozen=True)
class Machine:
    device: str  # "cpu" or "cuda"
    cores: int
    gpu: str = ""  # GPU model name when device == "cuda"


@dataclass(frozen=True)
class WorkerChoice:
    workers: int  # concurrent trials per device (CPU: local worker processes)
    reason: str


def choose_workers(measurements: Iterable[dict[str, Any]], machine: Machine) -> WorkerChoice:
    """The concurrency with the most trials per hour measured on a matching machine, else 1."""
    matching = [m for m in measurements if _matches(m, machine)]
    if not matching:
        return WorkerChoice(1, f"no packing measurement for {_describe(machine)}: 1 trial per device")
    best = max(matching, key=lambda m: (m["trials_per_hour"], -m["concurrent"]))
    return WorkerChoice(int(best["concurrent"]), f"{best['concurrent']} concurrent trials: "
                  f"{best['trials_per_hour']:.0f} trials/h measured on {_describe(machine)} "
                  f"({best.get('date', 'undated')})")


def _matches(m: dict[str, Any], machine: Machine) -> bool:
    if m.get("device") != machine.device:
        return False
    if machine.device == "cuda":
        return m.get("gpu") == machine.gpu
    return m.get("cores") == machine.cores


def _describe(machine: Machine) -> str:
    return f"{machine.gpu} GPU" if machine.device == "cuda" else f"{machine.cores}-core CPU"


def this_machine(device: str) -> Machine:
    """The machine `device` ("cpu", "auto", "cuda", "cuda:N") runs on."""
    import torch

    from hpo.running.worker import usable_cores

    cores = usable_cores()
    if device != "cpu" and torch.cuda.is_available():
        return Machine("cuda", cores, torch.cuda.get_device_name(torch.device(device if ":" in device else "cuda")))
    return Machine("cpu", cores)


def load_measurements(path: Path = PACKING_RESULTS) -> list[dict[str, Any]]:
    """The `runs` of a packing results file; none when the file is missing or unreadable."""
    try:
        return list(json.loads(Path(path).read_text()).get("runs", []))
    except (OSError, ValueError):
        return []


def auto_workers(device: str, path: Path = PACKING_RESULTS) -> WorkerChoice:
    return choose_workers(load_measurements(path), this_machine(device))
