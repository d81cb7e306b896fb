"""Files written whole or not at all: a crash or a kill never leaves a half-written checkpoint, metrics file or
chart behind (the reader sees the old file or the new one).

The temporary file is created exclusively (O_CREAT | O_EXCL | O_NOFOLLOW) under an unpredictable name: a
symlink planted at a predictable temporary name in a shared folder (the artifact store many machines write)
would otherwise make us overwrite whatever file it points to."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from cifarnet.errors import OutputError

_EXCLUSIVE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
              | getattr(os, "O_BINARY", 0))


def output_folder(path: str | Path) -> Path:
    """`path`, created if missing; OutputError when a file is in the way or the folder cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "a file of that name is in the way" if isinstance(e, FileExistsError) else e.strerror or e
        raise OutputError(f"cannot create folder {path}: {reason}") from e
    return path


def output_file(path: str | Path) -> Path:
    """`path` as a file to write: not a folder, its folder created; else OutputError."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder (name a file)")
    output_folder(path.parent)
    return path


def create_temporary(path: Path) -> tuple[int, Path]:
    """A new empty file beside `path`, opened for writing: (fd, its path). Created exclusively under a random
    name, so nothing planted in the folder beforehand (a symlink, a file) is ever opened or followed. Mode
    0o666 less the umask, as for any file we write."""
    for _ in range(16):  # a name taken by chance (2**-64) or planted: draw another
        tmp = path.with_name(f".{path.name[:200]}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, _EXCLUSIVE, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def _temporary_beside(path: str | Path) -> Iterator[tuple[IO[bytes], Path]]:
    """(open binary file, its path): a temporary file beside `path` that replaces `path` in one rename when the
    block succeeds, and is removed when it fails. OSErrors name `path`, not the temporary file."""
    path = output_file(path)
    try:
        fd, tmp = create_temporary(path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
        os.replace(tmp, path)  # replaces a symlink at `path` itself, never what it points to
    except OutputError:
        raise
    except OSError as e:  # no permission, a full disk: name the file asked for, not the temporary one
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """`with replacing(out) as tmp:` fill `tmp` (created exclusively beside `out`, see create_temporary); it
    becomes `out` in one rename when the block succeeds and is removed when it raises."""
    with _temporary_beside(path) as (_, tmp):
        yield tmp


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename."""
    with replacing(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """`data` as `path`, written through the descriptor that created the temporary file (never reopened by name)."""
    with _temporary_beside(path) as (f, _):
        f.write(data)
    return Path(path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    return write_bytes_atomic((json.dumps(obj, indent=2) + "\n").encode("utf-8"), path)


def write_csv_atomic(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Rows of dicts as CSV, columns in first-seen order (the epoch first); the one CSV writer (metrics of a run,
    a trial's curve artifact, which optuna-dashboard shows as a table)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(out.getvalue(), path)


def copy_atomic(source: str | Path, target: str | Path) -> Path:
    """`source` copied to `target` through an exclusively created temporary file, then renamed into place."""
    with open(source, "rb") as src, _temporary_beside(target) as (f, _):  # a missing source stays itself
        shutil.copyfileobj(src, f)
    return Path(target)
