"""The `hpo` command: each command parses its options, calls one library function and prints.

Library code raises CifarNetError / HPOError; only `main()` turns them into one line and exit code 1.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cifarnet.config import DataConfig, TrainConfig, load_run_file
from cifarnet.errors import CifarNetError
from cifarnet.model import format_summary

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="CifarNet hyperparameter-optimisation service (Optuna studies on SQL storage).")
model_app = typer.Typer(no_args_is_help=True, help="Inspect CifarNet family members.")
app.add_typer(model_app, name="model")
data_app = typer.Typer(no_args_is_help=True, help="Fetch and check the CIFAR-10 folder.")
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Run TOML: train fields, [model], [data].")]
DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="CIFAR-10 folder (default: $CIFAR10_DIR).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]


def _load(config: Path | None) -> tuple[TrainConfig, DataConfig]:
    return load_run_file(config) if config else (TrainConfig(), DataConfig())


@model_app.command("summary")
def model_summary(config: ConfigOpt = None) -> None:
    """Print the layer table, parameters, MACs per image and receptive field."""
    cfg, _ = _load(config)
    typer.echo(format_summary(cfg.model))


@data_app.command("check")
def data_check(data_dir: DataDirOpt = None) -> None:
    """Validate the CIFAR-10 folder (shapes, dtypes, labels; not md5) and print its class counts."""
    from cifarnet.data import load_cifar10, resolve_data_dir

    data = load_cifar10(data_dir)
    for name, part in (("train", data.train), ("test", data.test)):
        counts = part.labels.bincount(minlength=10).tolist()
        typer.echo(f"{name}: {len(part):,} images, per class {counts}")
    typer.echo(f"ok: {resolve_data_dir(data_dir)}")


@data_app.command("download")
def data_download(
    data_dir: Annotated[str, typer.Option("--data-dir", help="Where to put cifar-10-batches-py/.")] = "data",
) -> None:
    """Fetch CIFAR-10 with torchvision (needs internet); skipped when the folder is already valid."""
    from cifarnet.data import load_cifar10, resolve_data_dir

    load_cifar10(data_dir, download=True)
    typer.echo(f"ok: {resolve_data_dir(data_dir)} (use --data-dir {data_dir} or CIFAR10_DIR={data_dir})")


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (the schedule is sized to it).")] = None,
    subset: Annotated[Optional[int], typer.Option(help="Class-balanced training images per epoch.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Training seed.")] = None,
    data_dir: DataDirOpt = None,
    download: Annotated[bool, typer.Option(help="Fetch CIFAR-10 with torchvision if missing (online).")] = False,
    out: Annotated[Path, typer.Option(help="Output folder: metrics.json, config.toml, checkpoint.pt.")] = Path(
        "runs/train"),
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoint.pt.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train one configuration; metrics JSON and checkpoint go under --out."""
    from cifarnet.run import train_to_dir
    from cifarnet.train import RunOptions

    cfg, data_cfg = _load(config)
    cfg = cfg.replace(**{k: v for k, v in {"epochs": epochs, "seed": seed}.items() if v is not None})
    if subset is not None:
        data_cfg = DataConfig(**{**data_cfg.__dict__, "train_size": subset})

    def show(epoch: int, m: dict) -> None:
        extras = "".join(f" {k} {m[k]:.4f}" for k in ("val_acc", "test_acc") if k in m)
        typer.echo(f"epoch {epoch}/{cfg.epochs} loss {m['train_loss']:.4f}{extras} "
                   f"{m['images_per_s']:.0f} img/s ({m['train_time_s']:.1f}s)")

    _, record = train_to_dir(cfg, data_cfg, out, data_dir=data_dir, download=download, report=show,
                             opts=RunOptions(device=device, resume=resume), command=" ".join(sys.argv))
    typer.echo(f"wrote {out}/metrics.json ({record['params']:,} parameters, {record['wall_time_s']:.0f}s)")


def _register_commands() -> None:
    # Each feature owns its command module; importing it registers its commands on `app`.
    import hpo.commands  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and a non-zero exit for every expected failure.

    Typer (standalone) already handles usage errors and Ctrl-C ("Aborted!", exit 1); library errors
    surface here.
    """
    _register_commands()
    # A non-interactive shell starts background jobs with SIGINT ignored, and children inherit that; every hpo
    # command promises SIGINT/Ctrl-C semantics (stop cleanly, record the interrupted trial), so take it back.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app(args=argv, prog_name="hpo")
    except CifarNetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # an unexpected bug: still one line, with a way to get the traceback
        if os.environ.get("HPO_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {e} (set HPO_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
