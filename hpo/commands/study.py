"""`hpo study start|check|list|status|best|verify`, `hpo worker` and `hpo storage-proxy`: thin wrappers over
hpo.worker, hpo.study and hpo.storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer

from hpo.cli import DataDirOpt, DeviceOpt, app
from hpo.errors import HPOError
from hpo.launcher import device_slots
from hpo.consistency import check_consistency
from hpo.ray_workers import RayOptions, join_study_on_ray, start_study_on_ray
from hpo.storage import GRPC_DEFAULT_PORT, open_storage, serve_storage_proxy
from hpo.study import best_trial_record, describe_spec, format_best, format_status, list_studies, study_status
from hpo.studyfile import DEFAULT_STORAGE, load_study_file
from hpo.worker import WorkerOptions, join_study, start_study

T = TypeVar("T")
INTERRUPTED_EXIT = 130  # the shell's code for "stopped by SIGINT"

study_app = typer.Typer(no_args_is_help=True, help="Create, run and inspect Optuna studies on SQL storage.")
app.add_typer(study_app, name="study")

StudyFileArg = Annotated[Path, typer.Argument(help="Study TOML (see studies/*.toml).")]
StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", help="SQLAlchemy URL, e.g. sqlite:///hpo.db or postgresql+psycopg://user@host/db "
                      "(default: the study file's).")]
ListStorageOpt = Annotated[str, typer.Option("--storage", help="SQLAlchemy URL of the study database.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    help="Torch threads per worker (default: this machine's cores divided by --workers).")]
NameArg = Annotated[str, typer.Argument(help="Study name.")]
RayOpt = Annotated[Optional[str], typer.Option(
    "--ray", metavar="ADDRESS", help="Run the workers on a Ray cluster: auto (the one `ray start` made), local (one "
    "started for this run) or HOST:PORT; one worker per GPU slot (or per --threads CPUs). Needs the ray extra.")]
TrialsPerDeviceOpt = Annotated[int, typer.Option(
    help="Worker processes (so trials at once) per device; small models can share a GPU. With --ray: each "
         "worker asks Ray for 1/N of a GPU.")]


@study_app.command("start")
def start_cmd(
    study_file: StudyFileArg,
    storage: StorageOpt = None,
    n_trials: Annotated[Optional[int], typer.Option(
        "--n-trials", help="Trials to run now (resuming adds this many; default: the file's trials).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Start no trial after this many seconds.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local worker processes on the same storage; the cores "
                                                        "are split between them (default 1; with --ray: Ray "
                                                        "workers, default one per slot of the cluster).")] = None,
    threads: ThreadsOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    ray: RayOpt = None,
    trials_per_device: TrialsPerDeviceOpt = 1,
) -> None:
    """Create the study (the original CifarNet is trial 0) or resume it, and run its trials."""
    spec = load_study_file(study_file, storage=storage, n_trials=n_trials, timeout=timeout)
    if ray is None and trials_per_device != 1:
        raise HPOError("--trials-per-device needs --ray here (local workers: --workers)")
    if ray is not None:
        ray_opts = RayOptions(address=ray, workers=workers, trials_per_gpu=trials_per_device,
                              cpus_per_worker=threads or 1)
        run = lambda: start_study_on_ray(spec, WorkerOptions(data_dir=data_dir, device=device), ray_opts)  # noqa: E731
    else:
        opts = WorkerOptions(data_dir=data_dir, device=device, workers=workers or 1, threads=threads)
        run = lambda: start_study(spec, opts)  # noqa: E731
    typer.echo(format_status(_interruptible(run)))


@app.command("worker")
def worker_cmd(
    study_file: StudyFileArg,
    storage: StorageOpt = None,
    threads: ThreadsOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    devices: Annotated[Optional[str], typer.Option(
        help="One worker process per device (and per --trials-per-device): GPU indices like 0,1, or cpu.")] = None,
    trials_per_device: TrialsPerDeviceOpt = 1,
    ray: RayOpt = None,
) -> None:
    """Join a study started with `hpo study start` (from any process or machine) until its run ends."""
    if devices is not None and device != "auto":
        raise HPOError("give --device or --devices, not both")
    spec = load_study_file(study_file, storage=storage)
    if ray is not None:
        if devices is not None:
            raise HPOError("--devices is for local workers; on Ray each worker gets the device Ray assigns it")
        ray_opts = RayOptions(address=ray, trials_per_gpu=trials_per_device, cpus_per_worker=threads or 1)
        opts = WorkerOptions(data_dir=data_dir, device=device)
        typer.echo(format_status(_interruptible(lambda: join_study_on_ray(spec, opts, ray_opts))))
        return
    opts = WorkerOptions(data_dir=data_dir, threads=threads, devices=device_slots(devices or device, trials_per_device))
    typer.echo(format_status(_interruptible(lambda: join_study(spec, opts))))


@app.command("storage-proxy")
def storage_proxy_cmd(
    storage: Annotated[str, typer.Option("--storage", help="SQLAlchemy URL of the database to serve.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "localhost",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = GRPC_DEFAULT_PORT,
) -> None:
    """Serve a study database to many workers over gRPC (optuna's storage proxy); workers then use
    --storage grpc://HOST:PORT. Needs the `distributed` extra (grpcio)."""
    try:
        serve_storage_proxy(storage, host, port, on_ready=typer.echo)
    except KeyboardInterrupt:
        typer.echo("storage proxy stopped")


def _interruptible(run: Callable[[], T]) -> T:
    """Ctrl-C: the worker(s) marked the running trial failed and re-queued it; say so in one line."""
    try:
        return run()
    except KeyboardInterrupt:
        typer.echo("interrupted: the running trial is marked failed (fail_reason 'interrupted') and queued "
                   "again; run the same command to resume", err=True)
        raise typer.Exit(INTERRUPTED_EXIT) from None


@study_app.command("check")
def check_cmd(study_file: StudyFileArg, storage: StorageOpt = None) -> None:
    """Validate a study file and print what it would search (no storage or data is touched)."""
    typer.echo(describe_spec(load_study_file(study_file, storage=storage)))


@study_app.command("list")
def list_cmd(storage: ListStorageOpt = DEFAULT_STORAGE) -> None:
    """Studies in a storage: trials and best validation accuracy."""
    rows = list_studies(storage)
    if not rows:
        typer.echo("no studies")
    for r in rows:
        best = f"{r.best_value:.4f}" if r.best_value is not None else "-"
        typer.echo(f"{r.name:<30} {r.trials:>5} trials  best {best:<8} {r.started}")


@study_app.command("status")
def status_cmd(name: NameArg, storage: ListStorageOpt = DEFAULT_STORAGE) -> None:
    """Trials by state, best so far, target, stop flag and why trials failed."""
    typer.echo(format_status(study_status(storage, name)))


@study_app.command("verify")
def verify_cmd(name: NameArg, storage: ListStorageOpt = DEFAULT_STORAGE) -> None:
    """Check a study's records after crashes: trial numbers, states, heartbeats, re-runs, study attrs."""
    problems = check_consistency(open_storage(storage), name)
    if problems:
        raise HPOError(f"study {name!r} is inconsistent: " + "; ".join(problems))
    typer.echo(f"study {name}: consistent")


@study_app.command("best")
def best_cmd(
    name: NameArg,
    storage: ListStorageOpt = DEFAULT_STORAGE,
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """The best completed trial: validation accuracy, parameters, size and the full training config."""
    if format not in ("table", "json"):
        raise typer.BadParameter(f"must be table or json, got {format!r}", param_hint="--format")
    record = best_trial_record(storage, name)
    typer.echo(json.dumps(record, indent=2) if format == "json" else format_best(record))
