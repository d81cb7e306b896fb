"""Per-trial notes and per-epoch tables (hpo.running.notes), written by the worker on the live trial and read back through
optuna-dashboard's API: on the real demo study, and through the worker's TrialRunner on every storage."""

from __future__ import annotations

import csv

import optuna
import pytest
from optuna.trial import TrialState

from hpo.storage import open_storage
from hpo.running.worker import TrialRunner
from tests.dashboard_api import dashboard_trials


def test_every_demo_trial_has_a_note_that_says_what_happened(demo_study):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    notes = {t["number"]: t["note"]["body"] for t in dashboard_trials(open_storage(demo_study.storage), study.study_name)}
    baseline = next(t for t in study.trials if t.user_attrs.get("seed_baseline"))
    assert "seed baseline" in notes[baseline.number]
    kinds = set()
    for t in study.trials:
        note, attrs = notes[t.number], t.user_attrs
        if "pruned_at_epoch" in attrs:
            kinds.add("pruned")
            assert note.startswith(f"## Trial {t.number}: pruned at epoch {attrs['pruned_at_epoch']}")
            assert f"**Pruned** at epoch {attrs['pruned_at_epoch']} of {attrs['config']['epochs']}: val_acc" in note
        elif t.state == TrialState.PRUNED:
            kinds.add("rejected")
            assert f"**Pruned before training:** {attrs['fail_reason']}" in note
        else:
            kinds.add("complete")
            assert f"**Best val_acc {t.value:.4f}**" in note
        assert f"| parameters | {attrs['params_count']:,} |" in note
        assert f"| receptive field | {attrs['receptive_field']} px |" in note
        assert f"- model: widths {attrs['config']['model']['widths']}" in note
        if "fitted_widths" in attrs:
            kinds.add("fitted")
            fitted = attrs["fitted_widths"]
            assert f"| widths fitted to max_params | sampled {fitted['sampled']}, trained {fitted['trained']} |" in note
    # no trial is rejected for its size any more: over-budget samples are narrowed to fit and trained
    assert kinds == {"pruned", "fitted", "complete"}


def test_trained_trials_get_their_curve_table_rejected_ones_none(demo_study):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    served = {t["number"]: t for t in dashboard_trials(open_storage(demo_study.storage), study.study_name)}
    for t in study.trials:
        files = {a["filename"]: a["artifact_id"] for a in served[t.number]["artifacts"]}
        if not t.intermediate_values:  # rejected before training: nothing to tabulate
            assert files == {}
            continue
        assert set(files) == {"curve.csv"}
        rows = list(csv.DictReader(open(demo_study.artifact_dir / files["curve.csv"])))
        assert [float(r["val_acc"]) for r in rows] == [t.intermediate_values[e] for e in sorted(t.intermediate_values)]


def _curve_objective(trial: optuna.Trial) -> float:
    """Records the conventional user_attrs of a 3-epoch run without training (the storage is the subject);
    trial 1 is pruned at epoch 2 and trial 2 fails after its first epoch, as the study service records them."""
    x = trial.suggest_float("lr", 0.01, 0.3, log=True)
    if trial.number == 2:
        trial.set_user_attr("curve", [{"epoch": 1, "train_acc": 0.1, "val_acc": 0.1}])
        trial.set_user_attr("fail_reason", "NonFiniteLossError: loss is nan at epoch 2")
        raise ArithmeticError("loss is nan")
    curve = [{"epoch": e, "train_acc": 0.2 * e, "val_acc": 0.1 * e + x, "train_time_s": 0.5} for e in (1, 2, 3)]
    trial.set_user_attr("curve", curve)
    trial.set_user_attr("params_count", 3804)
    for m in curve:
        trial.report(m["val_acc"], m["epoch"])
    if trial.number == 1:
        trial.set_user_attr("pruned_at_epoch", 2)
        raise optuna.TrialPruned()
    return max(m["val_acc"] for m in curve)


def test_trial_runner_annotates_each_live_trial_on_every_storage(storage_url, study_name, tmp_path):
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    study.optimize(TrialRunner(_curve_objective, tmp_path), n_trials=3, catch=(ArithmeticError,))
    served = {t["number"]: t for t in dashboard_trials(storage, study_name)}
    assert served[0]["note"]["body"].startswith("## Trial 0: complete\n\n**Best val_acc")
    assert served[1]["note"]["body"].startswith("## Trial 1: pruned at epoch 2\n\n**Pruned** at epoch 2 of ?: val_acc")
    assert served[2]["note"]["body"].startswith("## Trial 2: failed\n\n**Failed:** NonFiniteLossError: loss is nan")
    for number, trial in served.items():
        files = {a["filename"]: a["artifact_id"] for a in trial["artifacts"]}
        assert set(files) == {"curve.csv"}
        assert (tmp_path / files["curve.csv"]).read_text().startswith("epoch,")


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)  # a folder that cannot be written: any storage
def test_a_note_that_cannot_be_written_never_fails_the_trial(storage_url, study_name, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the artifact folder cannot be created
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage_url), direction="maximize")
    study.optimize(TrialRunner(_curve_objective, blocker / "artifacts"), n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert "trial 0 has no dashboard note" in caplog.text
