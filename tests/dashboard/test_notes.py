"""Per-trial notes and learning-curve artifacts: on the real demo study, and through the callback path
(finished trials) on every storage backend."""

from __future__ import annotations

import csv
import json
import functools
import xml.etree.ElementTree as ET

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna_dashboard._note import get_note_from_system_attrs
from optuna_dashboard.artifact._backend import list_trial_artifacts

from dashboard.chart import curve_svg
from dashboard.notes import annotate_trial
from hpo.storage import open_storage


def _note(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    return get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), trial._trial_id)["body"]


def _artifacts(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {a["filename"]: a["artifact_id"] for a in list_trial_artifacts(attrs, trial.system_attrs, trial)}


def test_every_demo_trial_has_a_note_that_says_what_happened(demo_study):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    baseline = next(t for t in study.trials if t.user_attrs.get("seed_baseline"))
    assert "seed baseline" in _note(study, baseline)
    kinds = set()
    for t in study.trials:
        note, attrs = _note(study, t), t.user_attrs
        if "pruned_at_epoch" in attrs:
            kinds.add("pruned")
            assert note.startswith(f"## Trial {t.number}: pruned at epoch {attrs['pruned_at_epoch']}")
            assert f"**Pruned** at epoch {attrs['pruned_at_epoch']} of {attrs['config']['epochs']}: val_acc" in note
        elif t.state == optuna.trial.TrialState.PRUNED:
            kinds.add("rejected")
            assert f"**Pruned before training:** {attrs['fail_reason']}" in note
        else:
            kinds.add("complete")
            assert f"**Best val_acc {t.value:.4f}**" in note
        assert f"| parameters | {attrs['params_count']:,} |" in note
        assert f"| receptive field | {attrs['receptive_field']} px |" in note
        assert f"- model: widths {attrs['config']['model']['widths']}" in note
    assert kinds == {"pruned", "rejected", "complete"}


def test_trained_trials_get_curve_svg_and_csv_rejected_ones_none(demo_study):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    for t in study.trials:
        files = _artifacts(study, t)
        if not t.intermediate_values:  # rejected before training: nothing to draw
            assert files == {}
            continue
        assert set(files) == {"learning_curve.svg", "curve.csv"}
        rows = list(csv.DictReader(open(demo_study.artifact_dir / files["curve.csv"])))
        assert [float(r["val_acc"]) for r in rows] == [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        svg = ET.parse(demo_study.artifact_dir / files["learning_curve.svg"]).getroot()
        assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2  # train_acc and val_acc


def _curve_objective(trial: optuna.Trial) -> float:
    """Records the conventional user_attrs of a 3-epoch run without training (the storage is the subject);
    trial 2 fails after its first epoch, the way the study service records a failure."""
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
    return max(m["val_acc"] for m in curve)


def test_callback_annotates_finished_trials_on_every_storage(storage_url, study_name, tmp_path):
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage_url), direction="maximize")
    store = FileSystemArtifactStore(tmp_path)
    study.optimize(_curve_objective, n_trials=3, catch=(ArithmeticError,),
                   callbacks=[functools.partial(annotate_trial, artifact_store=store)])
    failed = study.trials[2]
    assert failed.state == optuna.trial.TrialState.FAIL
    assert _note(study, failed).startswith("## Trial 2: failed\n\n**Failed:** NonFiniteLossError: loss is nan")
    for t in study.trials:
        if t.number != failed.number:
            assert _note(study, t).startswith(f"## Trial {t.number}: complete")
        files = _artifacts(study, t)
        assert set(files) == {"learning_curve.svg", "curve.csv"}
        assert (tmp_path / files["learning_curve.svg"]).read_text().startswith("<svg")
    annotate_trial(study, study.trials[0])  # re-annotating rewrites the note (a new version), nothing else
    assert _note(study, study.trials[0]).startswith("## Trial 0: complete")


def test_curve_svg_is_valid_xml_and_rejects_an_empty_curve():
    svg = curve_svg([{"epoch": 1, "val_acc": 0.5, "test_acc": 0.4}], "one <epoch>")
    root = ET.fromstring(svg)
    assert root.get("width") == "520"
    assert "one &lt;epoch&gt;" in svg
    with pytest.raises(ValueError, match="at least one epoch"):
        curve_svg([], "nothing")


def test_objective_can_annotate_its_live_trial(storage_url, study_name, tmp_path):
    store = FileSystemArtifactStore(tmp_path)

    def objective(trial: optuna.Trial) -> float:
        try:
            value = _curve_objective(trial)
            if trial.number == 1:  # what the study service records when the pruner stops a trial
                trial.set_user_attr("pruned_at_epoch", 2)
                raise optuna.TrialPruned()
            return value
        finally:
            annotate_trial(trial.study, trial, store)

    study = optuna.create_study(study_name=study_name, storage=open_storage(storage_url), direction="maximize")
    study.optimize(objective, n_trials=2)
    done, pruned = study.trials
    assert _note(study, done).startswith("## Trial 0: complete\n\n**Best val_acc")
    assert _note(study, pruned).startswith("## Trial 1: pruned at epoch 2\n\n**Pruned** at epoch 2 of ?: val_acc")
    for t in (done, pruned):  # uploaded while running: registered on the trial itself, as optuna does
        assert sorted(json.loads(v)["filename"] for k, v in t.system_attrs.items() if k.startswith("artifacts:")) \
            == ["curve.csv", "learning_curve.svg"]
