"""`hpo study start|join|check|list|status|best|summary|verify`: thin wrappers over hpo.running.worker, hpo.running.study and
hpo.results.summary, with the text each prints (the library returns records; the tables live here)."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from hpo.commands.options import (INTERRUPTED, MAX_THREADS, MAX_WORKERS, DataDirOpt, DeviceOpt, FormatOpt,
                                  CommandInterrupted, NameArg, OptionalDeviceOpt, OutputFormat, StorageOpt,
                                  StudyFileArg, echo_record)
from hpo.definition.paths import locate_study  # os and pathlib only: `hpo --help` stays light

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, help="Create, run and inspect Optuna studies on SQL storage.")

ThreadsOpt = Annotated[Optional[int], typer.Option(
    min=1, max=MAX_THREADS, help="Torch threads per worker process (default: this machine's cores divided by the "
                                 "worker processes it runs).")]
DevicesOpt = Annotated[Optional[str], typer.Option(
    help="One worker process per device (and per --trials-per-device): GPU indices like 0,1, or cpu.")]
PerDeviceOpt = Annotated[int, typer.Option(
    min=1, max=MAX_WORKERS, help="Worker processes (so trials at once) per device; small models can share a GPU. "
                                 "With --ray: each worker asks Ray for 1/N of a GPU.")]
RayOpt = Annotated[Optional[str], typer.Option(
    "--ray", metavar="ADDRESS", help="Run the workers on a Ray cluster: auto (the one `ray start` made), local (one "
    "started for this run) or HOST:PORT; one worker per GPU slot (or per --threads CPUs). Needs the ray extra.")]


def _parse_workers(value: str) -> str:
    """`--workers N` (1 <= N <= MAX_WORKERS) or `--workers auto` (the measured best for this machine,
    hpo.running.packing)."""
    if value == "auto" or (re.fullmatch(r"[0-9]{1,4}", value) and 1 <= int(value) <= MAX_WORKERS):
        return value
    raise typer.BadParameter(f"{value[:20]!r} is not a number from 1 to {MAX_WORKERS} or 'auto'")


WorkersOpt = Annotated[Optional[str], typer.Option(
    parser=_parse_workers, metavar="N|auto",
    help="Local worker processes on the same storage (the cores are split between them; default 1), or auto: "
         "the number of concurrent trials measured fastest on a machine like this one (results/packing.json). "
         "With --ray: Ray workers, default one per slot of the cluster.")]


@app.command("start")
def start_cmd(
    study_file: StudyFileArg,
    storage: StorageOpt = None,
    n_trials: Annotated[Optional[int], typer.Option(
        "--n-trials", min=1, help="Trials to run now (resuming adds this many; default: the file's trials).")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        min=1.0, help="Start no trial after this many seconds.")] = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    trials_per_device: PerDeviceOpt = 1,
    ray: RayOpt = None,
) -> None:
    """Create the study (the original CifarNet is trial 0) or resume it, and run its trials."""
    from hpo.errors import HPOError
    from hpo.running.study import load_run_spec
    from hpo.running.worker import WorkerOptions, start_study

    spec = load_run_spec(study_file, storage=storage, n_trials=n_trials, timeout=timeout)
    _warn_if_proxy(spec.storage)
    if workers == "auto":
        from hpo.running.packing import auto_workers

        choice = auto_workers(device)
        typer.echo(f"--workers auto: {choice.reason}")
        workers = str(choice.workers)
    count = int(workers) if workers is not None else None
    if ray is None and trials_per_device != 1:
        raise HPOError("--trials-per-device needs --ray here (local workers: --workers)")
    if ray is not None:
        from hpo.running.ray_workers import RayOptions, start_study_on_ray

        ray_opts = RayOptions(address=ray, workers=count, trials_per_gpu=trials_per_device,
                              cpus_per_worker=threads or 1)
        run = lambda: start_study_on_ray(spec, WorkerOptions(data_dir=data_dir, device=device), ray_opts)  # noqa: E731
    else:
        opts = WorkerOptions(data_dir=data_dir, device=device, workers=count or 1, threads=threads)
        run = lambda: start_study(spec, opts)  # noqa: E731
    typer.echo(format_status(_interruptible(run, spec)))


def join_cmd(
    study_file: StudyFileArg,
    storage: StorageOpt = None,
    threads: ThreadsOpt = None,
    data_dir: DataDirOpt = None,
    device: OptionalDeviceOpt = None,
    devices: DevicesOpt = None,
    trials_per_device: PerDeviceOpt = 1,
    ray: RayOpt = None,
) -> None:
    """Join a study started with `hpo study start` (from any process or machine) until its run ends."""
    from hpo.errors import HPOError
    from hpo.running.launcher import device_slots
    from hpo.results.records import study_status
    from hpo.definition.study_file import load_study_file
    from hpo.running.worker import WorkerOptions, join_study

    if devices is not None and device is not None:
        raise HPOError("give --device or --devices, not both")
    spec = load_study_file(study_file, storage=storage)
    _warn_if_proxy(spec.storage)
    if ray is not None:
        from hpo.running.ray_workers import RayOptions, join_study_on_ray

        if devices is not None:
            raise HPOError("--devices is for local workers; on Ray each worker gets the device Ray assigns it")
        ray_opts = RayOptions(address=ray, trials_per_gpu=trials_per_device, cpus_per_worker=threads or 1)
        opts = WorkerOptions(data_dir=data_dir, device=device or "auto")
        typer.echo(format_status(_interruptible(lambda: join_study_on_ray(spec, opts, ray_opts), spec)))
        return
    try:
        finished_before = _finished(study_status(spec.storage, spec.name))
    except HPOError:
        finished_before = None  # no such study (yet): join_study says so, with what to do
    opts = WorkerOptions(data_dir=data_dir, threads=threads,
                         devices=device_slots(devices or device or "auto", trials_per_device))
    status = _interruptible(lambda: join_study(spec, opts), spec)
    typer.echo(format_status(status))
    if _finished(status) == finished_before:
        typer.echo("nothing left to do: the run of the last `hpo study start` has spent its trial budget, passed "
                   "its timeout or met its target; `hpo study start` begins a new run")


app.command("join")(join_cmd)


def _finished(status: Any) -> int:
    return sum(status.counts[k] for k in ("complete", "pruned", "fail"))


def _warn_if_proxy(url: str) -> None:
    if url.startswith("grpc://"):
        typer.echo("warning: through the gRPC storage proxy optuna keeps no heartbeats (a killed worker's trial "
                   "stays RUNNING, never re-run)", err=True)


def _interruptible(run: Callable[[], T], spec: Any) -> T:
    """Ctrl-C / SIGTERM: the worker(s) marked the trials they were running failed and queued them again; say so in
    one line naming them, which claims no trial where none had started (start-up, workers still starting) and
    none the database could not take (WorkerInterrupted.recorded False: the next run re-runs it)."""
    from hpo.errors import WorkerInterrupted

    try:
        return run()
    except KeyboardInterrupt as e:  # hpo.errors.Interrupted for SIGTERM too (exit 143)
        if isinstance(e, WorkerInterrupted) and not e.recorded:
            what = ("the running trial could not be recorded as interrupted (database unreachable, see the warning "
                    "above): the next run re-runs it")
        else:
            what = "a trial that was running is marked failed (fail_reason 'interrupted') and queued again"
            stopped = _interrupted_trials(spec)
            if stopped:
                what += f" (trial{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))})"
        raise CommandInterrupted(f"{INTERRUPTED}{what}; run the same command to resume",
                                 exit_code=getattr(e, "exit_code", 130)) from None


def _interrupted_trials(spec: Any) -> list[int]:
    """The trials the interrupt stopped, read back from the study; none when it cannot be read."""
    from hpo.results.records import interrupted_in_run

    try:
        return interrupted_in_run(spec.storage, spec.name)
    except Exception:  # the database may be the reason for the interrupt; the line is still printed
        return []


@app.command("check")
def check_cmd(study_file: StudyFileArg, storage: StorageOpt = None, format: FormatOpt = OutputFormat.table) -> None:
    """Validate a study file and print what it would search (no storage or data is touched)."""
    from hpo.definition.study_file import load_study_file

    spec = load_study_file(study_file, storage=storage)
    record = describe_spec(spec)
    echo_record(record, format, format_spec(record))


@app.command("list")
def list_cmd(storage: StorageOpt = None, format: FormatOpt = OutputFormat.table) -> None:
    """Studies in a storage: trials, best validation accuracy, first trial's start."""
    from hpo.results.records import list_studies
    from hpo.definition.study_file import DEFAULT_STORAGE

    rows = [dataclasses.asdict(r) for r in list_studies(storage or DEFAULT_STORAGE)]
    echo_record(rows, format, format_list(rows))


@app.command("status")
def status_cmd(name: NameArg, storage: StorageOpt = None, format: FormatOpt = OutputFormat.table) -> None:
    """Trials by state, best so far, target, stop flag, why trials failed, stale RUNNING trials, retrains."""
    from hpo.results.consistency import check_consistency
    from hpo.results.retrain_records import reference_retrain, retrain_records
    from hpo.storage import open_existing_storage
    from hpo.running.study import load_spec, load_study
    from hpo.results.records import study_status

    name, url = locate_study(name, storage)
    status = study_status(url, name)
    readonly = open_existing_storage(url, read_only=True)  # inspecting never writes, not even SQLite's -wal
    study = load_study(url, name, storage=readonly)
    # A RUNNING trial whose heartbeat is older than the grace period belongs to a dead worker (verify's check).
    grace = load_spec(study).workers.grace_period if "study_file" in study.user_attrs else None
    stale = [p for p in check_consistency(readonly, name, grace_period=grace) if " is RUNNING with " in p]
    retrains = retrain_records(study)
    reference = reference_retrain(retrains)
    finalists = study.user_attrs.get("finalists")
    record = {**dataclasses.asdict(status), "stale_running": stale, "retrains": retrains,
              "reference_retrain": reference["key"] if reference else None, "finalists": finalists}
    text = format_status(status, stale, retrains, reference)
    if finalists:
        text += "\n" + format_finalists(finalists)
    echo_record(record, format, text)


@app.command("best")
def best_cmd(name: NameArg, storage: StorageOpt = None, format: FormatOpt = OutputFormat.table) -> None:
    """The best completed trial: validation accuracy, parameters, size and the full training config."""
    from hpo.results.records import best_trial_record

    name, url = locate_study(name, storage)
    record = best_trial_record(url, name)
    echo_record(record, format, format_best(record))


@app.command("summary")
def summary_cmd(
    name: NameArg,
    storage: StorageOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the summary as JSON.")] = None,
    format: FormatOpt = OutputFormat.table,
) -> None:
    """Trials complete/pruned/failed, best validation accuracy, wall time and epochs saved by pruning."""
    from cifarnet.files import write_json_atomic
    from hpo.results.summary import summarize_study

    name, url = locate_study(name, storage)
    summary = summarize_study(url, name)
    if out is not None:  # first: a path that cannot be written is the one line of output
        write_json_atomic(summary, out)
    echo_record(summary, format, format_summary(summary))
    if out is not None:
        typer.echo(f"wrote {out}", err=format == OutputFormat.json)


@app.command("verify")
def verify_cmd(name: NameArg, storage: StorageOpt = None, format: FormatOpt = OutputFormat.table) -> None:
    """Check a study's records after crashes: trial numbers, states, heartbeats, re-runs, study attrs.

    Exits 1 when a check fails (with -f json, after printing the record with every problem)."""
    from hpo.results.consistency import check_consistency
    from hpo.errors import HPOError
    from hpo.results.records import printable
    from hpo.storage import display_url, open_existing_storage

    name, url = locate_study(name, storage)
    problems = check_consistency(open_existing_storage(url, read_only=True), name)
    if format == OutputFormat.json:
        echo_record({"study": name, "storage": display_url(url), "consistent": not problems, "problems": problems},
                    format, "")
    if problems:  # the problems quote trial attrs: escaped, so the error stays one line
        raise HPOError(printable(f"study {name!r} is inconsistent: " + "; ".join(problems)))
    if format == OutputFormat.table:
        typer.echo(printable(f"study {name}: consistent"))


@app.command("finalists")
def finalists_cmd(
    name: NameArg,
    storage: StorageOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    format: FormatOpt = OutputFormat.table,
) -> None:
    """Run the study's top trials again with several seeds (its [finalists] table; default: top 3, 2 seeds, the
    search's fidelity) and record the winner, the best mean validation accuracy, which `hpo retrain` retrains.
    Resumes: finished finalist runs are kept."""
    from hpo.running.finalists import FinalistOptions, run_finalists

    name, url = locate_study(name, storage)
    out = sys.stderr if format == OutputFormat.json else sys.stdout
    try:
        record = run_finalists(url, name, FinalistOptions(data_dir=data_dir, device=device, out=out))
    except KeyboardInterrupt as e:
        raise CommandInterrupted(f"{INTERRUPTED}finished finalist runs are kept; run the same command to continue",
                                 exit_code=getattr(e, "exit_code", 130)) from None
    echo_record(record, format, format_finalists(record))


# ---- text of the records above ----

def format_status(status: Any, stale: list[str] = (), retrains: list[dict[str, Any]] = (),
                  reference: dict[str, Any] | None = None) -> str:
    from hpo.results.records import printable_lines
    from hpo.results.retrain_records import describe_record

    c = status.counts
    rerun = f" ({len(status.rerun_as)} re-run)" if status.rerun_as else ""
    lines = [f"study {status.name} ({status.storage})",
             f"trials: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed{rerun}, {c['running']} "
             f"running, {c['waiting']} waiting"]
    if status.best:
        b = status.best
        size = f"{b['params_count']:,} params" if b.get("params_count") is not None else "size unknown"
        lines.append(f"best: trial {b['trial']} val_acc {b['val_acc']:.4f} ({size}) {b['params']}")
    if status.target_accuracy is not None:
        reached = bool(status.best) and status.best["val_acc"] >= status.target_accuracy
        lines.append(f"target val_acc {status.target_accuracy}: {'reached' if reached else 'not reached'}")
    if status.stop_requested:
        lines.append(f"stop requested: {status.stop_reason}")
    lines += [f"trial {n}: {why}" for n, why in status.failures]
    lines += [f"stale: {p}; its worker is gone (the next worker re-runs it when retries are left; "
              f"`hpo study verify` checks the records)" for p in stale]
    for r in retrains:
        mark = " <- reference" if reference is not None and r["key"] == reference["key"] else ""
        lines.append(f"retrain {describe_record(r)}{mark}")
    return printable_lines(lines)


def format_finalists(record: dict[str, Any]) -> str:
    from hpo.results.records import printable_lines

    lines = [f"finalists: top {len(record['rows'])} trials x {record['seeds']} seeds, {record['epochs']} epochs x "
             f"{record['train_size'] or 'all'} training images, scored on the {record['val_size']:,}-image "
             f"validation split"]
    for r in record["rows"]:
        vals = ", ".join("-" if v is None else f"{v:.4f}" for v in r["val_acc"])
        mean = "-" if r["mean_val_acc"] is None else f"{r['mean_val_acc']:.4f}"
        mark = "  <- winner" if r["trial"] == record["winner"] else ""
        lines.append(f"  trial {r['trial']}: search {r['search_val_acc']:.4f}, finalist runs {vals}, mean {mean}{mark}")
    lines.append(f"winner: trial {record['winner']} ({record['why']})" if record["winner"] is not None
                 else "winner: none yet (some finalist runs did not finish)")
    return printable_lines(lines)


def format_best(record: dict[str, Any]) -> str:
    from hpo.results.records import printable, printable_lines

    rows = {k: v for k, v in record.items() if k not in ("config", "params")}
    rows.update({f"param {printable(k)}": v for k, v in record["params"].items()})
    width = max(map(len, rows))
    return printable_lines([f"{k:<{width}}  {v}" for k, v in rows.items()])


def format_list(rows: list[dict[str, Any]]) -> str:
    from hpo.results.records import printable

    if not rows:
        return "no studies"
    lines = [f"{'study':<30} {'trials':>6}  {'best val_acc':<12}  started"]
    for r in rows:
        best = f"{r['best_value']:.4f}" if r["best_value"] is not None else "-"
        lines.append(f"{printable(r['name']):<30} {r['trials']:>6}  {best:<12}  {r['started'] or '-'}")
    return "\n".join(lines)


def describe_spec(spec: Any) -> dict[str, Any]:
    """`hpo study check`: what a study file searches, with the parameter range of its models."""
    from hpo.storage import display_url
    from hpo.running.study import baseline_params
    from hpo.definition.study_file import check_size_budget

    sizes = list(check_size_budget(spec))
    baseline, moved = baseline_params(spec.space, spec)
    return {
        "name": spec.name, "storage": display_url(spec.storage), "trials": spec.n_trials, "timeout": spec.timeout,
        "sampler": {"kind": spec.sampler.kind, **spec.sampler.options},
        "pruner": {"kind": spec.pruner.kind, **spec.pruner.options},
        "epochs": spec.base.epochs, "train_size": spec.data.train_size, "val_size": spec.data.val_size,
        "params_range": sizes, "max_params": spec.max_params, "target_accuracy": spec.target_accuracy,
        "stop_on_target": spec.stop_on_target, "artifact_dir": spec.artifact_dir,
        "space": {name: str(dist) for name, dist in spec.space.params.items()},
        "baseline": baseline, "baseline_moved": moved,
    }


def format_spec(d: dict[str, Any]) -> str:
    budget = f"{d['trials']} trials" if d["trials"] else "no trial limit"
    lines = [
        f"study {d['name']} on {d['storage']}: {budget}" + (f", timeout {d['timeout']:.0f}s" if d["timeout"] else ""),
        f"sampler {d['sampler']}; pruner {d['pruner']}",
        f"per trial: {d['epochs']} epochs on {d['train_size'] or 'all'} training images, "
        f"{d['val_size']} validation images",
        f"parameters: {d['params_range'][0]:,} .. {d['params_range'][1]:,} over the space"
        + (f" (max_params {d['max_params']:,})" if d["max_params"] else ""),
        f"target val_acc: {d['target_accuracy']}" + (" (stops all workers)" if d["stop_on_target"] else ""),
        f"artifacts: {d['artifact_dir']}",
        "space:",
    ]
    lines += [f"  {name} = {dist}" for name, dist in d["space"].items()]
    moved = d["baseline_moved"]
    lines.append(f"trial 0 (original CifarNet): {d['baseline']}" + (f" (moved into the space: {moved})" if moved else ""))
    return "\n".join(lines)


def format_summary(s: dict[str, Any]) -> str:
    """`hpo study summary`; every figure may be missing while no trial has finished."""
    from hpo.results.records import printable_lines

    best, trials = s["best"], s["trials"]
    lines = [
        f"study {s['study']} ({s['storage']}): {trials['complete']} complete, {trials['pruned']} pruned "
        f"({s['rejected_before_training']} rejected before training), {trials['fail']} failed",
        f"{s.get('compute_unit', 'epochs')} run {s['epochs_run']:,} of {s['epochs_if_no_pruning']:,} without "
        f"pruning: {s['epochs_saved_by_pruning']:,} saved",
    ]
    if s["wall_time_s"] is not None:
        mean = f", mean epoch {s['mean_epoch_s']:.1f}s" if s["mean_epoch_s"] is not None else ""
        lines.append(f"wall time {s['wall_time_s'] / 60:.1f} min{mean}")
    if best:
        size = f" ({best['params_count']:,} params)" if best.get("params_count") is not None else ""
        lines.append(f"best: trial {best['trial']} val_acc {best['val_acc']:.4f}{size}")
    else:
        lines.append("best: none yet (no complete trial)")
    if s["baseline"] and s["baseline"]["val_acc"] is not None:
        lines.append(f"baseline (original CifarNet, trial {s['baseline']['trial']}): val_acc {s['baseline']['val_acc']:.4f}")
    return printable_lines(lines)
