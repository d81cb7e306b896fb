"""Open an Optuna storage from a URL: SQLite files, PostgreSQL and the gRPC proxy behave the same to callers.

optuna's `RDBStorage` does the work (`pool_pre_ping`; heartbeat + `RetryHeartbeatStaleTrialCallback` fail and
re-queue a dead worker's trial), durable by default. Ours, each module with the tests that need it:

- `urls`: syntax, drivers, passwords hidden in everything shown.
- `opening`: one-line `StorageError`s; SQLite WAL, busy timeout and BEGIN IMMEDIATE; read-only opens.
- `failures`: what a driver's error means (wait and retry, or stop with its words), by exception class.
- `retry`: the one retry helper (opening, dropped connections, locks).
- `optuna_internals`: the only module that touches optuna's internals: calls whose connection died under
  them tried again, and a trial's first heartbeat as it is set RUNNING.
- `signals`: Ctrl-C / SIGTERM held until a storage call ends.
- `proxy`: optuna's gRPC storage proxy.
"""

from hpo.storage.failures import database_failure, is_connection_lost, is_locked, is_transient
from hpo.storage.opening import heartbeat_enabled, open_existing_storage, open_storage
from hpo.storage.optuna_internals import RECONNECT_WINDOW_S
from hpo.storage.proxy import serve_storage_proxy
from hpo.storage.retry import Backoff, retry
from hpo.storage.signals import interrupt_received, interrupts_between_storage_calls
from hpo.storage.urls import GRPC_DEFAULT_PORT, display_url, parse_url

__all__ = [
    "open_storage", "open_existing_storage", "parse_url", "display_url", "heartbeat_enabled",
    "serve_storage_proxy", "GRPC_DEFAULT_PORT", "RECONNECT_WINDOW_S", "database_failure", "is_connection_lost",
    "is_locked", "is_transient", "Backoff", "retry", "interrupt_received", "interrupts_between_storage_calls",
]
