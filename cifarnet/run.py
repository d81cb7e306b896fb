"""Train one config into an output folder: metrics JSON (with command, seed, date, hardware), config TOML and
a resumable checkpoint. `hpo train` and the benchmarks call this."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cifarnet.config import DataConfig, TrainConfig, to_toml
from cifarnet.data import load_cifar10, make_splits
from cifarnet.files import write_atomic
from cifarnet.hardware import describe_hardware, now_iso
from cifarnet.model import model_stats
from cifarnet.train import Report, RunOptions, TrainResult, train


def write_json_atomic(obj: Any, path: Path) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def train_to_dir(
    cfg: TrainConfig, data_cfg: DataConfig, out: Path, *, data_dir: str | None = None, download: bool = False,
    opts: RunOptions = RunOptions(), report: Report | None = None, command: str = "",
) -> tuple[TrainResult, dict[str, Any]]:
    """Load CIFAR-10, train, and keep `out/metrics.json` current after every epoch."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(load_cifar10(data_dir, download=download), data_cfg)
    stats = model_stats(cfg.model)
    (out / "config.toml").write_text(to_toml(cfg, data_cfg))
    record: dict[str, Any] = {
        "command": command, "date": now_iso(), "seed": cfg.seed, "config": cfg.to_dict(),
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
    record["wall_time_s"] = time.perf_counter() - t0
    write_json_atomic(record, out / "metrics.json")
    return result, record
