"""`hpo retrain` (a study's best trial to a target test accuracy) and `hpo export` (a run as ONNX / a torch.export
program)."""

from __future__ import annotations

import enum
import signal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hpo.commands.options import (MAX_EXPORT_BATCH, CommandInterrupted, DataDirOpt, DeviceOpt, StorageOpt,
                                  interrupted_message, progress_lines)

app = typer.Typer()


class ExportFormat(str, enum.Enum):
    onnx = "onnx"
    pt2 = "pt2"
    torchscript = "torchscript"  # deprecated: writes the pt2 program (torch.jit is deprecated upstream)


class Weights(str, enum.Enum):
    best = "best"
    final = "final"


@app.command("retrain")
def retrain_cmd(
    study: Annotated[str, typer.Argument(help="A studies/*.toml file, or a study name in --storage.",
                                         show_default=False)],
    storage: StorageOpt = None,
    trial: Annotated[Optional[int], typer.Option(
        min=0, help="Trial number to retrain (default: the finalists' winner, running the finalists first when the "
                    "study file has a [finalists] table; else the best trial).")] = None,
    finalists: Annotated[bool, typer.Option(
        help="Without --trial: choose by the finalists (run them first if the study file asks for them and they "
             "have not run). --no-finalists: the best search trial.")] = True,
    target: Annotated[Optional[float], typer.Option(
        max=1.0, help="Test accuracy to stop at (first epoch reaching it). Changes nothing in the schedule. "
                      "Default: the study file's [retrain] target, else 0.85.")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(
        min=1, help="Epoch budget; the LR schedule is sized for it (epochs = max_epochs). Default: the study "
                    "file's [retrain] max_epochs, else 30.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run folder (default: runs/retrain/<study>/trial<N>); one that holds a retrain is "
                            "refused unless --resume.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run folder's checkpoint after an interruption.")] = False,
    seed: Annotated[Optional[int], typer.Option(min=0, help="Training seed (default: the trial's).")] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Retrain a trial on all training images until its test accuracy reaches the target (or max epochs).

    Every retrain is kept as its own record on the study (`hpo study status` and `hpo report` list them all)."""
    from hpo.results.retrain import RetrainOptions, prepare_retrain, run_retrain
    from hpo.storage import interrupts_between_storage_calls
    from hpo.running.finalists import FinalistOptions, finalists_due

    options = RetrainOptions(storage=storage, trial=trial, target=target, max_epochs=max_epochs, out=out,
                             resume=resume, seed=seed, data_dir=data_dir, device=device, finalists=finalists,
                             on_progress=progress_lines())
    if trial is None and finalists:
        finalists_due(study, storage, FinalistOptions(data_dir=data_dir, device=device))
    plan = prepare_retrain(study, options)
    typer.echo(describe_plan(plan))

    def show(epoch: int, m: dict[str, Any]) -> None:
        mark = "  <- target reached" if m["test_acc"] >= plan.target else ""
        typer.echo(f"epoch {epoch}/{plan.cfg.epochs} loss {m['train_loss']:.4f} test_acc {m['test_acc']:.4f} "
                   f"(target {plan.target:g}) {m['images_per_s']:.0f} img/s ({m['train_time_s']:.1f}s){mark}")

    try:
        with interrupts_between_storage_calls(signal.SIGTERM):  # SIGTERM (timeout, a scheduler) stops it like Ctrl-C
            result = run_retrain(plan, report=show)
    except KeyboardInterrupt as e:  # the study records the retrain as interrupted; --resume continues it
        raise CommandInterrupted(interrupted_message(plan.out), exit_code=getattr(e, "exit_code", 130)) from None
    typer.echo(describe_result(result))
    _warn_outdated_exports(plan.out)


def describe_plan(plan: Any) -> str:
    from hpo.results.records import printable_lines

    value = f"{plan.trial.value:.4f}" if plan.trial.value is not None else "n/a"
    resuming = plan.options.resume and (plan.out / "checkpoint.pt").exists()
    return printable_lines([
        f"retraining trial {plan.trial.number} of study {plan.study.study_name!r} (search val_acc {value}) "
        f"on {f'{plan.data.train_size:,} of the' if plan.data.train_size else 'all'} training images, test accuracy "
        f"after every epoch",
        f"why this trial: {plan.reason}",
        f"params: {plan.trial.params}",
        plan.schedule_note,
        f"run folder: {plan.out}{' (resuming its checkpoint)' if resuming else ''}",
    ])


def describe_result(r: Any) -> str:
    if r.status == "reached":
        head = f"reached target {r.target:g} at epoch {r.epochs_to_target}"
    else:
        head = f"MISSED target {r.target:g}: not reached in {r.epochs_run} epochs"
    return (f"{head} (test acc final {r.final_test_acc:.4f}, best {r.best_test_acc:.4f} at epoch "
            f"{r.best_epoch}; {r.schedule})\nwrote {r.run_dir}; {len(r.artifacts)} artifacts in {r.artifact_dir}; "
            f"recorded on the study as {r.record_key!r} (earlier retrains are kept)")


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(
        help="A run folder written by `hpo retrain` (best.pt / final.pt) or `hpo train` (checkpoint.pt).",
        show_default=False)],
    format: Annotated[ExportFormat, typer.Option("--format", help=(
        "onnx, or pt2: a torch.export ExportedProgram (torch.export.load(path).module() runs it). torchscript is "
        "deprecated and writes the pt2 program."))] = ExportFormat.onnx,
    weights: Annotated[Weights, typer.Option(
        help="best (highest test accuracy) or final weights of a retrain; a `hpo train` folder has only its "
             "last epoch's.")] = Weights.best,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Output file (default: RUN_DIR/model.onnx or RUN_DIR/model.pt2).")] = None,
    data_dir: DataDirOpt = None,
    batch: Annotated[int, typer.Option(min=1, max=MAX_EXPORT_BATCH,
                                       help="Images in the PyTorch-vs-export check batch.")] = 64,
) -> None:
    """Export a run as a deployable model (uint8 HWC images in, log-probs out) checked against PyTorch."""
    from hpo.results.export import export_model

    r = export_model(run_dir, format.value, weights=weights.value, out=out, data_dir=data_dir, batch=batch)
    typer.echo(f"wrote {r.path} ({r.format}, {r.describe_weights()}; sidecar {r.path.name}.json)")
    if r.unfinished:
        typer.echo(f"warning: {run_dir} stopped at epoch {r.epoch} of its {r.epochs} (interrupted): partly trained "
                   f"weights; the `hpo train` command that wrote it, with --resume, finishes it", err=True)
    typer.echo(f"max |log-prob difference| vs PyTorch on {r.batch} {r.batch_source}: {r.max_abs_diff:.2e} "
               f"(tolerance {r.tolerance:g}): OK")
    if format == ExportFormat.torchscript:
        typer.echo("note: --format torchscript is deprecated (torch.jit is, upstream) and wrote a torch.export "
                   "program (.pt2) instead; use --format pt2", err=True)
    _warn_outdated_exports(run_dir)


def _warn_outdated_exports(run_dir: Path) -> None:
    """Exports in the run folder made from weights that have changed since (a resumed run), one line each."""
    from hpo.results.export import outdated_exports

    for line in outdated_exports(run_dir):
        typer.echo(f"warning: {line}", err=True)
