"""Finalists: the search's top trials run again with several seeds in a study of their own; the best mean
validation accuracy wins, is recorded on the search study and is what `hpo retrain` retrains by default."""

from __future__ import annotations

import io
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from cifarnet.config import DataConfig
from hpo.definition.study_file import FinalistSpec, load_study_file
from hpo.results.retrain import RetrainOptions, prepare_retrain
from hpo.running.finalists import (FINALISTS_ATTR, FinalistOptions, finalist_study_name, finalists_due,
                                   finalists_record, run_finalists, top_trials)
from hpo.running.worker import WorkerOptions, start_study
from tests.hpo.studyfiles import write_study


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_cifar):
    """A finished 4-trial search whose study file asks for 2 finalists x 2 seeds at 2 epochs."""
    folder = tmp_path_factory.mktemp("finalists")
    path = write_study(folder, "fin", f"sqlite:///{folder / 'study.db'}", budget={"epochs": 1},
                       study={"artifact_dir": str(folder / "artifacts")},
                       finalists={"top": 2, "seeds": 2, "epochs": 2})
    spec = load_study_file(path, n_trials=4)
    start_study(spec, WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1, out=io.StringIO()))
    return spec


def test_the_top_trials_run_again_with_each_seed_and_the_best_mean_wins(searched, tiny_cifar):
    out = io.StringIO()
    record = run_finalists(searched.storage, "fin", FinalistOptions(data_dir=str(tiny_cifar), device="cpu",
                                                                    threads=1, out=out))
    search = optuna.load_study(study_name="fin", storage=searched.storage)
    top = top_trials(search.trials, 2)
    assert [r["trial"] for r in record["rows"]] == [t.number for t in top]
    finals = optuna.load_study(study_name=finalist_study_name("fin"), storage=searched.storage)
    runs = finals.get_trials(states=(TrialState.COMPLETE,))
    assert sorted((t.user_attrs["finalist_of"], t.user_attrs["finalist_seed"]) for t in runs) == sorted(
        (t.number, s) for t in top for s in (0, 1))
    for run in runs:  # exactly the searched configuration, at the finalists' fidelity and seed
        source = search.trials[run.user_attrs["finalist_of"]]
        assert run.params == source.params
        assert run.user_attrs["config"]["seed"] == run.user_attrs["finalist_seed"]
        assert run.user_attrs["config"]["epochs"] == 2 and len(run.user_attrs["curve"]) == 2
    means = {r["trial"]: r["mean_val_acc"] for r in record["rows"]}
    assert record["winner"] == max(means, key=lambda n: (means[n], search.trials[n].value))
    assert search.user_attrs[FINALISTS_ATTR] == record
    assert out.getvalue().count("finalist ") == 4
    again = run_finalists(searched.storage, "fin", FinalistOptions(data_dir=str(tiny_cifar), device="cpu", threads=1,
                                                                   out=io.StringIO()))
    assert len(finals.get_trials()) == 4 and again["rows"] == record["rows"]  # finished runs are kept, not redone


def test_retrain_takes_the_finalists_winner_and_says_why(searched, tiny_cifar):
    finalists_due("fin", searched.storage, FinalistOptions(data_dir=str(tiny_cifar), device="cpu", threads=1,
                                                            out=io.StringIO()))
    search = optuna.load_study(study_name="fin", storage=searched.storage)
    winner = search.user_attrs[FINALISTS_ATTR]["winner"]
    plan = prepare_retrain("fin", RetrainOptions(storage=searched.storage, max_epochs=1))
    assert plan.trial.number == winner and plan.reason.startswith("the finalists' winner: best mean validation")
    best = prepare_retrain("fin", RetrainOptions(storage=searched.storage, max_epochs=1, finalists=False))
    assert best.trial.number == search.best_trial.number and "--no-finalists" in best.reason
    assert finalists_due("fin", searched.storage, FinalistOptions()) is None  # recorded: nothing to run


def test_the_winner_is_the_best_mean_not_the_best_search_value():
    class Finals:  # what finalists_record reads of the finalist study
        study_name = "x-finalists"

        def __init__(self, values):
            self.values = values

        def get_trials(self, deepcopy=False, states=()):
            return [optuna.trial.create_trial(value=v, user_attrs={"finalist_of": n, "finalist_seed": s})
                    for (n, s), v in self.values.items()]

    top = [optuna.trial.create_trial(value=v, user_attrs={"params_count": 1}) for v in (0.80, 0.79, 0.78)]
    for number, t in enumerate(top):
        t.number = number
    plan = FinalistSpec(top=3, seeds=2, epochs=10, train_size=1000)
    spec = SimpleNamespace(base=SimpleNamespace(epochs=10), data=DataConfig(train_size=1000))
    record = finalists_record(top, Finals({(0, 0): 0.70, (0, 1): 0.72, (1, 0): 0.74, (1, 1): 0.73,
                                           (2, 0): 0.74, (2, 1): 0.73}), plan, spec)
    assert record["winner"] == 1  # 0.735 beats trial 0's 0.71; the tie with trial 2 goes to the better search value
    assert [r["mean_val_acc"] for r in record["rows"]] == pytest.approx([0.71, 0.735, 0.735])
    unfinished = finalists_record(top, Finals({(0, 0): 0.70}), plan, spec)
    assert unfinished["winner"] is None and "no winner" not in unfinished["why"]  # a finalist without every seed never wins


def test_the_cli_prints_and_status_shows_the_finalists(searched, tiny_cifar, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    hpo = str(Path(sys.executable).parent / "hpo")
    args = ["--storage", searched.storage]
    run = subprocess.run([hpo, "study", "finalists", "fin", *args, "--data-dir", str(tiny_cifar), "--device", "cpu",
                          "-f", "json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["winner"] is not None and len(record["rows"]) == 2
    status = subprocess.run([hpo, "study", "status", "fin", *args], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"winner: trial {record['winner']} (best mean validation accuracy" in status.stdout
    assert f"trial {record['winner']}: search" in status.stdout and "<- winner" in status.stdout
