"""What must hold in a study's records after any crash of any worker (`hpo study verify`).

Heartbeat times are not visible through optuna's storage API: hpo.storage.optuna_internals reads them from optuna's
tables of an RDB storage; behind the gRPC proxy that check is skipped.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.errors import StorageError, StudyFileError
from hpo.definition.study_file import RUNG_BASE, spec_from_dict
from hpo.storage.optuna_internals import running_heartbeats

REQUIRED_STUDY_ATTRS = ("study_file", "artifact_dir", "run_budget")


def check_consistency(storage: optuna.storages.BaseStorage, study_name: str,
                      grace_period: float | None = None) -> list[str]:
    """What is wrong with a study's records (empty: consistent). Holds after any crash of any worker:

    - trial numbers are 0..M-1, each once;
    - every trial is finished (COMPLETE with a value, PRUNED, FAIL) or WAITING, or RUNNING with a heartbeat
      younger than `grace_period` (default: the study file's [workers] grace_period);
    - intermediate values are epochs 1..k;
    - a dead trial is re-queued at most once, and only a FAILED one;
    - the study user_attrs hpo relies on are there and the stored study file is valid.
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise StorageError(f"no study named {study_name!r}") from None
    problems = _check_study_attrs(study.user_attrs)
    spec = None if problems else spec_from_dict(study.user_attrs["study_file"])
    if grace_period is None and spec is not None:
        grace_period = spec.workers.grace_period
    rung_steps = [RUNG_BASE ** i for i in range(len(spec.rungs) + 1)] if spec is not None and spec.rungs else None
    trials = study.get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    if numbers != list(range(len(trials))):
        dupes = sorted(n for n, c in Counter(numbers).items() if c > 1)
        problems.append(f"trial numbers are not 0..{len(trials) - 1} once each (duplicates: {dupes})")
    for t in trials:
        steps = sorted(t.intermediate_values)
        if rung_steps is not None and steps != rung_steps[:len(steps)]:
            problems.append(f"trial {t.number}: intermediate values at steps {steps}, expected rung steps "
                            f"{rung_steps[:max(1, len(steps))]}...")
        elif rung_steps is None and steps != list(range(1, len(steps) + 1)):
            problems.append(f"trial {t.number}: intermediate values at steps {steps}, expected epochs 1..k")
        if t.state == TrialState.COMPLETE and t.value is None:
            problems.append(f"trial {t.number}: COMPLETE without a value")
    problems += _check_retries(trials)
    if isinstance(storage, optuna.storages.RDBStorage):  # behind the gRPC proxy the tables are out of reach
        problems += _check_heartbeats(running_heartbeats(storage, study_name), grace_period)
    return problems


def _check_study_attrs(attrs: dict[str, Any]) -> list[str]:
    problems = [f"study user_attr {key!r} is missing" for key in REQUIRED_STUDY_ATTRS if key not in attrs]
    if "study_file" in attrs:
        try:
            spec_from_dict(attrs["study_file"])
        except StudyFileError as e:
            problems.append(f"study user_attr 'study_file' is not a valid study file: {e}")
    return problems


def _check_retries(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    state = {t.number: t.state for t in trials}
    # retry_history[-1] is the trial this one re-runs (optuna's RetryHeartbeatStaleTrialCallback convention).
    reruns = Counter(t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history"))
    problems = [f"trial {n} was re-queued {count} times" for n, count in reruns.items() if count > 1]
    problems += [f"trial {n} was re-queued but is {state.get(n, 'missing')}" for n in reruns
                 if state.get(n) != TrialState.FAIL]
    return problems


def _check_heartbeats(running: list[tuple[int, Any, Any]], grace_period: float | None) -> list[str]:
    problems = []
    for number, beat, now in running:
        # optuna stores the database's own CURRENT_TIMESTAMP (UTC); SQLite returns both as text.
        beat, now = (_timestamp(v) for v in (beat, now))
        age = (now - beat).total_seconds() if beat is not None else None
        if age is None or (grace_period is not None and age > grace_period):
            what = "no heartbeat" if age is None else f"a heartbeat {age:.0f} s old (grace period {grace_period} s)"
            problems.append(f"trial {number} is RUNNING with {what}")
    return problems


def _timestamp(value: Any) -> Any:
    if value is None:
        return None
    return (datetime.fromisoformat(value) if isinstance(value, str) else value).replace(tzinfo=None)
