"""`hpo dashboard` (optuna-dashboard on a study's storage and artifacts) and `hpo report` (a standalone HTML).

They live in the dashboard package, which builds on hpo (never the other way): `hpo` finds this typer app through
the "hpo.commands" entry point in pyproject.toml."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Annotated, Optional

import typer

from hpo.commands.options import StorageOpt

app = typer.Typer()


@app.command("dashboard")
def dashboard_cmd(
    study_file: Annotated[Optional[Path], typer.Argument(
        help="Study TOML: its storage and artifact folder.", show_default=False)] = None,
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
    port: Annotated[Optional[int], typer.Option(
        min=0, max=65535, help="TCP port; 0 picks a free one (default from the config).")] = None,
    quiet: Annotated[Optional[bool], typer.Option(
        "--quiet/--access-log", help="Hide / show the per-request log (default from the config).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Dashboard TOML in optuna-dashboard's --from-config "
                                                        "layout (default: dashboard/config.toml).")] = None,
) -> None:
    """Serve optuna-dashboard on the study's storage and artifact store until Ctrl-C / SIGTERM."""
    from dashboard.app import CONFIG_TOML, run_dashboard
    from hpo.errors import HPOError

    try:
        run_dashboard(study_file, {"storage": storage, "artifact_dir": str(artifact_dir) if artifact_dir else None,
                                   "host": host, "port": port, "quiet": quiet,
                                   "allowed_hosts": allowed_host or None}, config or CONFIG_TOML,
                      announce=typer.echo)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        raise HPOError(f"port {port if port is not None else '(the config default)'} is in use: pass another "
                       f"--port, or --port 0 to pick a free one") from None


@app.command("report")
def report_cmd(
    study: Annotated[str, typer.Argument(help="Study name (or a study TOML).", show_default=False)],
    storage: StorageOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (plotly.js embedded).")] = Path(
        "report.html"),
    ablation: Annotated[Optional[Path], typer.Option(
        help="benchmarks/ablation.py's summary.json: its effect sizes beside the importances (default: "
             "results/ablation/summary.json when it is in the current folder).")] = None,
) -> None:
    """Write one self-contained HTML report: history, curves, importances beside the ablation's effects, size vs
    accuracy, pruning, finalists, retrains."""
    from dashboard.report import report_study

    default = Path("results/ablation/summary.json")
    path = report_study(study, storage, out, ablation or (default if default.is_file() else None))
    typer.echo(f"wrote {path}")
