"""Where relative paths point, decided once.

- Paths written in a study file (a `sqlite:///` storage, `artifact_dir`) are relative to the study file's
  folder, so `hpo ... /abs/path/studies/quick.toml` means the same from any working directory.
- Paths given on the command line (`--storage sqlite:///x.db`, `--out`) are relative to the current folder.
- A study named on the command line is a study NAME (in --storage, else the default database) or a study
  TOML (its name and storage; --storage still wins): `locate_study`.
- A study stores its artifact folder (study user_attr "artifact_dir") relative to its SQLite database's folder
  when it lies inside it, so a database copied together with its artifacts/ folder to another machine or
  folder keeps working there and never writes into the original machine's folder. Other folders (and any
  folder of a PostgreSQL study) are stored absolute.
"""

from __future__ import annotations

import os
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///FILE` URL (absolute), None for other URLs and in-memory databases."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    db = url[len(SQLITE_PREFIX):].split("?", 1)[0]
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser().resolve()


def resolve_sqlite_url(url: str, base: Path) -> str:
    """A `sqlite:///relative.db` URL made absolute against `base` (other URLs are returned unchanged)."""
    if not url.startswith(SQLITE_PREFIX) or sqlite_file(url) is None:
        return url
    db, query = (url[len(SQLITE_PREFIX):].split("?", 1) + [""])[:2]
    path = Path(db).expanduser()
    if path.is_absolute():
        return url
    absolute = (Path(base).resolve() / path).resolve()
    return f"{SQLITE_PREFIX}{absolute}" + (f"?{query}" if query else "")


def stored_artifact_dir(folder: str | Path, storage_url: str) -> str:
    """What a study stores as its "artifact_dir": relative to the SQLite database's folder when inside it."""
    folder = Path(folder).expanduser().resolve()
    db = sqlite_file(storage_url)
    if db is not None and folder.is_relative_to(db.parent):
        return os.fspath(folder.relative_to(db.parent))
    return os.fspath(folder)


def resolve_artifact_dir(stored: str | None, storage_url: str) -> Path | None:
    """A study's stored "artifact_dir" as a folder on this machine (the inverse of `stored_artifact_dir`)."""
    if not stored:
        return None
    path = Path(stored).expanduser()
    if path.is_absolute():
        return path
    db = sqlite_file(storage_url)
    return ((db.parent if db is not None else Path.cwd()) / path).resolve()


def study_artifact_dir(user_attrs: dict, storage_url: str, fallback: str | Path) -> Path:
    """A study's artifact folder on this machine: the one it stores (user_attr "artifact_dir"), else `fallback`
    (tests/hpo/test_preemption.py::test_checkpoints_live_in_the_store_whatever_the_working_directory)."""
    return resolve_artifact_dir(user_attrs.get("artifact_dir"), storage_url) or Path(fallback).resolve()


def locate_study(name_or_file: str, storage: str | None) -> tuple[str, str]:
    """(study name, storage URL) from a study NAME or a study TOML: --storage wins, then the file's storage,
    then the default database."""
    from hpo.definition.study_file import DEFAULT_STORAGE, load_study_file

    if name_or_file.endswith(".toml") or Path(name_or_file).is_file():
        spec = load_study_file(name_or_file, storage=storage)
        return spec.name, spec.storage
    return name_or_file, storage or DEFAULT_STORAGE
