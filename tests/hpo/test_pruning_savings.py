"""Epochs trained and saved by pruning: one computation behind `hpo study summary` and `hpo report`, right for
killed trials and for re-runs that resumed a checkpoint."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from dashboard.report import pruning_section
from hpo.results.efficiency import pruning_savings
from hpo.results.summary import summarize_study
from hpo.running.study import create_or_resume
from hpo.definition.study_file import load_study_file
from tests.hpo.studyfiles import write_study


def curve(n: int) -> list[dict]:
    return [{"epoch": e + 1, "val_acc": 0.1 * (e + 1)} for e in range(n)]


def trials_with_a_kill() -> list[optuna.trial.FrozenTrial]:
    """A 6-epoch budget: trial 0 killed after 3 epochs, trial 1 its re-run resuming at epoch 3 and completing,
    trial 2 pruned after 2 epochs, trial 3 interrupted (Ctrl-C) after 1 epoch."""
    return [
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"curve": curve(3)}),
        optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.6,
                                  user_attrs={"curve": curve(6), "resumed_at_epoch": 3, "resumed_from_trial": 0}),
        optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"curve": curve(2)}),
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"curve": curve(1), "fail_reason": "interrupted"}),
    ]


def test_only_pruned_trials_save_and_resumed_epochs_count_once():
    s = pruning_savings(trials_with_a_kill(), budget_epochs=6)
    # trained: 3 (killed) + 3 (the re-run's own) + 2 (pruned) + 1 (interrupted); saved: the pruned trial's 4
    assert (s["epochs_trained"], s["epochs_saved"], s["epochs_unpruned"], s["pruned_trials"]) == (9, 4, 13, 1)


def test_summary_and_report_agree(tmp_path, study_name):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = load_study_file(write_study(tmp_path, study_name, url, budget={"epochs": 6}))
    study = create_or_resume(spec)
    for t in trials_with_a_kill():
        study.add_trial(t)
    summary = summarize_study(url, study_name)
    assert (summary["epochs_run"], summary["epochs_saved_by_pruning"], summary["epochs_if_no_pruning"]) == (9, 4, 13)
    text = pruning_section(study, study.get_trials()).note
    assert "9 of 13 epochs trained, 4 saved" in text
