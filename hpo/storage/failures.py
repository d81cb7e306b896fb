"""What a database error means for the caller: wait and try again, or give up with the driver's own words.

Classified on the drivers' exception classes and codes (sqlite3's error codes, psycopg's SQLSTATE classes and
its connection-level OperationalError), found down the chain of wrappers optuna and SQLAlchemy add.
"""

from __future__ import annotations

import sqlite3
from typing import Iterator

from sqlalchemy.exc import DBAPIError

from hpo.errors import first_line

# psycopg's classes for "the server ended this session or refuses new ones for now" (pg_terminate_backend, a
# crash, starting up or shutting down; a transaction left open past the server's idle_in_transaction timeout).
_SESSION_ENDED = ("AdminShutdown", "CrashShutdown", "CannotConnectNow", "IdleInTransactionSessionTimeout")
_SQLITE_LOCKED = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def chain(error: BaseException | None, depth: int = 6) -> Iterator[BaseException]:
    """The error and what caused it: optuna wraps SQLAlchemy's errors, so the cause can be a few links down."""
    while error is not None and depth:
        yield error
        error, depth = error.__cause__ or error.__context__, depth - 1


def _driver_errors(error: BaseException) -> Iterator[BaseException]:
    for e in chain(error):
        if isinstance(e, DBAPIError) and e.orig is not None:
            yield e.orig
        elif type(e).__module__.startswith(("psycopg", "sqlite3")):  # unwrapped, e.g. from an engine's connect hook
            yield e


def is_locked(error: BaseException) -> bool:
    """SQLite's busy / locked: another process held the write lock past the busy timeout."""
    return any(getattr(e, "sqlite_errorcode", None) in _SQLITE_LOCKED for e in _driver_errors(error))


def is_disconnect(error: BaseException) -> bool:
    """The database connection died under a call (server restart, pg_terminate_backend, network).

    SQLAlchemy marks most such errors `connection_invalidated`, but not one raised while a new engine sets up
    its first connection (every storage open), so the server's session-ending SQLSTATEs count too."""
    if any(isinstance(e, DBAPIError) and e.connection_invalidated for e in chain(error)):
        return True
    import psycopg

    ended = tuple(getattr(psycopg.errors, name) for name in _SESSION_ENDED)
    return any(isinstance(e, ended) for e in _driver_errors(error))


def is_server_gone(error: BaseException) -> bool:
    """No server answers, or the connection broke below SQL: libpq's own failures, which psycopg raises as an
    OperationalError without a SQLSTATE (refused, reset, closed unexpectedly)."""
    import psycopg

    return any(type(e) is psycopg.OperationalError and e.sqlstate is None for e in _driver_errors(error))


def is_connection_lost(error: BaseException) -> bool:
    """The connection died under a call, or no server answers a new one: what waiting for the server cures."""
    return is_disconnect(error) or is_server_gone(error)


def is_transient(error: BaseException) -> bool:
    """An error a worker outlives by waiting and carrying on: a lock held too long, a dropped connection, a
    server restarting."""
    return is_locked(error) or is_connection_lost(error)


def driver_words(error: BaseException) -> str:
    """The first line of what the database driver said (optuna and SQLAlchemy wrap it)."""
    return first_line(error.orig if isinstance(error, DBAPIError) else error.__cause__ or error)


def database_failure(error: BaseException) -> str | None:
    """What the database driver said, when a database call failed somewhere down `error`'s chain (optuna
    wraps it in StorageInternalError "... invalid data in the commit ...", or hides it behind an AssertionError
    "Should not reach." when the failed write was a trial's result); None for anything else."""
    return next((driver_words(e) for e in chain(error) if isinstance(e, DBAPIError)), None)
