"""Files written whole or not at all: a crash or a kill never leaves a half-written checkpoint, metrics file or
chart behind (the reader sees the old file or the new one)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from cifarnet.errors import OutputError


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


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename."""
    path = output_file(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as e:  # no permission, a full disk: name the file asked for, not the temporary one
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))
