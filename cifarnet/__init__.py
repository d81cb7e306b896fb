"""CifarNet: a small CIFAR-10 CNN family, its data pipeline and one training loop (no optuna here)."""

import importlib
from typing import Any

# Public names and the module that defines each. They load on first use (PEP 562), so `import cifarnet.config`
# (or the `hpo --help` path) does not pay for torch. The training loop is `cifarnet.train.train`: the bare name
# `cifarnet.train` is the module (a lazy alias would turn into the module as soon as it is imported).
_EXPORTS = {
    "DataConfig": "config", "ModelConfig": "config", "TrainConfig": "config", "load_run_file": "config",
    "to_toml": "config", "CIFAR10": "data", "ImageSet": "data", "Splits": "data", "load_cifar10": "data",
    "make_splits": "data", "CifarNetError": "errors", "ConfigError": "errors", "DataError": "errors",
    "NonFiniteLossError": "errors", "build_model": "model", "count_params": "model", "format_summary": "model",
    "model_stats": "model", "RunOptions": "train", "TrainResult": "train", "evaluate": "train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cifarnet' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cifarnet.{_EXPORTS[name]}"), name)
