"""Open an Optuna storage from a URL: SQLite files, PostgreSQL and the gRPC proxy behave the same to callers.

optuna's `RDBStorage` does the work (`pool_pre_ping`; heartbeat + `RetryHeartbeatStaleTrialCallback` fail and
re-queue a dead worker's trial), durable by default. Ours, each with the test that needs it: one-line
`StorageError`s (password hidden); SQLite WAL, busy timeout and BEGIN IMMEDIATE; read-only opens for the
inspecting commands; a call whose connection died under it, or whose server is restarting, tried again;
Ctrl-C held until a call ends (and signalled again if it landed in a finalizer); a trial's first heartbeat as
it is set RUNNING.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError

from cifarnet.redact import hide_password
from hpo.errors import Interrupted, StorageError, first_line

if TYPE_CHECKING:
    from hpo.studyfile import WorkerSpec

SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for another process's lock before giving up
CONNECT_TIMEOUT_S = 10  # unreachable database servers (and proxies) fail after this
OPEN_RETRIES = 5  # attempts while another process holds the lock during schema creation
# PostgreSQL SQLSTATEs for "the server ended this session or refuses new ones for now": admin_shutdown
# (pg_terminate_backend), crash_shutdown, cannot_connect_now (starting up or shutting down); and libpq's words
# for a session that ended with no code (SQLAlchemy's psycopg2 dialect matches the same texts).
SERVER_ENDED_SESSION = frozenset({"57P01", "57P02", "57P03", "25P03"})  # 25P03: STALLED_TRANSACTION_S passed
SESSION_ENDED_TEXTS = ("server closed the connection unexpectedly", "terminating connection")
# libpq's words when no server answers at all (restarting, failing over, a network blip); they carry no SQLSTATE.
SERVER_GONE_TEXTS = ("Connection refused", "could not connect to server", "connection failed")
REDELIVER_S = 0.05  # an interrupt lost inside a finalizer is signalled again after this (_deliver_again)
RECONNECT_WINDOW_S = 60  # a storage call whose server went away is tried again for this long (a restart)
# PostgreSQL ends a session left inside a transaction for this long: a worker frozen or cut off mid-transaction
# (a paused VM, a lost network) would otherwise hold its row locks, and every other worker would wait on them
# (tests/hpo/test_worker_loop.py::test_a_worker_frozen_inside_a_transaction_does_not_block_the_others).
STALLED_TRANSACTION_S = 10
GRPC_SCHEME = "grpc"  # grpc://HOST:PORT names an `hpo storage-proxy`
GRPC_DEFAULT_PORT = 13000  # optuna's default
GRPC_EXTRA_HINT = "pip install 'cifarnet-hpo[distributed]' (or pip install grpcio)"
_log = logging.getLogger(__name__)


def open_existing_storage(url: str, read_only: bool = False,
                          heartbeat: WorkerSpec | None = None) -> optuna.storages.BaseStorage:
    """Like `open_storage`, but a SQLite file that does not exist is an error, not a new empty database."""
    parsed = parse_url(url)
    if _sqlite_file(parsed) and not Path(parsed.database).expanduser().is_file():
        raise StorageError(f"no study database at {Path(parsed.database).expanduser().resolve()} "
                           f"({display_url(url)}); pass a study file or --storage")
    return open_storage(url, heartbeat=heartbeat, read_only=read_only)


def open_storage(url: str, heartbeat: WorkerSpec | None = None, read_only: bool = False) -> optuna.storages.BaseStorage:
    """A storage for `url` (schema created if missing, unless read-only), or StorageError with a one-line reason.
    With `heartbeat` (a study's [workers]), dead workers' trials are failed and re-queued; not behind a gRPC
    proxy (optuna's proxy client does not implement it)."""
    parsed = parse_url(url)
    if parsed.drivername == GRPC_SCHEME:
        return _open_grpc_proxy(parsed)
    if _sqlite_file(parsed):
        _check_sqlite(parsed, read_only)
        if read_only:
            parsed = parsed.set(database=f"file:{Path(parsed.database).expanduser()}?mode=ro",
                                query={**parsed.query, "uri": "true"})
    for attempt in range(OPEN_RETRIES):
        try:
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
        except (OperationalError, optuna.exceptions.StorageInternalError) as e:
            # Locked: another process is creating the schema. Disconnect: the server dropped the connection.
            # Not "connection refused": a mistyped host or port fails at once.
            if (is_locked(e) or is_disconnect(e)) and attempt + 1 < OPEN_RETRIES:
                time.sleep(0.5 * 2**attempt)
                continue
            raise _open_error(url, e, read_only) from None
        except (SQLAlchemyError, RuntimeError, ValueError) as e:  # e.g. schema of a newer optuna
            raise _open_error(url, e, read_only) from None
    raise AssertionError("unreachable")


def _open_error(url: str, error: BaseException, read_only: bool) -> StorageError:
    cause = _driver_words(error)
    # SQLite's "no such table", PostgreSQL's 'relation "version_info" does not exist'; not a missing database
    # (tests/hpo/test_storage.py::test_read_only_commands_name_a_postgresql_database_that_does_not_exist).
    if read_only and ("no such table" in cause or ('relation "' in cause and "does not exist" in cause)):
        cause = "it holds no optuna studies"
    return StorageError(f"cannot open storage {display_url(url)}: {cause}")


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
    """The URL with its password masked, for messages and listings, however malformed it is."""
    return hide_password(str(url))


def is_locked(error: BaseException) -> bool:
    """SQLite's "database is locked" / "database table is locked" (another process holds the write lock)."""
    return any("is locked" in str(e) for e in _chain(error))


def is_disconnect(error: BaseException) -> bool:
    """The database connection died under a call (server restart, pg_terminate_backend, network).

    SQLAlchemy marks most such errors `connection_invalidated`, but not one raised while a new engine sets up
    its first connection (every storage open: tests/hpo/test_storage.py::
    test_opening_survives_connections_being_terminated), so the server's codes and libpq's words count too."""
    return any(isinstance(e, DBAPIError) and (
        e.connection_invalidated or getattr(e.orig, "sqlstate", None) in SERVER_ENDED_SESSION
        or any(text in str(e.orig) for text in SESSION_ENDED_TEXTS)) for e in _chain(error))


def is_server_gone(error: BaseException) -> bool:
    """No server answers a new connection (connection refused: restarting, failing over, unreachable)."""
    return any(isinstance(e, DBAPIError) and any(text in str(e.orig) for text in SERVER_GONE_TEXTS)
               for e in _chain(error))


def is_connection_lost(error: BaseException) -> bool:
    """The connection died under a call, or no server answers a new one: what waiting for the server cures."""
    return is_disconnect(error) or is_server_gone(error)


def is_transient(error: BaseException) -> bool:
    """An error a worker outlives by waiting and carrying on: a lock held too long, a dropped connection, a
    server restarting."""
    return is_locked(error) or is_connection_lost(error)


def _driver_words(error: BaseException) -> str:
    """The first line of what the database driver said (optuna and SQLAlchemy wrap it)."""
    return first_line(error.orig if isinstance(error, DBAPIError) else error.__cause__ or error)


def database_failure(error: BaseException) -> str | None:
    """What the database driver said, when a database call failed somewhere down `error`'s chain (optuna
    wraps it in StorageInternalError "... invalid data in the commit ...", or hides it behind an AssertionError
    "Should not reach." when the failed write was a trial's result); None for anything else."""
    return next((_driver_words(e) for e in _chain(error) if isinstance(e, DBAPIError)), None)


def _chain(error: BaseException | None, depth: int = 6) -> Iterator[BaseException]:
    """The error and what caused it: optuna wraps SQLAlchemy's errors, so the cause can be a few links down."""
    while error is not None and depth:
        yield error
        error, depth = error.__cause__ or error.__context__, depth - 1


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls survive their connection dying under them or the server restarting, and are not
    cut by Ctrl-C.

    Ours because optuna's behaviour loses data: pool_pre_ping only replaces connections that died while idle;
    one that dies during a call fails it, and with it the trial or the worker (without this class,
    tests/hpo/test_distributed.py::test_worker_survives_its_database_connections_being_dropped fails: "error:
    unexpected StorageInternalError: An exception is raised during the commit"; and a server restart killed
    every worker: tests/hpo/test_distributed.py::test_workers_wait_out_a_database_restart). Each call is one
    transaction, rolled back by the failure, so running it again on a fresh connection is safe. A heartbeat
    that fails anyway is skipped (the next comes within `heartbeat_interval`), so the heartbeat thread never
    dies and leaves a live trial to look dead.
    """

    started_trial_id: int | None = None  # the trial this process last set RUNNING (hpo.worker records its interrupt)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            _retry_on_disconnect(optuna.storages.RDBStorage.record_heartbeat)(self, trial_id)
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:
            if not is_transient(e):
                raise

    # A trial gets its first heartbeat as it becomes RUNNING, in the same uninterruptible stretch. optuna's own
    # starts only after `ask` returns, and a RUNNING trial with no heartbeat is never stale: a worker killed or
    # interrupted in between left a trial RUNNING for ever, never re-run, and the other workers waited for it
    # (tests/hpo/test_distributed.py::test_a_trial_interrupted_as_it_starts_is_requeued,
    # ::test_a_worker_killed_as_a_trial_starts_leaves_it_to_be_rerun).
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        with _interrupts_held():
            trial = _retry_on_disconnect(optuna.storages.RDBStorage._create_new_trial)(self, study_id, template_trial)
            if trial.state == TrialState.RUNNING:
                self._started(self.get_trial_id_from_study_id_trial_number(study_id, trial.number))
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        tries = 0

        def once(storage: ReconnectingRDBStorage, *args: Any) -> bool:
            nonlocal tries
            tries += 1
            return optuna.storages.RDBStorage.set_trial_state_values(storage, *args)

        with _interrupts_held():
            try:
                updated = _retry_on_disconnect(once)(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Tried again after the connection died during a commit the server did make: the trial holds this
                # very result (tests/hpo/test_distributed.py::test_a_result_whose_commit_reply_was_lost_is_not_a_crash).
                # On a first try it was finished by another process (its stale-trial check failed the trial
                # first), and optuna's fail_stale_trials must get the error or it queues a second re-run
                # (tests/hpo/test_storage.py::test_two_workers_failing_the_same_stale_trial_queue_one_rerun).
                if tries == 1:
                    raise
                stored = self.get_trial(trial_id)
                if stored.state != state or stored.values != (list(values) if values is not None else None):
                    raise
                updated = True
            if updated and state == TrialState.RUNNING:  # popped from the queue
                self._started(trial_id)
        return updated

    def _started(self, trial_id: int) -> None:
        self.started_trial_id = trial_id
        if self.get_heartbeat_interval() is not None:
            self.record_heartbeat(trial_id)


def _retry_on_disconnect(method: Callable) -> Callable:
    """At once, then with growing pauses while the server is gone, for up to RECONNECT_WINDOW_S."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        deadline, pause = time.monotonic() + RECONNECT_WINDOW_S, 0.0
        while True:
            with _interrupts_held():
                try:
                    return method(self, *args, **kwargs)
                except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:
                    if not is_connection_lost(e) or time.monotonic() + pause > deadline \
                            or (pause and _received is not None):
                        raise
                    if pause == 0.5:
                        _log.warning("warning: database unreachable (%s); retrying for up to %d s",
                                     _driver_words(e), RECONNECT_WINDOW_S)
            time.sleep(pause)  # outside the held region: Ctrl-C ends the wait at once
            pause = min(max(2 * pause, 0.5), 8.0)
    return call


# Each is one transaction of its own (so safe to run again): the storage API, and the ones optuna's cache
# (which wraps every RDBStorage a study uses) calls instead of the public ones. Looked up by name: one a later
# optuna renames is not retried, and tests/hpo/test_storage.py::test_every_retried_storage_call_exists_in_this_optuna
# fails.
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
    if hasattr(optuna.storages.RDBStorage, _name) and _name not in vars(ReconnectingRDBStorage):
        setattr(ReconnectingRDBStorage, _name, _retry_on_disconnect(getattr(optuna.storages.RDBStorage, _name)))


class _HeldInterrupt(threading.local):
    depth = 0  # storage calls in progress on this thread
    pending: BaseException | None = None  # the interrupt that arrived during one


_held = _HeldInterrupt()
# The Ctrl-C / SIGTERM received: from then on no storage call waits for a lost database, so the worker exits
# at once (tests/hpo/test_distributed.py::test_ctrl_c_while_the_database_is_gone_exits_at_once).
_received: Interrupted | None = None


def interrupt_received() -> Interrupted | None:
    """The interrupt that arrived inside `interrupts_between_storage_calls`, if one did."""
    return _received


@contextmanager
def _interrupts_held() -> Iterator[None]:
    _held.depth += 1
    try:
        yield
    finally:
        _held.depth -= 1
        if _held.depth == 0 and _held.pending is not None:
            pending, _held.pending = _held.pending, None
            raise pending


@contextmanager
def interrupts_between_storage_calls(*signals: int) -> Iterator[None]:
    """Raise KeyboardInterrupt for SIGINT (and `signals`, e.g. SIGTERM) on the main thread, but only between
    storage calls: one raised inside a database call breaks the session it interrupts (seen: an
    AssertionError inside SQLAlchemy's commit), so the trial could not be recorded as interrupted
    (tests/hpo/test_distributed.py::test_ctrl_c_fails_the_trial_and_the_next_start_resumes). During training
    the interrupt is raised at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        global _received
        interrupt = _received = Interrupted(signum)
        if not _held.depth:
            raise interrupt
        _held.pending = _held.pending or interrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, *signals)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, functools.partial(_deliver_again, sys.unraisablehook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _held.pending = None
        global _received
        _received = None


def _deliver_again(previous_hook: Callable[[Any], None], unraisable: Any) -> None:
    """Python only prints an exception raised inside a finalizer or weakref callback: an interrupt that landed
    in one was lost (seen: a Ray worker cancelled on Ctrl-C ran on while the driver waited for it;
    tests/hpo/test_storage.py::test_an_interrupt_that_lands_in_a_finalizer_is_not_lost). Signal it again, a
    moment later from another thread: raised from here, it would be handled inside this hook and ignored too."""
    if isinstance(unraisable.exc_value, Interrupted):
        resend = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), unraisable.exc_value.signum))
        resend.daemon = True
        resend.start()
    else:
        previous_hook(unraisable)


def _begin_immediate(engine: sqlalchemy.Engine) -> None:
    """Each SQLite transaction takes the write lock as it begins (SQLAlchemy's documented recipe). Why:
    Python's sqlite3 begins a transaction only at the first write, so optuna's "is this queued trial still
    WAITING? then mark it RUNNING" is not atomic there, and two workers popped the same queued trial and
    both ran it, one then dying with "Cannot tell a COMPLETE trial"
    (tests/hpo/test_study_cli.py::test_parallel_workers_share_one_storage[sqlite]). PostgreSQL locks the row."""
    sqlalchemy.event.listen(engine, "connect", lambda dbapi_conn, record: setattr(dbapi_conn, "isolation_level", None))
    sqlalchemy.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # connections opened for the schema check reconnect with the setting


def _sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
        and not url.database.startswith("file:")


def _engine_kwargs(url: URL, read_only: bool) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        settings = [url.query.get("options", ""), f"-c idle_in_transaction_session_timeout={STALLED_TRANSACTION_S}s"]
        connect_args["options"] = " ".join(settings + (["-c default_transaction_read_only=on"] if read_only else []))
    return {"pool_pre_ping": True, "connect_args": connect_args}


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
