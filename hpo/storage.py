"""Open an Optuna RDB storage from a URL: SQLite files and PostgreSQL behave the same to callers.

- Malformed or unreachable URLs raise `StorageError` with one line (password hidden).
- SQLite: a busy timeout and WAL journal, so several local workers wait for each other instead of failing
  with "database is locked"; opening retries while another process is still creating the schema.
- PostgreSQL/MySQL: `pool_pre_ping`, so a connection dropped by the server is replaced instead of failing a
  trial hours into a study; a connect timeout, so an unreachable host fails in seconds.
- Optional heartbeat: a trial whose worker died is marked FAIL after `grace_period` and re-queued by optuna's
  `RetryHeartbeatStaleTrialCallback` (the retry keeps the parameters; system_attrs "failed_trial" links it).
"""

from __future__ import annotations

import sqlite3
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from hpo.errors import StorageError

SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for another process's lock before giving up
CONNECT_TIMEOUT_S = 10  # unreachable database servers fail after this
OPEN_RETRIES = 5  # attempts while another process holds the lock during schema creation


@dataclass(frozen=True)
class Heartbeat:
    interval: int  # seconds between heartbeats of a running trial
    grace_period: int  # a RUNNING trial silent for this long belongs to a dead worker
    max_retry: int  # re-runs of one dead trial before it stays FAIL


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> optuna.storages.BaseStorage:
    """An RDBStorage for `url` (schema created if missing), or StorageError with a one-line reason."""
    parsed = parse_url(url)
    kwargs = _engine_kwargs(parsed)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed)
    for attempt in range(OPEN_RETRIES):
        try:
            with warnings.catch_warnings():
                # The heartbeat options are marked experimental, but are the documented crash-safety path.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **_heartbeat_kwargs(heartbeat))
        except OperationalError as e:
            if is_locked(e) and attempt + 1 < OPEN_RETRIES:
                time.sleep(0.5 * 2**attempt)
                continue
            raise StorageError(f"cannot open storage {display_url(url)}: {_first_line(e.orig or e)}") from None
        except (SQLAlchemyError, RuntimeError, ValueError) as e:  # e.g. schema of a newer optuna
            raise StorageError(f"cannot open storage {display_url(url)}: {_first_line(e)}") from None
    raise AssertionError("unreachable")


def _heartbeat_kwargs(heartbeat: Heartbeat | None) -> dict:
    if heartbeat is None:
        return {}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry)
    return dict(heartbeat_interval=heartbeat.interval, grace_period=heartbeat.grace_period,
                heartbeat_stale_trial_callback=retry)


def parse_url(url: str) -> URL:
    """Check the URL's syntax and that its database driver is installed."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"malformed storage URL {url!r} (expected e.g. sqlite:///hpo.db or "
                           f"postgresql+psycopg://user@host:5432/db)") from None
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StorageError(f"unsupported storage URL {display_url(url)}: no database driver for "
                           f"{parsed.drivername!r} (use sqlite:///FILE or postgresql+psycopg://...)") from None
    except ImportError as e:
        raise StorageError(f"storage URL {display_url(url)} needs a missing driver: {e}") from None
    return parsed


def display_url(url: str) -> str:
    """The URL with its password masked, for messages and listings."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def is_locked(error: BaseException) -> bool:
    """SQLite's "database is locked" / "database table is locked" (another process holds the write lock)."""
    return "is locked" in str(error)


def _engine_kwargs(url: URL) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.get_backend_name() == "postgresql" else {}
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

