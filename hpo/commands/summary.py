"""`hpo study summary`: what a study run achieved and what pruning saved (JSON for results/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cifarnet.run import write_json_atomic
from hpo.commands.study import study_app
from hpo.studyfile import DEFAULT_STORAGE
from hpo.summary import format_summary, summarize_study


@study_app.command("summary")
def summary_cmd(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: Annotated[str, typer.Option(help="Storage URL.")] = DEFAULT_STORAGE,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the summary as JSON.")] = None,
) -> None:
    """Trials complete/pruned/failed, best validation accuracy, wall time and epochs saved by pruning."""
    summary = summarize_study(storage, name)
    typer.echo(format_summary(summary))
    if out is not None:
        write_json_atomic(summary, out)
        typer.echo(f"wrote {out}")
