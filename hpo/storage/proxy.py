"""optuna's gRPC storage proxy: workers reach one database through `hpo storage-proxy` (grpc://HOST:PORT)."""

from __future__ import annotations

import warnings
from typing import Callable

import optuna
from sqlalchemy.engine import URL

from hpo.errors import StorageError, first_line
from hpo.storage.urls import GRPC_DEFAULT_PORT, GRPC_SCHEME, display_url, import_grpc, parse_url

CONNECT_TIMEOUT_S = 10  # an unreachable proxy fails after this


def open_grpc_proxy(url: URL) -> optuna.storages.BaseStorage:
    host, port = url.host or "localhost", url.port or GRPC_DEFAULT_PORT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        proxy.wait_server_ready(timeout=CONNECT_TIMEOUT_S)
    except ConnectionError:
        proxy.close()
        raise StorageError(f"cannot reach the storage proxy at grpc://{host}:{port} within {CONNECT_TIMEOUT_S} s "
                           f"(start it with `hpo storage-proxy --storage URL --port {port}`)") from None
    return proxy


def serve_storage_proxy(url: str, host: str = "localhost", port: int = GRPC_DEFAULT_PORT,
                        on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the database at `url` to workers over gRPC (`--storage grpc://HOST:PORT`) until interrupted;
    `on_ready` gets a one-line description once the database is open."""
    from hpo.storage.opening import open_storage

    import_grpc("hpo storage-proxy")
    if parse_url(url).drivername == GRPC_SCHEME:
        raise StorageError("hpo storage-proxy serves a database: give it a sqlite:// or postgresql:// URL")
    # optuna's cached storage saves the proxy re-reading finished trials (its documented server-side setup).
    storage = optuna.storages.get_storage(open_storage(url))
    if on_ready:
        on_ready(f"serving {display_url(url)} at grpc://{host}:{port} (Ctrl-C stops)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
        except RuntimeError as e:  # grpc: "Failed to bind to address ..."
            raise StorageError(f"cannot serve on {host}:{port}: {first_line(e)}") from None
