"""Options every command shares, defined once: storage, data folder, device, output format.

Nothing here imports torch or optuna at import time: `hpo --help` only needs typer.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

INTERRUPTED_EXIT = 130  # the shell's code for "stopped by SIGINT"

# Upper bounds of the counts a command line asks for, far above any useful value, so a typo or a crafted
# number is one error line instead of a machine spawning processes or threads, or allocating, until it stops.
MAX_THREADS = 256  # torch threads per worker process
MAX_WORKERS = 256  # local worker processes, or Ray workers, of one command (and worker processes per device)
MAX_EXPORT_BATCH = 1024  # images in hpo export's check batch: checked in one forward pass, its memory grows with it


INTERRUPTED = "interrupted: "  # how every Ctrl-C / SIGTERM line starts, whatever the command


class CommandInterrupted(Exception):
    """Raised by a command that handled Ctrl-C (or SIGTERM) itself, with what is left and how to continue;
    hpo.cli.main prints it as one line and exits with `exit_code` (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def progress_lines() -> Any:
    """`RunOptions.on_progress` for `hpo train` / `hpo retrain`: a line every ~30 s of an epoch on stdout when
    stderr shows no progress bar (a log file, a pipe), None on a terminal (the bar shows it)."""
    import sys

    if sys.stderr.isatty():
        return None
    from cifarnet.train import describe_progress

    return lambda p: typer.echo(describe_progress(p))


def interrupted_message(run_dir: Path) -> str:
    """Ctrl-C in `hpo train` / `hpo retrain`: what is left in the run folder and how to continue."""
    if (run_dir / "checkpoint.pt").exists():
        return (f"{INTERRUPTED}{run_dir} keeps the checkpoint of its last finished epoch; the same command "
                f"with --resume continues it")
    return f"{INTERRUPTED}stopped before the first epoch finished (nothing to resume)"


class OutputFormat(str, enum.Enum):
    table = "table"
    json = "json"


def _check_device(value: Optional[str]) -> Optional[str]:
    """One device check for every command (train, retrain, study start / join): a GPU index N means cuda:N."""
    if value is None:
        return None
    from hpo.errors import HPOError
    from hpo.running.launcher import check_device

    device = f"cuda:{value}" if value.isdigit() else value
    try:
        check_device(device, shown=value)
    except HPOError as e:
        raise typer.BadParameter(str(e)) from None
    return device


StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", envvar="HPO_STORAGE", show_envvar=True,
    help="SQLAlchemy URL, e.g. sqlite:///hpo.db (relative to the current folder; sqlite:////abs/path.db) or "
         "postgresql+psycopg://user@host/db, or grpc://host:port (default: the study file's, else "
         "sqlite:///hpo.db).")]
DataDirOpt = Annotated[Optional[str], typer.Option(
    "--data-dir", envvar="CIFAR10_DIR", show_envvar=True,
    help="CIFAR-10 folder: cifar-10-batches-py/ or its parent.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", callback=_check_device, help="cpu, auto (cuda when available), cuda, cuda:N or a GPU index N.")]
OptionalDeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", callback=_check_device,
    help="cpu, auto (cuda when available), cuda, cuda:N or a GPU index N (default: auto; or --devices).")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Print a table or JSON.")]
NameArg = Annotated[str, typer.Argument(
    help="Study name in --storage, or a study TOML (its name and storage).", show_default=False)]
StudyFileArg = Annotated[Path, typer.Argument(help="Study TOML (see studies/*.toml).", show_default=False)]


def as_json(record: Any) -> str:
    return json.dumps(record, indent=2, default=str)


def echo_record(record: Any, fmt: OutputFormat, table: str) -> None:
    typer.echo(as_json(record) if fmt == OutputFormat.json else table)
