"""Open an Optuna storage from a URL: SQLite files, PostgreSQL and the gRPC proxy behave the same to callers.

- Malformed or unreachable URLs raise `StorageError` with one line (password hidden).
- SQLite: a busy timeout and WAL journal, so several local workers wait for each other instead of failing
  with "database is locked"; opening retries while another process is still creating the schema;
  synchronous=NORMAL, so commits do not wait for the disk (safe against killed processes).
- PostgreSQL/MySQL: `pool_pre_ping`, so a connection dropped by the server (restart, idle timeout,
  pg_terminate_backend) is replaced at its next use; a storage call that was on the connection when it
  dropped is retried once on a new one. A connect timeout makes an unreachable host fail in seconds.
  PostgreSQL sessions commit asynchronously (POSTGRES_SESSION_OPTIONS).
- Optional heartbeat: a trial whose worker died is marked FAIL after `grace_period` and re-queued by optuna's
  `RetryHeartbeatStaleTrialCallback` (the retry keeps the parameters; system_attrs "failed_trial" links it).
- `grpc://HOST:PORT`: optuna's gRPC storage proxy (`serve_storage_proxy`, `hpo storage-proxy`), so hundreds
  of workers share a few database connections. optuna's proxy client has no heartbeats.
- `TrialSlotLock`: the mutex around "is budget left? then create the trial" that keeps K workers from
  overshooting a study's trial budget.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import signal
import sqlite3
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError

from cifarnet.redact import hide_password
from hpo.errors import StorageError

SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for another process's lock before giving up
CONNECT_TIMEOUT_S = 10  # unreachable database servers (and proxies) fail after this
OPEN_RETRIES = 5  # attempts while another process holds the lock during schema creation
# A commit returns before the server has flushed it to disk: storage calls get ~3x faster (5 -> 1.5 ms here).
# A crash of the database server may lose the last fraction of a second of commits, never consistency: a trial
# whose end was lost looks RUNNING, its heartbeat is stale, and it is failed and re-run.
POSTGRES_SESSION_OPTIONS = "-c synchronous_commit=off"
GRPC_SCHEME = "grpc"  # grpc://HOST:PORT names an `hpo storage-proxy`
GRPC_DEFAULT_PORT = 13000  # optuna's default
GRPC_EXTRA_HINT = "pip install 'cifarnet-hpo[distributed]' (or pip install grpcio)"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heartbeat:
    interval: int  # seconds between heartbeats of a running trial
    grace_period: int  # a RUNNING trial silent for this long belongs to a dead worker
    max_retry: int  # re-runs of one dead trial before it stays FAIL


def open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    """Like hpo.storage.open_storage, but a SQLite file that does not exist is an error, not a new empty
    database: read-only commands (status, best, retrain, dashboard) must not create one for a mistyped path."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        if not Path(parsed.database).expanduser().is_file():
            raise StorageError(f"no study database at {Path(parsed.database).expanduser().resolve()} "
                               f"({display_url(url)}); pass a study file or --storage")
    return open_storage(url)


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> optuna.storages.BaseStorage:
    """A storage for `url` (schema created if missing), or StorageError with a one-line reason.

    The heartbeat is ignored behind a gRPC proxy (optuna's proxy client does not implement it)."""
    parsed = parse_url(url)
    if parsed.drivername == GRPC_SCHEME:
        return _open_grpc_proxy(parsed)
    kwargs = _engine_kwargs(parsed)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed)
    for attempt in range(OPEN_RETRIES):
        try:
            with warnings.catch_warnings():
                # The heartbeat options are marked experimental, but are the documented crash-safety path.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return ReconnectingRDBStorage(url, engine_kwargs=kwargs, **_heartbeat_kwargs(heartbeat))
        except (OperationalError, optuna.exceptions.StorageInternalError) as e:
            # Locked: another process is creating the schema. Disconnect: the server dropped the connection.
            if is_transient(e) and attempt + 1 < OPEN_RETRIES:
                time.sleep(0.5 * 2**attempt)
                continue
            cause = e.orig if isinstance(e, OperationalError) else e.__cause__
            raise StorageError(f"cannot open storage {display_url(url)}: {_first_line(cause or e)}") from None
        except (SQLAlchemyError, RuntimeError, ValueError) as e:  # e.g. schema of a newer optuna
            raise StorageError(f"cannot open storage {display_url(url)}: {_first_line(e)}") from None
    raise AssertionError("unreachable")


def _heartbeat_kwargs(heartbeat: Heartbeat | None) -> dict:
    if heartbeat is None:
        return {}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry)
    return dict(heartbeat_interval=heartbeat.interval, grace_period=heartbeat.grace_period,
                heartbeat_stale_trial_callback=retry)


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether dead workers' trials are detected (RDB storage with a heartbeat; never behind the gRPC proxy)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def parse_url(url: str) -> URL:
    """Check the URL's syntax and that its database driver (or grpcio, for grpc://) is installed."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a non-numeric port
        raise StorageError(f"malformed storage URL {display_url(url)!r} (expected e.g. sqlite:///hpo.db, "
                           f"postgresql+psycopg://user@host:5432/db or grpc://host:{GRPC_DEFAULT_PORT})") from None
    if parsed.host and "@" in parsed.host:  # make_url split an unescaped '@' of the password into the host
        raise StorageError(f"malformed storage URL {display_url(url)!r}: write an '@' in the password as %40")
    if parsed.drivername == GRPC_SCHEME:
        _import_grpc(f"storage URL {display_url(url)}")
        return parsed
    if parsed.get_backend_name() == "sqlite" and parsed.host:  # sqlite://tmp/x.db: "tmp" parsed as a host
        raise StorageError(f"storage URL {url!r}: a SQLite URL has no host; a relative path takes three slashes "
                           f"(sqlite:///hpo.db) and an absolute one four (sqlite:////tmp/x.db)")
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StorageError(f"unsupported storage URL {display_url(url)}: no database driver for "
                           f"{parsed.drivername!r} (use sqlite:///FILE or postgresql+psycopg://...)") from None
    except ImportError as e:
        raise StorageError(f"storage URL {display_url(url)} needs a missing driver: {e}") from None
    return parsed


def display_url(url: str) -> str:
    """The URL with its password masked, for messages and listings, however malformed it is.

    SQLAlchemy's own masking first; then `hide_password`, because make_url cuts an unescaped '@' in the
    password at the first '@' (the rest would show as the host) and rejects some URLs outright."""
    try:
        parsed = make_url(url)
        if parsed.password is not None:  # else keep the user's spelling (rendering escapes e.g. '@' in paths)
            url = parsed.render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        pass
    return hide_password(str(url))


def is_locked(error: BaseException) -> bool:
    """SQLite's "database is locked" / "database table is locked" (another process holds the write lock)."""
    return any("is locked" in str(e) for e in _chain(error))


def is_disconnect(error: BaseException) -> bool:
    """The database connection died under a call (server restart, pg_terminate_backend, network)."""
    return any(isinstance(e, DBAPIError) and e.connection_invalidated for e in _chain(error))


def is_transient(error: BaseException) -> bool:
    """An error a worker outlives by waiting and carrying on: a lock held too long, a dropped connection."""
    return is_locked(error) or is_disconnect(error)


def _chain(error: BaseException | None, depth: int = 6) -> Iterator[BaseException]:
    """The error and what caused it: optuna wraps SQLAlchemy's errors, and sometimes retries on the broken
    session first, so the dropped connection can be a few links down."""
    while error is not None and depth:
        yield error
        error, depth = error.__cause__ or error.__context__, depth - 1


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls survive one dropped connection.

    pool_pre_ping replaces connections that died while idle in the pool; this covers the rarer case of a
    connection dying during a call: each call is one transaction, rolled back by the failure, so running it
    again on a fresh connection is safe. A heartbeat that fails twice is skipped (the next one comes within
    `heartbeat_interval`), so the heartbeat thread never dies and leaves a live trial to look dead.
    """

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, **kwargs)
        self._tune_sqlite()

    def __setstate__(self, state: dict[str, Any]) -> None:  # unpickling builds a new engine
        super().__setstate__(state)
        self._tune_sqlite()

    def _tune_sqlite(self) -> None:
        if self.engine.dialect.name == "sqlite":
            sqlalchemy.event.listen(self.engine, "connect", _sqlite_synchronous_normal)
            self.engine.dispose()  # connections opened for the schema check reconnect with the setting

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            _retry_once_on_disconnect(optuna.storages.RDBStorage.record_heartbeat)(self, trial_id)
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:
            if not is_transient(e):
                raise
            _log.warning("warning: heartbeat of trial id %d skipped: %s", trial_id, _first_line(e.__cause__ or e))


def _sqlite_synchronous_normal(dbapi_connection: Any, connection_record: Any) -> None:
    """WAL with synchronous=NORMAL: a commit no longer waits for an fsync (3.5 ms each on this machine's
    disk, several per storage call). A killed process loses nothing and the file cannot be corrupted; only
    a power loss or OS crash may roll back the last commits (SQLite's documented trade-off)."""
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _retry_once_on_disconnect(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with _interrupts_held():
            try:
                return method(self, *args, **kwargs)
            except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:
                if not is_disconnect(e):
                    raise
                return method(self, *args, **kwargs)
    return call


class _HeldInterrupt(threading.local):
    depth = 0  # storage calls in progress on this thread
    pending = False  # a Ctrl-C arrived during one


_held = _HeldInterrupt()


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """A Ctrl-C during the call is raised right after it (see `interrupts_between_storage_calls`)."""
    _held.depth += 1
    try:
        yield
    finally:
        _held.depth -= 1
        if _held.depth == 0 and _held.pending:
            _held.pending = False
            raise KeyboardInterrupt


@contextmanager
def interrupts_between_storage_calls() -> Iterator[None]:
    """Hold Ctrl-C while a storage call runs on the main thread and raise it as soon as the call returns.

    Why: KeyboardInterrupt raised inside a database call breaks the session it interrupts (seen: an
    AssertionError inside SQLAlchemy's commit; psycopg cancelling the query), so the trial could not then be
    recorded as interrupted. During training, Ctrl-C is raised at once as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if _held.depth:
            _held.pending = True
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _held.pending = False


# Each is one transaction of its own (so safe to run again): the storage API, and the private ones optuna's
# cache (_CachedStorage, which wraps every RDBStorage a study uses) calls instead of the public ones. Helpers
# that take a session (`*_without_commit`) run inside another call's transaction and are not retried.
RETRIED_CALLS = (
    "create_new_study", "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "set_study_user_attr", "set_study_system_attr",
    "get_all_studies", "create_new_trial", "set_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "get_best_trial",
    "get_trial_param", "get_trial_user_attrs", "get_trial_system_attrs",
    "_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id", "_get_stale_trial_ids",
)
for _name in RETRIED_CALLS:
    if hasattr(optuna.storages.RDBStorage, _name):  # private names may move in a later optuna
        setattr(ReconnectingRDBStorage, _name, _retry_once_on_disconnect(getattr(optuna.storages.RDBStorage, _name)))


def _engine_kwargs(url: URL) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if "options" not in url.query:  # the URL's own session options win
            connect_args["options"] = POSTGRES_SESSION_OPTIONS
    return {"pool_pre_ping": True, "connect_args": connect_args}


def _prepare_sqlite(url: URL) -> None:
    """Switch a file database to WAL once (it persists): readers never block the writer."""
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return
    path = Path(db).expanduser()
    if not path.parent.is_dir():
        raise StorageError(f"cannot open storage sqlite:///{db}: folder {path.parent} does not exist")
    try:
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(f"cannot open storage sqlite:///{db}: {e}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# --- gRPC storage proxy -------------------------------------------------------------------------------------

def _import_grpc(what: str) -> None:
    try:
        import grpc  # noqa: F401  (optuna imports it lazily, at the first call)
    except ImportError:
        raise StorageError(f"{what} needs the grpcio package: {GRPC_EXTRA_HINT}") from None


def _open_grpc_proxy(url: URL) -> optuna.storages.BaseStorage:
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
    _import_grpc("hpo storage-proxy")
    if parse_url(url).drivername == GRPC_SCHEME:
        raise StorageError("hpo storage-proxy serves a database: give it a sqlite:// or postgresql:// URL")
    # The proxy answers many workers from one process: optuna's cached storage saves it re-reading
    # finished trials (the server-side setup optuna's documentation asks for).
    storage = optuna.storages.get_storage(open_storage(url))
    if on_ready:
        on_ready(f"serving {display_url(url)} at grpc://{host}:{port} (Ctrl-C stops)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # optuna's run_grpc_proxy_server never stops its server: after Ctrl-C the server's threads keep the
        # process alive. Its make_server (private, covered by tests/hpo/test_distributed.py) lets us stop it.
        from optuna.storages._grpc.server import make_server

        try:
            server = make_server(storage, host, port)
            server.start()
        except RuntimeError as e:  # grpc: "Failed to bind to address ..."
            raise StorageError(f"cannot serve on {host}:{port}: {_first_line(e)}") from None
        try:
            server.wait_for_termination()
        finally:
            server.stop(grace=2).wait()


# --- one trial at a time through the budget check -------------------------------------------------------------

class TrialSlotLock:
    """A mutex, per study, around "is the run's budget spent? if not, create the next trial".

    Without it K workers that check at once all see one slot left and all start a trial. Held for
    milliseconds (a budget count and optuna's ask); released as soon as the trial exists. PostgreSQL: a
    session advisory lock, which the server drops with the connection of a killed worker. SQLite: an flock
    on a file beside the database, which the kernel drops with the process. Other storages (the gRPC proxy,
    MySQL) get no lock: K workers may then overshoot the budget by up to K - 1 trials.
    """

    def __init__(self, url: str, study_name: str):
        parsed = parse_url(url)
        self._acquire, self._release = _no_lock, _no_lock
        if parsed.get_backend_name() == "postgresql":
            self._acquire, self._release = _advisory_lock(parsed, study_name)
        elif parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            self._acquire, self._release = _file_lock(Path(parsed.database).expanduser(), study_name)
        self.held = False

    def acquire(self) -> None:
        self._acquire()
        self.held = True

    def release(self) -> None:
        """Idempotent: released where the trial starts, and again (a no-op) when the loop step ends."""
        if self.held:
            self.held = False
            self._release()


def _no_lock() -> None:
    return None


def _lock_key(study_name: str) -> int:
    digest = hashlib.blake2b(f"hpo trial slots: {study_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)  # pg_advisory_lock takes a signed 64-bit key


def _advisory_lock(url: URL, study_name: str) -> tuple[Callable[[], None], Callable[[], None]]:
    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, **_engine_kwargs(url))
    key = _lock_key(study_name)
    held: dict[str, Any] = {}  # the connection holding the lock, between acquire and release

    def acquire() -> None:
        for attempt in range(2):  # a connection dropped under the call is replaced once
            conn = engine.connect()
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                conn.commit()
                held["conn"] = conn
                return
            except DBAPIError as e:
                conn.close()
                if not (e.connection_invalidated and attempt == 0):
                    raise

    def release() -> None:
        conn = held.pop("conn")
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()
        except DBAPIError:
            conn.invalidate()  # the connection is gone, and the server released the lock with it
        finally:
            conn.close()

    return acquire, release


def _file_lock(db: Path, study_name: str) -> tuple[Callable[[], None], Callable[[], None]]:
    import fcntl  # POSIX; SQLite studies are local to one machine

    path = db.with_name(f"{db.name}.{_lock_key(study_name) & 0xFFFFFFFF:08x}.lock")
    handle = open(path, "a")
    return (lambda: fcntl.flock(handle, fcntl.LOCK_EX)), (lambda: fcntl.flock(handle, fcntl.LOCK_UN))
