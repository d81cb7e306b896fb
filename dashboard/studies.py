"""Which database (and artifact folder) the dashboard and the report read: from a study file, or a URL.

The storage URL is never written here: it comes from the study file (hpo.studyfile), --storage, or the
study service's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpo.studyfile import DEFAULT_STORAGE, load_study_file


@dataclass(frozen=True)
class Target:
    storage: str  # SQLAlchemy URL
    study_name: str | None = None  # the study file's study, when one was given
    artifact_dir: str | None = None  # the study file's artifact folder, when one was given


def resolve_target(study: str | Path | None, storage: str | None) -> Target:
    """`study` is a study TOML (its storage and artifact folder are used; --storage overrides the storage),
    a study name, or None; without a study file the storage is --storage, else the service default."""
    if study is not None and str(study).endswith(".toml"):
        spec = load_study_file(study, storage=storage)
        return Target(spec.storage, spec.name, spec.artifact_dir)
    return Target(storage or DEFAULT_STORAGE, str(study) if study is not None else None)
