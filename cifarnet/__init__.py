"""CifarNet: a small CIFAR-10 CNN family, its data pipeline and one training loop (no optuna here)."""

from cifarnet.config import DataConfig, ModelConfig, TrainConfig, load_run_file, to_toml
from cifarnet.data import CIFAR10, ImageSet, Splits, load_cifar10, make_splits
from cifarnet.errors import CifarNetError, ConfigError, DataError, NonFiniteLossError
from cifarnet.model import build_model, count_params, format_summary, model_stats
from cifarnet.train import RunOptions, TrainResult, evaluate, train

__all__ = [
    "CIFAR10", "CifarNetError", "ConfigError", "DataConfig", "DataError", "ImageSet", "ModelConfig",
    "NonFiniteLossError", "RunOptions", "Splits", "TrainConfig", "TrainResult", "build_model", "count_params",
    "evaluate", "format_summary", "load_cifar10", "load_run_file", "make_splits", "model_stats", "to_toml", "train",
]
