"""`hpo retrain` (a study's best trial to a target test accuracy) and `hpo export` (a run as ONNX / TorchScript)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hpo.cli import DataDirOpt, DeviceOpt, app


@app.command("retrain")
def retrain_cmd(
    study: Annotated[str, typer.Argument(help="A studies/*.toml file, or a study name in --storage.")],
    storage: Annotated[Optional[str], typer.Option(
        help="Storage URL (default: the study file's, else sqlite:///hpo.db).")] = None,
    trial: Annotated[Optional[int], typer.Option(help="Trial number to retrain (default: the best).")] = None,
    target: Annotated[float, typer.Option(
        help="Test accuracy to stop at (first epoch reaching it). Changes nothing in the schedule.")] = 0.85,
    max_epochs: Annotated[int, typer.Option(
        help="Epoch budget; the LR schedule is sized for it (epochs = max_epochs).")] = 30,
    out: Annotated[Optional[Path], typer.Option(
        help="Run folder (default: runs/retrain/<study>/trial<N>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run folder's checkpoint after an interruption.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Training seed (default: the trial's).")] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Retrain a trial on all training images until its test accuracy reaches the target (or max epochs)."""
    from hpo.retrain import RetrainOptions, prepare_retrain, run_retrain

    options = RetrainOptions(storage=storage, trial=trial, target=target, max_epochs=max_epochs, out=out,
                             resume=resume, seed=seed, data_dir=data_dir, device=device)
    plan = prepare_retrain(study, options)
    typer.echo(plan.describe())

    def show(epoch: int, m: dict[str, Any]) -> None:
        mark = "  <- target reached" if m["test_acc"] >= plan.target else ""
        typer.echo(f"epoch {epoch}/{plan.cfg.epochs} loss {m['train_loss']:.4f} test_acc {m['test_acc']:.4f} "
                   f"(target {plan.target:g}) {m['images_per_s']:.0f} img/s ({m['train_time_s']:.1f}s){mark}")

    typer.echo(run_retrain(plan, report=show).summary())


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by `hpo retrain`.")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    weights: Annotated[str, typer.Option(help="best (highest test accuracy) or final weights.")] = "best",
    out: Annotated[Optional[Path], typer.Option(
        help="Output file (default: RUN_DIR/model.onnx or RUN_DIR/model.torchscript.pt).")] = None,
    data_dir: DataDirOpt = None,
    batch: Annotated[int, typer.Option(help="Images in the PyTorch-vs-export check batch.")] = 64,
) -> None:
    """Export a run as a deployable model (uint8 HWC images in, log-probs out) checked against PyTorch."""
    from hpo.export import export_model

    r = export_model(run_dir, format, weights=weights, out=out, data_dir=data_dir, batch=batch)
    typer.echo(f"wrote {r.path} ({r.format}, weights {r.weights.name}; sidecar {r.path.name}.json)")
    typer.echo(f"max |log-prob difference| vs PyTorch on {r.batch} {r.batch_source}: {r.max_abs_diff:.2e} "
               f"(tolerance {r.tolerance:g}): OK")
