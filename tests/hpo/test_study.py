"""The study service on real storage: trials, the baseline, resuming, pruning, rejection, failures and the stop
flag, with real training on tiny data. What the storage keeps (a resumed study, its stored file, the stop flag
other workers read, optuna's own CLI reading it) is tested on a SQLite file and on PostgreSQL; what the objective
does with a trial (pruning, rejection, a NaN loss, stopping at the target) on a SQLite file (SQLITE_ONLY)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.errors import HPOError
from hpo.running.objective import STOP_REASON, EpochReporter
from hpo.definition.paths import resolve_artifact_dir
from hpo.running.study import baseline_params, create_or_resume, request_stop
from hpo.results.records import list_studies
from hpo.definition.study_file import StudySpec, load_study_file
from hpo.running.worker import WorkerOptions, start_study
from tests import helpers
from tests.helpers import storage_for
from tests.hpo.studyfiles import write_study

TRIAL_ATTRS = {"config", "data", "params_count", "macs", "receptive_field", "epoch_times", "device", "curve"}
SQLITE_ONLY = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)  # the objective's, not the storage's


def tiny_spec(tmp_path: Path, name: str, url: str, n_trials: int = 2, **tables) -> StudySpec:
    return load_study_file(write_study(tmp_path, name, url, **tables), n_trials=n_trials)


def run(spec: StudySpec, data_dir: Path) -> str:
    """Run the study in this process (one worker, one thread); returns its progress lines."""
    out = io.StringIO()
    start_study(spec, WorkerOptions(data_dir=str(data_dir), threads=1, out=out))
    return out.getvalue()


def trials_of(spec: StudySpec) -> list[optuna.trial.FrozenTrial]:
    return helpers.trials_of(spec.storage, spec.name)


def enqueue(spec: StudySpec, **changes) -> None:
    """Queue the baseline with `changes` (after the baseline itself, which a new study queues first)."""
    study = create_or_resume(spec, storage_for(spec.storage))
    study.enqueue_trial({**baseline_params(spec.space, spec)[0], **changes})


def test_seed_trial_is_trial_0_and_resume_adds_trials(tmp_path, tiny_cifar, storage_url, study_name):
    spec = tiny_spec(tmp_path, study_name, storage_url, n_trials=2)
    lines = run(spec, tiny_cifar).splitlines()
    trials = trials_of(spec)
    ends = [line for line in lines if " done: " in line]  # one line per finished trial (and one as each starts)
    assert [t.number for t in trials] == [0, 1] and len(ends) == 2
    assert all("best" in line and "ETA" in line for line in ends)
    assert [line.split(" started")[0] for line in lines if " started" in line] == ["trial 0", "trial 1"]
    seed = trials[0]
    assert seed.user_attrs["seed_baseline"] is True and seed.params == baseline_params(spec.space, spec)[0]
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert TRIAL_ATTRS <= set(t.user_attrs) and t.user_attrs["device"] == "cpu"
        assert list(t.intermediate_values) == list(range(1, len(t.user_attrs["curve"]) + 1))
    assert seed.value == max(m["val_acc"] for m in seed.user_attrs["curve"])
    study = optuna.load_study(study_name=spec.name, storage=storage_for(storage_url))
    assert study.user_attrs["study_file"] == spec.raw and study.user_attrs["target_accuracy"] == 0.2
    # Stored relative to a SQLite database's folder (hpo.definition.paths), so a copied database finds its artifacts.
    assert resolve_artifact_dir(study.user_attrs["artifact_dir"], storage_url) == Path(spec.artifact_dir)

    before = [(t.number, t.state, t.params, t.value) for t in trials]
    run(spec, tiny_cifar)  # same name, same storage: resumes
    trials = trials_of(spec)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert sum(bool(t.user_attrs.get("seed_baseline")) for t in trials) == 1
    assert [(t.number, t.state, t.params, t.value) for t in trials[:2]] == before  # earlier trials kept
    # The seeded sampler does not start its sequence over: the resumed run's first sampled trial is new.
    assert trials[2].params != trials[1].params
    row = next(r for r in list_studies(storage_url) if r.name == study_name)
    assert row.trials == 4 and row.best_value == max(t.value for t in trials if t.value is not None)


@SQLITE_ONLY
def test_median_pruner_prunes_trial_reporting_worse_values(tmp_path, tiny_cifar, storage_url, study_name):
    spec = tiny_spec(tmp_path, study_name, storage_url, n_trials=2)
    enqueue(spec, lr=1e-5)  # learns nothing: stays at chance while the baseline climbs
    run(spec, tiny_cifar)
    good, bad = trials_of(spec)
    assert good.state == TrialState.COMPLETE
    assert bad.state == TrialState.PRUNED and bad.user_attrs["pruned_at_epoch"] == 2  # n_warmup_steps = 2: epoch 1 is never pruned
    assert bad.intermediate_values[2] < good.intermediate_values[2]
    assert len(bad.user_attrs["curve"]) == 2 < spec.base.epochs


@SQLITE_ONLY
def test_reporter_raises_pruned_below_median(tmp_path, storage_url, study_name):
    spec = tiny_spec(tmp_path, study_name, storage_url)
    study = create_or_resume(spec, storage_for(spec.storage))
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=1)
    metrics = {"train_time_s": 1.0, "eval_time_s": 0.1}
    first = study.ask()
    for epoch, acc in enumerate([0.5, 0.6, 0.7], 1):
        EpochReporter(first, spec)(epoch, {**metrics, "val_acc": acc})
    study.tell(first, 0.7)
    worse = study.ask()
    with pytest.raises(optuna.TrialPruned):
        EpochReporter(worse, spec)(1, {**metrics, "val_acc": 0.3})
    assert worse.user_attrs["pruned_at_epoch"] == 1


@SQLITE_ONLY
def test_an_over_budget_sample_is_narrowed_to_fit_and_no_trial_is_spent_on_it(tmp_path, tiny_cifar, storage_url,
                                                                               study_name):
    spec = tiny_spec(tmp_path, study_name, storage_url, n_trials=2, study={"max_params": 8_000})
    enqueue(spec, depthwise=False)  # plain 3x3 convs: 11k parameters at the sampled widths
    run(spec, tiny_cifar)
    seed, big = trials_of(spec)
    assert seed.state == TrialState.COMPLETE and "fitted_widths" not in seed.user_attrs
    # trained within the budget (the median pruner may stop it like any other trial), not rejected
    assert big.state in (TrialState.COMPLETE, TrialState.PRUNED) and "fail_reason" not in big.user_attrs
    assert big.user_attrs["params_count"] <= 8_000 and big.user_attrs["curve"]
    fitted = big.user_attrs["fitted_widths"]
    assert fitted["trained"] == big.user_attrs["config"]["model"]["widths"]
    sampled = [big.params.get(f"width{i + 1}", w) for i, w in enumerate(spec.base.model.widths)]
    assert fitted["sampled"] == sampled and all(t <= s for t, s in zip(fitted["trained"], sampled))


@SQLITE_ONLY
def test_nan_loss_fails_trial_and_study_goes_on(tmp_path, tiny_cifar, storage_url, study_name):
    spec = tiny_spec(tmp_path, study_name, storage_url, n_trials=3,
                     space={"lr": {"low": 1e-5, "high": 1e9, "log": True}})
    enqueue(spec, lr=1e8)
    lines = run(spec, tiny_cifar)
    seed, diverged, after = trials_of(spec)
    assert diverged.state == TrialState.FAIL
    assert diverged.user_attrs["fail_reason"].startswith("NonFiniteLossError: non-finite training loss")
    assert after.state != TrialState.FAIL and after.state.is_finished()
    assert "trial 1 failed: NonFiniteLossError" in lines


@SQLITE_ONLY
def test_stop_on_target_stops_the_study(tmp_path, tiny_cifar, storage_url, study_name):
    spec = tiny_spec(tmp_path, study_name, storage_url, n_trials=5, study={"stop_on_target": True})
    run(spec, tiny_cifar)
    trials = trials_of(spec)
    study = optuna.load_study(study_name=spec.name, storage=storage_for(storage_url))
    assert len(trials) == 1 and trials[0].value >= 0.2  # the baseline reached the target; nothing else ran
    assert study.user_attrs["stop_requested"] is True and "trial 0 reached" in study.user_attrs["stop_reason"]


def test_stop_flag_prunes_running_trials_of_other_workers(tmp_path, storage_url, study_name):
    spec = tiny_spec(tmp_path, study_name, storage_url, study={"stop_on_target": True, "target_accuracy": 0.9})
    study = create_or_resume(spec, storage_for(spec.storage))
    running = study.ask()
    request_stop(study, "trial 7 reached val_acc 0.95")  # as written by another worker
    with pytest.raises(optuna.TrialPruned):
        EpochReporter(running, spec)(1, {"val_acc": 0.4, "train_time_s": 1.0, "eval_time_s": 0.1})
    assert running.user_attrs["fail_reason"] == STOP_REASON


def test_resume_with_a_different_space_is_refused(tmp_path, storage_url, study_name):
    storage = storage_for(storage_url)
    create_or_resume(tiny_spec(tmp_path, study_name, storage_url), storage)
    changed = tiny_spec(tmp_path, study_name, storage_url, space={"width1": {"choices": [4, 8, 12]}})
    with pytest.raises(HPOError, match=r"different \[space\]"):
        create_or_resume(changed, storage)
    # Run settings may change between runs.
    create_or_resume(tiny_spec(tmp_path, study_name, storage_url, n_trials=9, sampler={"seed": 5}), storage)


def test_official_optuna_cli_reads_our_studies(tmp_path, tiny_cifar, storage_url, study_name):
    spec = tiny_spec(tmp_path, study_name, storage_url, n_trials=1)
    run(spec, tiny_cifar)
    optuna_cli = str(Path(sys.executable).parent / "optuna")
    studies = subprocess.run([optuna_cli, "studies", "--storage", storage_url, "-f", "json"],
                             capture_output=True, text=True, check=True)
    assert study_name in {s["name"] for s in json.loads(studies.stdout)}
    best = subprocess.run([optuna_cli, "best-trial", "--study-name", study_name, "--storage", storage_url,
                           "-f", "json"], capture_output=True, text=True, check=True)
    record = json.loads(best.stdout)
    # The objective is named (study.set_metric_names), so optuna's CLI labels the value with it.
    assert record["number"] == 0 and record["value"] == {"val_acc": trials_of(spec)[0].value}
