import json

import pytest
from optuna.trial import TrialState

from hpo.running.study import load_study
from hpo.definition.study_file import load_study_file
from hpo.results.summary import summarize_study
from hpo.running.worker import WorkerOptions, start_study
from tests.helpers import run_cli
from tests.hpo.studyfiles import write_study


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)  # what the summary counts: any storage does
def test_summary_counts_epochs_saved_by_pruning(tmp_path, tiny_cifar, storage_url, study_name):
    # An aggressive pruner and a parameter budget that rejects the plain-conv half of the space.
    path = write_study(tmp_path, study_name, storage_url, study={"trials": 6, "max_params": 6000},
                       pruner={"n_startup_trials": 1, "n_warmup_steps": 1})
    start_study(load_study_file(path), WorkerOptions(data_dir=str(tiny_cifar), threads=1))
    s = summarize_study(storage_url, study_name)
    trials = load_study(storage_url, study_name).get_trials()
    trained = [t for t in trials if t.user_attrs.get("curve")]
    assert s["trials"]["complete"] + s["trials"]["pruned"] == len(trials) == 6
    assert s["epochs_run"] == sum(len(t.user_attrs["curve"]) for t in trained)
    assert s["epochs_if_no_pruning"] == 3 * len(trained)
    pruned_in_training = [t for t in trained if t.state == TrialState.PRUNED]
    assert s["epochs_saved_by_pruning"] == sum(3 - len(t.user_attrs["curve"]) for t in pruned_in_training)
    assert s["rejected_before_training"] == sum(1 for t in trials if not t.user_attrs.get("curve"))
    assert s["baseline"]["trial"] == 0 and s["best"]["val_acc"] == max(t.value for t in trials if t.value is not None)

    out = tmp_path / "summary.json"
    r = run_cli("study", "summary", study_name, "--storage", storage_url, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"{s['epochs_saved_by_pruning']} saved" in r.stdout
    assert json.loads(out.read_text())["epochs_run"] == s["epochs_run"]


def test_summary_of_unknown_study_is_one_line(tmp_path):
    db = tmp_path / "x.db"
    r = run_cli("study", "summary", "nope", "--storage", f"sqlite:///{db}")
    assert r.returncode == 1 and r.stderr.startswith("error: no study database at") and "Traceback" not in r.stderr
    assert not db.exists()  # a read-only command never creates a database for a mistyped path


def test_summary_of_a_study_hpo_did_not_create_is_one_line(tmp_path):
    """A database may hold studies of plain optuna too (the dashboard shows them): no budget to count against."""
    import optuna

    url = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="plain", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    r = run_cli("study", "summary", "plain", "--storage", url)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "error: study 'plain' has no study file: it was not created by hpo\n"


def test_status_of_a_study_hpo_did_not_create_does_not_invent_a_dead_worker(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="plain", storage=url).optimize(lambda t: float("nan"), n_trials=1)
    r = run_cli("study", "status", "plain", "--storage", url)
    assert r.returncode == 0, r.stderr
    assert "trial 0: no reason recorded" in r.stdout and "worker lost" not in r.stdout
