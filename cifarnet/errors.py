"""Exceptions the CLI turns into one clear line and a non-zero exit."""


class CifarNetError(Exception):
    """Base class for errors a user can fix (bad config, bad data, diverged training)."""


class ConfigError(CifarNetError, ValueError):
    """A training or model config value is invalid."""


class DataError(CifarNetError):
    """The CIFAR-10 folder is missing or not in the expected layout."""


class CheckpointError(CifarNetError):
    """A checkpoint or weights file is missing, truncated, corrupt, or holds more than tensors and plain data."""


class NonFiniteLossError(CifarNetError):
    """The training loss became NaN or infinite; the run cannot continue."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"non-finite training loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


class OutputError(OSError):
    """A file or folder the user named (-o/--out, a run folder) cannot be written: a folder or a file in the way,
    no permission, a full disk. An OSError, not a CifarNetError: a trial that cannot write its checkpoint stops
    its worker (hpo.running.objective.TRIAL_ERRORS) rather than failing every trial after it; the CLI prints one line."""
