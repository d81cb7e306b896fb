"""Opening a storage: SQLite files (WAL, busy timeout, BEGIN IMMEDIATE, read-only opens), PostgreSQL (connect
timeout, stalled transactions ended by the server, read-only sessions) and the gRPC proxy, one way for callers."""

from __future__ import annotations

import atexit
import sqlite3
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from hpo.errors import StorageError, first_line
from hpo.storage.failures import driver_words, is_disconnect, is_locked
from hpo.storage.optuna_internals import ReconnectingRDBStorage
from hpo.storage.proxy import open_grpc_proxy
from hpo.storage.retry import Backoff, retry
from hpo.storage.urls import GRPC_SCHEME, display_url, is_sqlite_file, parse_url

if TYPE_CHECKING:
    from hpo.definition.study_file import WorkerSpec

SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for another process's lock before giving up
CONNECT_TIMEOUT_S = 10  # unreachable database servers fail after this
# Opening while another process holds the lock during schema creation, or the server ends a new session
# during its setup; not "connection refused": a mistyped host or port fails at once.
OPEN_BACKOFF = Backoff(first=0.5, longest=8.0, tries=5)
# PostgreSQL ends a session left inside a transaction for this long: a worker frozen or cut off mid-transaction
# (a paused VM, a lost network) would otherwise hold its row locks, and every other worker would wait on them
# (test_a_worker_frozen_inside_a_transaction_does_not_block_the_others).
STALLED_TRANSACTION_S = 10


def open_existing_storage(url: str, read_only: bool = False,
                          heartbeat: WorkerSpec | None = None) -> optuna.storages.BaseStorage:
    """Like `open_storage`, but a SQLite file that does not exist is an error, not a new empty database."""
    parsed = parse_url(url)
    if is_sqlite_file(parsed) and not Path(parsed.database).expanduser().is_file():
        raise StorageError(f"no study database at {Path(parsed.database).expanduser().resolve()} "
                           f"({display_url(url)}); pass a study file or --storage")
    return open_storage(url, heartbeat=heartbeat, read_only=read_only)


def open_storage(url: str, heartbeat: WorkerSpec | None = None, read_only: bool = False) -> optuna.storages.BaseStorage:
    """A storage for `url` (schema created if missing, unless read-only), or StorageError with a one-line reason.
    With `heartbeat` (a study's [workers]), dead workers' trials are failed and re-queued; not behind a gRPC
    proxy (optuna's proxy client does not implement it)."""
    parsed = parse_url(url)
    if parsed.drivername == GRPC_SCHEME:
        return open_grpc_proxy(parsed)
    if is_sqlite_file(parsed):
        _check_sqlite(parsed, read_only)
        if not read_only:
            _checkpoint_at_exit(Path(parsed.database).expanduser())
        if read_only:
            parsed = parsed.set(database=f"file:{Path(parsed.database).expanduser()}?mode=ro",
                                query={**parsed.query, "uri": "true"})
    try:
        return retry(lambda: _open_rdb(parsed, heartbeat, read_only),
                     lambda e: isinstance(e, (OperationalError, optuna.exceptions.StorageInternalError))
                     and (is_locked(e) or is_disconnect(e)), OPEN_BACKOFF)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, RuntimeError, ValueError) as e:
        raise _open_error(url, e, read_only) from None  # RuntimeError, ValueError: e.g. schema of a newer optuna


def _open_rdb(parsed: URL, heartbeat: WorkerSpec | None, read_only: bool) -> ReconnectingRDBStorage:
    with warnings.catch_warnings():
        # The heartbeat options are marked experimental, but are the documented crash-safety path.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        heartbeat_kwargs = {} if heartbeat is None else dict(
            heartbeat_interval=heartbeat.heartbeat_interval, grace_period=heartbeat.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(heartbeat.max_retry))
        storage = ReconnectingRDBStorage(parsed.render_as_string(hide_password=False),
                                         engine_kwargs=_engine_kwargs(parsed, read_only),
                                         skip_table_creation=read_only, **heartbeat_kwargs)
    if parsed.get_backend_name() == "sqlite" and not read_only:
        _begin_immediate(storage.engine)
    return storage


def _open_error(url: str, error: BaseException, read_only: bool) -> StorageError:
    cause = driver_words(error)
    # SQLite's "no such table", PostgreSQL's 'relation "version_info" does not exist': a database without
    # optuna's schema (test_read_only_commands_name_a_postgresql_database_that_does_not_exist).
    if read_only and ("no such table" in cause or ('relation "' in cause and "does not exist" in cause)):
        cause = "it holds no optuna studies"
    return StorageError(f"cannot open storage {display_url(url)}: {cause}")


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether dead workers' trials are detected (RDB storage with a heartbeat; never behind the gRPC proxy)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def _begin_immediate(engine: sqlalchemy.Engine) -> None:
    """Each SQLite transaction takes the write lock as it begins (SQLAlchemy's documented recipe). Why:
    Python's sqlite3 begins a transaction only at the first write, so optuna's "is this queued trial still
    WAITING? then mark it RUNNING" is not atomic there, and two workers popped the same queued trial and
    both ran it (test_parallel_workers_share_one_storage). PostgreSQL locks the row."""
    sqlalchemy.event.listen(engine, "connect", lambda dbapi_conn, record: setattr(dbapi_conn, "isolation_level", None))
    sqlalchemy.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # connections opened for the schema check reconnect with the setting


def _engine_kwargs(url: URL, read_only: bool) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        settings = [url.query.get("options", ""), f"-c idle_in_transaction_session_timeout={STALLED_TRANSACTION_S}s"]
        connect_args["options"] = " ".join(settings + (["-c default_transaction_read_only=on"] if read_only else []))
    return {"pool_pre_ping": True, "connect_args": connect_args}


_WRITTEN: set[Path] = set()  # SQLite files this process opened for writing


def _checkpoint_at_exit(path: Path) -> None:
    """A writer that ends leaves a complete database file: committed transactions live in the -wal file until
    SQLite checkpoints them, which it does only when the last connection closes cleanly, and a process's pooled
    connections are not closed at exit. So the file alone, copied or moved, lost the latest trials
    (test_a_database_copied_after_the_writer_ended_holds_every_trial). Best effort: a database another process
    still uses is checkpointed by whichever writer ends last."""
    if not _WRITTEN:
        atexit.register(checkpoint_written)
    _WRITTEN.add(path.resolve())


def checkpoint_written() -> None:
    """Move every committed transaction of the SQLite files this process wrote into the main file."""
    for path in sorted(_WRITTEN):
        try:
            conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        except sqlite3.Error:
            pass  # busy (another writer still works: its own exit checkpoints) or gone: nothing to lose here


def _check_sqlite(url: URL, read_only: bool) -> None:
    """Refuse a corrupt file (once, with SQLite's own words) and switch a writable one to WAL (it persists)."""
    path = Path(url.database).expanduser()
    if not path.parent.is_dir():
        raise StorageError(f"cannot open storage sqlite:///{url.database}: folder {path.parent.absolute()} "
                           f"does not exist")
    try:
        with sqlite3.connect(f"file:{path}?mode={'ro' if read_only else 'rwc'}", uri=True,
                             timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"database disk image is malformed ({problems[0]})")
            if not read_only:
                conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(f"cannot open storage sqlite:///{url.database}: {first_line(e)}") from None
