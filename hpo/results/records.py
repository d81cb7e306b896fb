"""The records the CLI prints about studies: the list, a study's status, its best trial; `printable` for their
text."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HPOError
from hpo.running.study import load_study
from hpo.storage import display_url, open_existing_storage
from hpo.terminal import printable, printable_lines  # noqa: F401  (the CLI's tables import them from here)


@dataclass(frozen=True)
class StudyRow:
    name: str
    trials: int
    best_value: float | None
    started: str  # ISO time of the first trial, "" when none ran


def list_studies(storage_url: str) -> list[StudyRow]:
    storage = open_existing_storage(storage_url, read_only=True)  # a mistyped path must not leave an empty hpo.db
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # summaries of studies other tools created may warn
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=True)
    return [StudyRow(s.study_name, s.n_trials, s.best_trial.value if s.best_trial else None,
                     s.datetime_start.isoformat(timespec="seconds") if s.datetime_start else "")
            for s in sorted(summaries, key=lambda s: s.study_name)]


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                          TrialState.RUNNING, TrialState.WAITING)}
    for t in trials:
        counts[t.state.name.lower()] += 1
    return counts


def best_completed(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


@dataclass(frozen=True)
class StudyStatus:
    name: str
    storage: str  # password hidden
    counts: dict[str, int]  # complete, pruned, fail, running, waiting
    best: dict[str, Any] | None  # best_record() of the best completed trial
    target_accuracy: float | None
    stop_requested: bool
    stop_reason: str
    failures: list[tuple[int, str]]  # (trial number, why) of failed and rejected trials
    rerun_as: dict[int, int] = field(default_factory=dict)  # failed attempt -> the latest attempt of its series


def study_status(storage_url: str, name: str) -> StudyStatus:
    study = load_study(storage_url, name, read_only=True)
    trials = study.get_trials(deepcopy=False)
    best = best_completed(trials)
    attrs = study.user_attrs
    latest = reruns(trials)
    failures = [(t.number, fail_reason(t, by_hpo="study_file" in attrs, rerun=latest.get(t.number)))
                for t in trials if t.state == TrialState.FAIL or "fail_reason" in t.user_attrs]
    return StudyStatus(name, display_url(storage_url), count_states(trials), best and best_record(study, best),
                       attrs.get("target_accuracy"), bool(attrs.get("stop_requested")),
                       attrs.get("stop_reason", "") if attrs.get("stop_requested") else "", failures,
                       {n: t.number for n, t in latest.items()})


def reruns(trials: list[FrozenTrial]) -> dict[int, FrozenTrial]:
    """Each earlier attempt of a re-run trial -> the latest attempt of its series, whose state is the series'
    outcome. A dead worker's trial (optuna's RetryHeartbeatStaleTrialCallback) and an interrupted one
    (hpo.running.study.requeue_interrupted) are re-run as a new trial whose retry_history names them."""
    latest: dict[int, FrozenTrial] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for t in sorted(trials, key=lambda t: t.number):
            for earlier in optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t):
                latest[earlier] = t
    return latest


def rerun_note(rerun: FrozenTrial) -> str:
    """"re-run as trial 5 (complete)": what became of a failed attempt."""
    return f"re-run as trial {rerun.number} ({rerun.state.name.lower()})"


def fail_reason(trial: FrozenTrial, by_hpo: bool = True, rerun: FrozenTrial | None = None) -> str:
    """Why a trial failed or was rejected, and its re-run (`rerun`, see `reruns`) if it has one. hpo's objective
    records a reason for every failure it sees, so in a study hpo runs a FAIL without one is a worker that
    died mid-trial; a study of plain optuna records none."""
    if "fail_reason" in trial.user_attrs:
        why = trial.user_attrs["fail_reason"]
    elif trial.state != TrialState.FAIL:
        return ""
    elif rerun is None:
        return "worker lost (no heartbeat); re-queued when retries were left" if by_hpo else "no reason recorded"
    else:
        why = "worker lost (no heartbeat)" if by_hpo else "no reason recorded"
    return f"{why}; {rerun_note(rerun)}" if rerun is not None else why


def best_trial_record(storage_url: str, name: str) -> dict[str, Any]:
    """The best completed trial as a JSON-ready dict (`hpo study best`)."""
    study = load_study(storage_url, name, read_only=True)
    best = best_completed(study.get_trials(deepcopy=False))
    if best is None:
        raise HPOError(f"study {name!r} has no completed trial yet")
    return best_record(study, best)


def best_record(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration else None
    return {
        "study": study.study_name, "trial": trial.number, "val_acc": trial.value, "params": trial.params,
        "params_count": attrs.get("params_count"), "macs": attrs.get("macs"),
        "receptive_field": attrs.get("receptive_field"), "epochs": len(attrs.get("curve", [])),
        "duration_s": duration, "device": attrs.get("device"), "seed_baseline": bool(attrs.get("seed_baseline")),
        "config": attrs.get("config"),
    }


def interrupted_in_run(storage_url: str, name: str) -> list[int]:
    """Trials of the current run (`hpo study start`'s run_budget) recorded as interrupted and queued again, not
    re-run yet: what a Ctrl-C just stopped."""
    study = load_study(storage_url, name, read_only=True)
    first = (study.user_attrs.get("run_budget") or {}).get("first_trial", 0)
    trials = study.get_trials(deepcopy=False)
    rerun_of = {t.system_attrs["retry_history"][-1]: t for t in trials if t.system_attrs.get("retry_history")}
    return [t.number for t in trials if t.number >= first and t.state == TrialState.FAIL
            and t.user_attrs.get("fail_reason") == "interrupted" and t.number in rerun_of
            and rerun_of[t.number].state == TrialState.WAITING]
