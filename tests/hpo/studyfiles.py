"""A tiny study file for the study-service tests: TINY_MODEL-sized widths, 3 short epochs on the tiny_cifar
fixture (AdamW + linear decay learns it: validation accuracy climbs above chance by epoch 2)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hpo.definition.study_file import to_toml

TINY_STUDY: dict[str, Any] = {
    "study": {"name": "tiny", "trials": 2, "target_accuracy": 0.2},
    "sampler": {"kind": "tpe", "seed": 0, "n_startup_trials": 10},
    "pruner": {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 2},
    "budget": {"epochs": 3, "val_size": 40},
    "workers": {"heartbeat_interval": 1, "grace_period": 3, "max_retry": 1},
    "train": {"batch_size": 16, "optimizer": "adamw", "lr": 0.02, "schedule": "linear", "weight_decay": 0.0,
              "aug_strength": 0.0, "channels_last": False, "model": {"widths": [4, 8, 8, 8]}},
    "space": {
        "lr": {"low": 1e-5, "high": 0.05, "log": True},
        "width1": {"choices": [4, 8]},
        "width4": {"choices": [8, 16]},
        "depthwise": {"choices": [True, False]},
        "aug_strength": {"low": 0.0, "high": 0.2},
    },
}


def write_study(folder: Path, name: str, storage: str, **tables: dict[str, Any]) -> Path:
    """TINY_STUDY with `name`, `storage` and per-table updates, as a TOML file in `folder`."""
    raw = copy.deepcopy(TINY_STUDY)
    raw["study"].update(name=name, storage=storage)
    for table, values in tables.items():
        raw.setdefault(table, {}).update(values)
    path = folder / f"{name}.toml"
    path.write_text(to_toml(raw))
    return path
