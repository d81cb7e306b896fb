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


def rung_trials() -> list[optuna.trial.FrozenTrial]:
    """Rungs 2 epochs x 100 images, then 3 x 200, full run 4 x 500: a trial's budget is 200 + 600 + 2,000 = 2,800
    image-epochs. Trial 0 pruned at rung 0, trial 1 at rung 1, trial 2 complete."""
    r0, r1 = {"rung": 0, "epochs": 2, "train_size": 100}, {"rung": 1, "epochs": 3, "train_size": 200}
    return [
        optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"rungs": [r0], "pruned_at_rung": 0}),
        optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"rungs": [r0, r1], "pruned_at_rung": 1}),
        optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.6, user_attrs={"rungs": [r0, r1],
                                                                                    "curve": curve(4)}),
    ]


def test_a_rung_study_counts_image_epochs_and_a_rung_pruned_trial_is_not_rejected(tmp_path, study_name):
    s = pruning_savings(rung_trials(), 4, [(2, 100), (3, 200)], 500)
    # trained: 200 + 800 + 2,800; saved: 2,600 + 2,000
    assert (s["epochs_trained"], s["epochs_saved"], s["epochs_unpruned"], s["unit"]) == (3_800, 4_600, 8_400,
                                                                                          "image-epochs")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    budget = {"epochs": 4, "train_size": 500, "rungs": [{"epochs": 2, "train_size": 100},
                                                        {"epochs": 3, "train_size": 200}]}
    study = create_or_resume(load_study_file(write_study(tmp_path, study_name, url, budget=budget)))
    for t in rung_trials():
        study.add_trial(t)
    summary = summarize_study(url, study_name)
    assert summary["rejected_before_training"] == 0 and summary["compute_unit"] == "image-epochs"
    assert (summary["epochs_run"], summary["epochs_saved_by_pruning"]) == (3_800, 4_600)
    assert "3,800 of 8,400 image-epochs trained, 4,600 saved" in pruning_section(study, study.get_trials()).note
