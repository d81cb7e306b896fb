"""`hpo dashboard` (optuna-dashboard on a study's storage and artifacts) and `hpo report` (a standalone HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hpo.cli import app

StorageOpt = Annotated[Optional[str], typer.Option("--storage", help="Storage URL (overrides the study file's; "
                                                   "default: the study service's default database).")]


@app.command("dashboard")
def dashboard_cmd(
    study_file: Annotated[Optional[Path], typer.Argument(help="Study TOML: its storage and artifact folder.")] = None,
    storage: StorageOpt = None,
    artifact_dir: Annotated[Optional[Path], typer.Option(
        help="Extra artifact folder, read first and written by uploads (each study's own is always read).")] = None,
    host: Annotated[Optional[str], typer.Option(
        help="Interface to listen on (default from dashboard/config.toml: 127.0.0.1). The dashboard has no "
             "authentication: on any other interface everyone who can reach the port can read, change and delete "
             "studies and upload files; share it through an SSH tunnel or an authenticating reverse proxy.")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        "--allowed-host", help="A Host header name to answer besides localhost/127.0.0.1/[::1] and --host "
                               "(repeatable; e.g. the name a reverse proxy forwards). Others get 403.")] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port; 0 picks a free one (default from the config).")] = None,
    quiet: Annotated[Optional[bool], typer.Option(
        "--quiet/--access-log", help="Hide / show the per-request log (default from the config).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Dashboard TOML in optuna-dashboard's --from-config "
                                                        "layout (default: dashboard/config.toml).")] = None,
) -> None:
    """Serve optuna-dashboard on the study's storage and artifact store until Ctrl-C / SIGTERM."""
    from dashboard.app import CONFIG_TOML, run_dashboard

    run_dashboard(study_file, {"storage": storage, "artifact_dir": str(artifact_dir) if artifact_dir else None,
                               "host": host, "port": port, "quiet": quiet,
                               "allowed_hosts": allowed_host or None}, config or CONFIG_TOML, announce=typer.echo)


@app.command("report")
def report_cmd(
    study: Annotated[str, typer.Argument(help="Study name (or a study TOML).")],
    storage: StorageOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (plotly.js embedded).")] = Path(
        "report.html"),
) -> None:
    """Write one self-contained HTML report: history, curves, importances, size vs accuracy, retrain."""
    from dashboard.report import report_study

    path = report_study(study, storage, out)
    typer.echo(f"wrote {path}")
