"""Errors of the HPO layer; the CLI turns them (and cifarnet's) into one line and exit code 1."""

import signal

from cifarnet.errors import CifarNetError


class HPOError(CifarNetError):
    """Base class for user-fixable problems in studies, storage and retraining."""


class StudyFileError(HPOError):
    """A study TOML file is missing, malformed or has invalid / unknown fields."""


class StorageError(HPOError):
    """The storage URL is malformed or the database cannot be reached."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, or SIGTERM (what `timeout`, systemd, Kubernetes and Ray send): both stop a worker cleanly."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's "killed by this signal": 130 for SIGINT, 143 for SIGTERM


class WorkerInterrupted(Interrupted):
    """A worker stopped by Ctrl-C / SIGTERM: `recorded` says whether the trial it was running could be recorded as
    interrupted (and queued again): False when the database was unreachable, so the next run re-runs it."""

    def __init__(self, signum: int = signal.SIGINT, recorded: bool = True):
        super().__init__(signum)
        self.recorded = recorded


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none), for one-line reports."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
