"""Storage URLs: syntax, the driver each needs, and how they are shown (never with a password)."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from cifarnet.redact import hide_password
from hpo.errors import StorageError

GRPC_SCHEME = "grpc"  # grpc://HOST:PORT names an `hpo storage-proxy`
GRPC_DEFAULT_PORT = 13000  # optuna's default
GRPC_EXTRA_HINT = "pip install 'cifarnet-hpo[distributed]' (or pip install grpcio)"


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
        import_grpc(f"storage URL {display_url(url)}")
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


def is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
        and not url.database.startswith("file:")


def import_grpc(what: str) -> None:
    try:
        import grpc  # noqa: F401  (optuna imports it lazily, at the first call)
    except ImportError:
        raise StorageError(f"{what} needs the grpcio package: {GRPC_EXTRA_HINT}") from None
