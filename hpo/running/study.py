"""Studies on SQL storage: create or resume, the baseline trial, the stop flag; loading a study and its spec.

A study created here carries everything needed to continue or inspect it from storage alone:
study user_attrs "study_file" (the parsed study TOML), "target_accuracy", "artifact_dir", "stop_requested",
"run_budget" (what the current `hpo study start` asked for, read by joining workers).
"""

from __future__ import annotations

import uuid
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HPOError, StorageError, StudyFileError
from hpo.definition.paths import stored_artifact_dir
from hpo.definition.space import Choice, SearchSpace, seed_params
from hpo.storage import Backoff, display_url, is_locked, open_existing_storage, open_storage, retry
from hpo.definition.study_file import PRUNERS, RUNG_BASE, StudySpec, load_study_file, spec_from_dict

# Study-file tables that define what a trial means; resuming with any of them changed would mix
# incomparable trials in one study, so it is refused. Everything else (trials, sampler, ...) may change.
IDENTITY_TABLES = ("space", "budget", "train")
LOCKED_BACKOFF = Backoff(first=0.2, longest=25.6, tries=8)
OBJECTIVE_NAME = "val_acc"  # what optuna-dashboard calls the objective value
STUDY_UID = "study_uid"  # user_attr: a random id no other study shares, even one of the same name elsewhere
INTERRUPTED_REASON = "interrupted"  # fail_reason of a trial stopped by Ctrl-C; it is re-queued
KEPT_ON_RETRY = ("seed_baseline", "seed_moved_into_space")  # user_attrs a re-queued trial inherits


def build_sampler(spec: StudySpec, seed_offset: int | None = 0, first_trial: int = 0) -> optuna.samplers.BaseSampler:
    """The study file's sampler; `seed_offset` keeps parallel workers from proposing identical trials
    (None: fresh randomness, for workers joining from elsewhere). The first run of a study (`first_trial` 0)
    seeds it with the file's seed + offset; a later run (a resume, a bigger budget) with a seed derived from
    both and its first trial number: the file's seed again would replay the first run's configurations
    (tests/hpo/test_study.py::test_seed_trial_is_trial_0_and_resume_adds_trials)."""
    options = dict(spec.sampler.options)
    if "seed" in options and seed_offset is None:
        options["seed"] = None
    elif "seed" in options and first_trial == 0:
        options["seed"] += seed_offset
    elif "seed" in options:
        sequence = numpy.random.SeedSequence([options["seed"], seed_offset, first_trial])
        options["seed"] = int(sequence.generate_state(1)[0])
    kind = spec.sampler.kind
    if kind == "qmc":  # QMC indexes its sequence by trial number: the file's seed never replays a point
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", **spec.sampler.options)
    if kind == "tpe":
        return optuna.samplers.TPESampler(**options)
    if kind == "random":
        return optuna.samplers.RandomSampler(**options)
    if kind == "gp":
        return optuna.samplers.GPSampler(**options)
    try:
        import cmaes  # noqa: F401  (optuna imports it lazily, at the first trial)
    except ImportError:
        raise HPOError("sampler kind 'cmaes' needs the cmaes package (pip install cmaes)") from None
    return optuna.samplers.CmaEsSampler(**options)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    options = dict(spec.pruner.options)
    if spec.pruner.kind == "hyperband":  # its largest rung: the per-trial epochs, or the full run's step with rungs
        options.setdefault("max_resource", RUNG_BASE ** len(spec.rungs) if spec.rungs else spec.base.epochs)
    return PRUNERS[spec.pruner.kind](**options)


def load_run_spec(path: str | Path, storage: str | None = None, n_trials: int | None = None,
                  timeout: float | None = None) -> StudySpec:
    """The study file for one `hpo study start`: `n_trials` (--n-trials) is this run's budget, which `begin_run`
    stores as "run_budget", while `raw` (what the study stores as "study_file") keeps the file's own [study]
    trials, so the stored file does not turn into the last run's --n-trials. A file that needs the option
    (neither trials nor timeout of its own) keeps it, or it would not be a valid study file."""
    spec = load_study_file(path, storage=storage, n_trials=n_trials, timeout=timeout)  # checks --n-trials too
    if n_trials is None:
        return spec
    try:
        return dataclasses.replace(spec, raw=load_study_file(path, storage=storage, timeout=timeout).raw)
    except StudyFileError:  # no budget without --n-trials
        return spec


def create_or_resume(spec: StudySpec, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create the study (baseline enqueued as trial 0) or load it, refusing a study file that changes what a
    trial means. The stored study file is replaced by this one (run settings may change between runs)."""
    storage = storage or open_storage(spec.storage)
    study = with_lock_retry(lambda: optuna.create_study(
        storage=storage, study_name=spec.name, direction="maximize", load_if_exists=True,
        sampler=build_sampler(spec), pruner=build_pruner(spec)))
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise HPOError(f"study {spec.name!r} exists in {display_url(spec.storage)} but minimises; "
                       "it was not created by hpo (use another [study] name)")
    stored = study.user_attrs.get("study_file")
    if stored is None and study.trials:
        raise HPOError(f"study {spec.name!r} in {display_url(spec.storage)} has trials but no study file: "
                       "it was not created by hpo (use another [study] name)")
    if stored is not None:
        check_same_search(stored, spec)
    for key, value in {"study_file": spec.raw, "target_accuracy": spec.target_accuracy,
                       "artifact_dir": stored_artifact_dir(spec.artifact_dir, spec.storage)}.items():
        study.set_user_attr(key, value)
    if STUDY_UID not in study.user_attrs:  # keys this study's checkpoints apart from any other's (hpo.running.checkpoints)
        study.set_user_attr(STUDY_UID, uuid.uuid4().hex)
    if study.metric_names != [OBJECTIVE_NAME]:
        with warnings.catch_warnings():
            # optuna_dashboard.set_objective_names() is deprecated in favour of exactly this (experimental) call.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_NAME])
    requeue_interrupted(study)
    if not any(t.user_attrs.get("seed_baseline") for t in study.get_trials(deepcopy=False)):
        params, moved = baseline_params(spec.space, spec)
        attrs = {"seed_baseline": True, **({"seed_moved_into_space": moved} if moved else {})}
        study.enqueue_trial(params, user_attrs=attrs)
    return study


def requeue_interrupted(study: optuna.Study, only: int | None = None) -> list[int]:
    """Queue again (same parameters) every interrupted trial not re-queued yet, or just trial `only`; returns
    their numbers. Why: an interrupted trial says nothing about its configuration, and an interrupted
    baseline would otherwise never be measured. The copy links back like optuna's heartbeat retries do
    (system_attrs "failed_trial" = the first of the series, "retry_history")."""
    trials = study.get_trials(deepcopy=False)
    requeued = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
    todo = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED_REASON
            and t.number not in requeued and only in (None, t.number)]
    for t in todo:
        history = [*t.system_attrs.get("retry_history", []), t.number]
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=t.params, distributions=t.distributions,
            user_attrs={k: v for k, v in t.user_attrs.items() if k in KEPT_ON_RETRY},
            system_attrs={"failed_trial": history[0], "retry_history": history}))
    return [t.number for t in todo]


def check_same_search(stored: dict[str, Any], spec: StudySpec) -> None:
    """Refuse to resume a study with a study file whose space, budget or base recipe differ."""
    differ = [f"[{t}]" for t in IDENTITY_TABLES if stored.get(t, {}) != spec.raw.get(t, {})]
    if differ:
        raise HPOError(f"study {spec.name!r} in {display_url(spec.storage)} was created from a study file with a "
                       f"different {', '.join(differ)}; its trials would not be comparable. Give this file a "
                       f"new [study] name, or resume with the original file")


def baseline_params(space: SearchSpace, spec: StudySpec) -> tuple[dict[str, Any], list[str]]:
    """The original CifarNet's values, each moved to the nearest value the space allows (narrow test spaces
    may not contain it); returns the names that had to move."""
    params, moved = {}, []
    for name, value in seed_params(space, spec.base).items():
        dist = space.params[name]
        if isinstance(dist, Choice):
            near = value if value in dist.choices else _nearest(dist.choices, value)
        else:
            near = type(value)(min(max(value, dist.low), dist.high))
        params[name] = near
        if near != value:
            moved.append(name)
    return params, moved


def _nearest(choices: tuple[Any, ...], value: Any) -> Any:
    numeric = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if numeric and isinstance(value, (int, float)):
        return min(numeric, key=lambda c: abs(c - value))
    return choices[0]


def request_stop(study: optuna.Study, reason: str) -> None:
    """Raise the stop flag in storage; every worker polls it between epochs and before each trial."""
    if not study.user_attrs.get("stop_requested"):
        study.set_user_attr("stop_reason", reason)
        study.set_user_attr("stop_requested", True)


def stop_requested(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get("stop_requested"))


def clear_stop(study: optuna.Study) -> None:
    study.set_user_attr("stop_requested", False)


def with_lock_retry(fn):
    """Run `fn`, retrying while SQLite reports the database locked (the busy timeout ran out under load)."""
    return retry(fn, is_locked, LOCKED_BACKOFF)


def load_study(storage_url: str, name: str, read_only: bool = False,
               storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Study `name` at `storage_url` (or in `storage`, already opened for that URL), or one line naming the
    studies that are there."""
    storage = storage or open_existing_storage(storage_url, read_only=read_only)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = ", ".join(sorted(optuna.get_all_study_names(storage))[:10]) or "none"
        raise StorageError(f"no study named {name!r} in {display_url(storage_url)} (studies there: {known})") from None


def seed_baseline(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The original CifarNet's trial (enqueued as trial 0 of every study), if among `trials`."""
    return next((t for t in trials if t.user_attrs.get("seed_baseline")), None)


def load_spec(study: optuna.Study) -> StudySpec:
    raw = study.user_attrs.get("study_file")
    if raw is None:
        raise HPOError(f"study {study.study_name!r} has no study file: it was not created by hpo")
    return spec_from_dict(raw)
