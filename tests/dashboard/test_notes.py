"""Per-trial notes and learning-curve artifacts: on the real demo study, and through the callback path
(finished trials) on every storage backend."""

from __future__ import annotations

import csv
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
    by_state = {s: [t for t in study.trials if t.state == s] for s in optuna.trial.TrialState}
    baseline = next(t for t in study.trials if t.user_attrs.get("seed_baseline"))
    assert "seed baseline" in _note(study, baseline)
    for t in by_state[optuna.trial.TrialState.PRUNED]:
        epochs = t.user_attrs['config']['epochs']
        assert f"**Pruned** at epoch {t.user_attrs['pruned_at_epoch']} of {epochs}: val_acc" in _note(study, t)
    for t in by_state[optuna.trial.TrialState.FAIL]:
        assert f"**Failed:** {t.user_attrs['fail_reason']}" in _note(study, t)
    for t in by_state[optuna.trial.TrialState.COMPLETE]:
        note = _note(study, t)
        assert f"| parameters | {t.user_attrs['params_count']:,} |" in note
        assert f"| receptive field | {t.user_attrs['receptive_field']} px |" in note
        assert f"- model: widths {t.user_attrs['config']['model']['widths']}" in note
    assert all(by_state[s] for s in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL))


def test_trained_trials_get_curve_svg_and_csv_failed_ones_none(demo_study):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    for t in study.trials:
        files = _artifacts(study, t)
        if t.state == optuna.trial.TrialState.FAIL:
            assert files == {}
            continue
        assert set(files) == {"learning_curve.svg", "curve.csv"}
        rows = list(csv.DictReader(open(demo_study.artifact_dir / files["curve.csv"])))
        assert [float(r["val_acc"]) for r in rows] == [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        svg = ET.parse(demo_study.artifact_dir / files["learning_curve.svg"]).getroot()
        assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2  # train_acc and val_acc


def _curve_objective(trial: optuna.Trial) -> float:
    """Records the conventional user_attrs of a 3-epoch run without training (the storage is the subject)."""
    x = trial.suggest_float("lr", 0.01, 0.3, log=True)
    curve = [{"epoch": e, "train_acc": 0.2 * e, "val_acc": 0.1 * e + x, "train_time_s": 0.5} for e in (1, 2, 3)]
    trial.set_user_attr("curve", curve)
    trial.set_user_attr("params_count", 3804)
    for m in curve:
        trial.report(m["val_acc"], m["epoch"])
    return max(m["val_acc"] for m in curve)


def test_callback_annotates_finished_trials_on_every_storage(storage_url, study_name, tmp_path):
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage_url), direction="maximize")
    store = FileSystemArtifactStore(tmp_path)
    study.optimize(_curve_objective, n_trials=2, callbacks=[functools.partial(annotate_trial, artifact_store=store)])
    for t in study.trials:
        assert t.state.is_finished()
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
