"""Files written whole or not at all: a crash or a kill never leaves a half-written checkpoint, metrics file or
chart behind (the reader sees the old file or the new one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
