"""HPO service: Optuna studies over the CifarNet family, stored in SQL databases."""

from hpo.errors import HPOError, StorageError, StudyFileError

__all__ = ["HPOError", "StorageError", "StudyFileError"]
