"""`hpo model summary`: the layer table of a CifarNet family member."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hpo.commands.options import FormatOpt, OutputFormat, echo_record

model_app = typer.Typer(no_args_is_help=True, help="Inspect CifarNet family members.")

ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="Run TOML: TrainConfig fields at the top level, a [model] table (widths, dilation, ...) "
                     "and an optional [data] table (train_size, val_size, ...); `hpo train` writes one as "
                     "OUT/config.toml.")]


@model_app.command("summary")
def model_summary(config: ConfigOpt = None, format: FormatOpt = OutputFormat.table) -> None:
    """Print the layer table, parameters, MACs per image and receptive field."""
    import dataclasses

    from cifarnet.config import TrainConfig, load_run_file
    from cifarnet.model import format_summary, model_stats

    model = (load_run_file(config)[0] if config else TrainConfig()).model
    stats = model_stats(model)
    record = {"model": dataclasses.asdict(model), **dataclasses.asdict(stats)}
    echo_record(record, format, format_summary(model, stats))
