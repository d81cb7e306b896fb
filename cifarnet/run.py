"""Train one config into an output folder: metrics JSON (with command, seed, date, hardware), config TOML and
a resumable checkpoint. `hpo train` and the benchmarks call this."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cifarnet.config import DataConfig, TrainConfig, to_toml
from cifarnet.data import load_cifar10, make_splits
from cifarnet.files import output_folder, write_json_atomic, write_text_atomic
from cifarnet.hardware import describe_hardware, now_iso
from cifarnet.model import model_stats
from cifarnet.redact import hide_passwords
from cifarnet.errors import ConfigError
from cifarnet.train import Report, RunOptions, TrainResult, load_checkpoint, train


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ (model.widths, lr, ...), for "different config" errors."""
    names = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            names += config_diff(x, y, f"{prefix}{key}.")
        elif x != y:
            names.append(f"{prefix}{key}")
    return names


def check_resumable(checkpoint: Path, cfg: TrainConfig) -> None:
    """A checkpoint written for another config cannot be resumed; say which fields differ and how."""
    if not checkpoint.exists():
        return
    stored = load_checkpoint(checkpoint).get("config") or {}
    wanted = cfg.to_dict()
    differ = config_diff(stored, wanted)
    if differ:
        def value(d: dict[str, Any], name: str) -> Any:
            for part in name.split("."):
                d = d.get(part) if isinstance(d, dict) else None
            return d

        shown = ", ".join(f"{n} {value(stored, n)!r} -> {value(wanted, n)!r}" for n in differ[:6])
        raise ConfigError(f"{checkpoint} was written for a different config ({shown}); resume with the same "
                          f"settings, or choose another --out")


def train_to_dir(
    cfg: TrainConfig, data_cfg: DataConfig, out: Path, *, data_dir: str | None = None, download: bool = False,
    opts: RunOptions = RunOptions(), report: Report | None = None, command: str = "",
) -> tuple[TrainResult, dict[str, Any]]:
    """Load CIFAR-10, train, and keep `out/metrics.json` current after every epoch."""
    out = output_folder(out)
    if opts.resume:
        check_resumable(Path(opts.checkpoint or out / "checkpoint.pt"), cfg)
    cifar = load_cifar10(data_dir, download=download)
    left = len(cifar.train) - data_cfg.val_size
    if data_cfg.train_size is not None and data_cfg.train_size > left:
        raise ConfigError(f"train_size {data_cfg.train_size} is more than the {left:,} training images left after "
                          f"the {data_cfg.val_size:,}-image validation split")
    splits = make_splits(cifar, data_cfg)
    stats = model_stats(cfg.model)
    write_text_atomic(to_toml(cfg, data_cfg), out / "config.toml")
    record: dict[str, Any] = {
        "command": hide_passwords(command), "date": now_iso(), "seed": cfg.seed, "config": cfg.to_dict(),
        "data": {**data_cfg.__dict__, "train_images": len(splits.train),
                 "val_images": len(splits.val) if splits.val else 0,
                 "test_images": len(splits.test) if splits.test else 0},
        "params": stats.params, "macs": stats.macs, "receptive_field": stats.receptive_field,
        "hardware": describe_hardware(opts.device if opts.device != "auto" else "cpu"), "epochs": [],
    }
    t0 = time.perf_counter()

    def on_epoch(epoch: int, metrics: dict[str, Any]) -> Any:
        record["epochs"].append(metrics)
        record["wall_time_s"] = time.perf_counter() - t0
        write_json_atomic(record, out / "metrics.json")
        return report(epoch, metrics) if report else None

    opts = RunOptions(**{**opts.__dict__, "checkpoint": opts.checkpoint or out / "checkpoint.pt"})
    result = train(cfg, splits, on_epoch, opts)
    record["epochs"] = result.history  # includes epochs restored from a checkpoint
    record["hardware"] = describe_hardware(result.extra["device"])
    record["precision"] = result.extra["precision"]
    record["wall_time_s"] = time.perf_counter() - t0
    write_json_atomic(record, out / "metrics.json")
    return result, record
