"""`hpo train`: one configuration into a run folder (metrics.json, config.toml, checkpoint.pt)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hpo.commands.model import ConfigOpt
from hpo.commands.options import CommandInterrupted, DataDirOpt, DeviceOpt, interrupted_message, progress_lines

app = typer.Typer()
CLASSES = 10  # a class-balanced subset needs at least one image per class


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (the schedule is sized to it).")] = None,
    subset: Annotated[Optional[int], typer.Option(
        min=CLASSES, help="Class-balanced training images per epoch (at most what the validation split "
                          "leaves: 45,000 of CIFAR-10 with the default 5,000 validation images).")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, help="Training seed.")] = None,
    data_dir: DataDirOpt = None,
    download: Annotated[bool, typer.Option(help="Fetch CIFAR-10 with torchvision if missing (online).")] = False,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run folder: metrics.json, config.toml, checkpoint.pt. A folder that already holds "
                            "a run is refused unless --resume.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="Continue OUT/checkpoint.pt (same config) after an interruption.")
                      ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train one configuration; metrics JSON and checkpoint go under --out."""
    from cifarnet.config import DataConfig, TrainConfig, load_run_file
    from cifarnet.errors import ConfigError

    cfg, data_cfg = load_run_file(config) if config else (TrainConfig(), DataConfig())
    cfg = cfg.replace(**{k: v for k, v in {"epochs": epochs, "seed": seed}.items() if v is not None})
    if subset is not None:
        data_cfg = DataConfig(**{**data_cfg.__dict__, "train_size": subset})
    held = [name for name in ("checkpoint.pt", "metrics.json") if (out / name).exists()]
    if held and not resume:
        raise ConfigError(f"{out.resolve()} already holds a run ({', '.join(held)}): pass --resume to continue "
                          f"it, or choose another --out")

    def show(epoch: int, m: dict) -> None:
        extras = "".join(f" {k} {m[k]:.4f}" for k in ("val_acc", "test_acc") if k in m)
        typer.echo(f"epoch {epoch}/{cfg.epochs} loss {m['train_loss']:.4f}{extras} "
                   f"{m['images_per_s']:.0f} img/s ({m['train_time_s']:.1f}s)")

    try:
        from cifarnet.run import train_to_dir
        from cifarnet.train import RunOptions

        _, record = train_to_dir(cfg, data_cfg, out, data_dir=data_dir, download=download, report=show,
                                 opts=RunOptions(device=device, resume=resume, on_progress=progress_lines()),
                                 command=" ".join(sys.argv))
    except KeyboardInterrupt:
        raise CommandInterrupted(interrupted_message(out)) from None
    typer.echo(f"wrote {out}/metrics.json ({record['params']:,} parameters, {record['wall_time_s']:.0f}s)")
