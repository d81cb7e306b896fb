"""Preemption-safe trials: every trial checkpoints after each epoch into the study's artifact store, and the
re-run of a trial whose worker died continues from the last finished epoch instead of from scratch.

How a re-run finds its checkpoint: optuna's `RetryHeartbeatStaleTrialCallback` (and hpo.running.study's re-queue of
interrupted trials) gives the new trial system_attrs "retry_history", the numbers of the earlier attempts.
Each attempt writes only its own file, `<artifact store>/checkpoints/<study uid>/trial-<number>.pt` (stored on
the trial as a path relative to the store, user_attr "checkpoint"), so a worker that was only stalled, not dead,
can never overwrite the checkpoint its replacement continues from, and no other study can read or overwrite it:
studies of the same name on other storages may share an artifact folder, but each has its own random uid
(study user_attr "study_uid", set when hpo creates or resumes the study). The re-run copies the newest checkpoint of an
earlier attempt to its own file and resumes it; cifarnet's per-epoch seeds make the result identical to an
uninterrupted run. The finished epochs are reported again (`EpochReporter` replays them), so the pruner and
the dashboard see one continuous curve.

A finished trial (complete, pruned or failed by an error) removes its checkpoint and those of its earlier
attempts unless the study file keeps them ([workers] keep_checkpoints = true). An interrupted trial (Ctrl-C)
keeps its checkpoint: it is queued again and its re-run continues from it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cifarnet.files import write_atomic
from cifarnet.train import load_checkpoint
from hpo.errors import HPOError

CHECKPOINT_DIR = "checkpoints"  # inside the study's artifact store


def relative_path(number: int, study_uid: str) -> str:
    """Where trial `number` of the study with `study_uid` checkpoints, relative to the artifact store (the same
    on every machine)."""
    return f"{CHECKPOINT_DIR}/{study_uid}/trial-{number}.pt"


@dataclass(frozen=True)
class TrialCheckpoint:
    store: Path  # the study's artifact store: one folder shared by every worker's machine
    study_uid: str  # the study's own key in it
    number: int  # the trial writing it
    earlier: tuple[int, ...]  # earlier attempts of the same trial (optuna's retry_history), oldest first

    @classmethod
    def of(cls, trial: optuna.Trial, store: str | Path) -> "TrialCheckpoint":
        uid = trial.study.user_attrs.get("study_uid")
        if not uid:
            raise HPOError(f"study {trial.study.study_name!r} has no study_uid: run it with `hpo study start`, "
                           f"which sets one")
        return cls(Path(store), uid, trial.number, tuple(retry_history(trial)))

    def relative(self, number: int) -> str:
        return relative_path(number, self.study_uid)

    @property
    def path(self) -> Path:
        return self.store / self.relative(self.number)

    def resume(self) -> tuple[int | None, list[dict[str, Any]]]:
        """Copy the newest checkpoint of an earlier attempt to this trial's own file; returns that attempt's
        number and its finished epochs' metrics (None, [] when every attempt so far died before epoch 1)."""
        for number in reversed(self.earlier):
            source = self.store / self.relative(number)
            if source.is_file():
                _copy_atomic(source, self.path)
                return number, list(load_checkpoint(self.path)["history"])
        return None, []

    def remove(self) -> None:
        """Delete this trial's checkpoint and its earlier attempts' (the trial is finished for good)."""
        for number in (*self.earlier, self.number):
            (self.store / self.relative(number)).unlink(missing_ok=True)


def retry_history(trial: optuna.Trial) -> list[int]:
    """optuna's retry_history of a running trial (numbers of its earlier attempts, oldest first)."""
    running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    frozen = next((t for t in running if t.number == trial.number), None)
    return list(frozen.system_attrs.get("retry_history", [])) if frozen is not None else []


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))
