"""Errors of the HPO layer; the CLI turns them (and cifarnet's) into one line and exit code 1."""

from cifarnet.errors import CifarNetError


class HPOError(CifarNetError):
    """Base class for user-fixable problems in studies, storage and retraining."""


class StudyFileError(HPOError):
    """A study TOML file is missing, malformed or has invalid / unknown fields."""


class StorageError(HPOError):
    """The storage URL is malformed or the database cannot be reached."""
