"""`hpo storage-proxy` (optuna's gRPC storage proxy for many workers) and `hpo worker`, the old name of
`hpo study join`, kept as a hidden alias so existing scripts keep working."""

from __future__ import annotations

from typing import Annotated

import typer

from hpo.commands.options import StorageOpt
from hpo.commands.study import join_cmd

app = typer.Typer()
GRPC_DEFAULT_PORT = 13000  # = hpo.storage.GRPC_DEFAULT_PORT, optuna's default (not imported: it pulls in optuna)

app.command("worker", hidden=True, help="Old name of `hpo study join`.")(join_cmd)


@app.command("storage-proxy")
def storage_proxy_cmd(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help=(
        "Address to listen on (0.0.0.0: every interface). The proxy has no authentication or encryption: on any "
        "interface but loopback everyone who can reach the port can read, change and delete every study in the "
        "database; keep it on a private network or reach it through an SSH tunnel."))] = "localhost",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = GRPC_DEFAULT_PORT,
) -> None:
    """Serve a study database to many workers over gRPC (optuna's storage proxy); workers then use
    --storage grpc://HOST:PORT. Needs the `distributed` extra (grpcio)."""
    import optuna

    from hpo.errors import StorageError
    from hpo.storage import serve_storage_proxy

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "Server started" / "Listening" repeat our line

    if storage is None:
        raise StorageError("give the database to serve: --storage URL (or HPO_STORAGE)")
    from hpo.exposure import exposure_warning

    warning = exposure_warning("the storage proxy", host, port, "read, change and delete every study in the database")
    if warning:
        typer.echo(warning, err=True)
    try:
        serve_storage_proxy(storage, host, port, on_ready=typer.echo)
    except KeyboardInterrupt:
        typer.echo("storage proxy stopped")
