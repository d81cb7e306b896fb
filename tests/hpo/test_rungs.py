"""Budget-aware multi-fidelity: a study with [budget] rungs makes each rung's complete cheaper run before its full
run, offers every rung's score to the pruner (steps 1, 3, 9: the rungs of optuna's successive halving with
reduction factor 3) and records what each rung cost."""

from __future__ import annotations

import copy
import io

import optuna
import pytest
from optuna.trial import TrialState

from hpo.definition.study_file import Rung, load_study_file
from hpo.errors import StudyFileError
from hpo.results.consistency import check_consistency
from hpo.running.objective import Objective
from hpo.running.notes import format_note
from hpo.storage import open_storage
from hpo.running.worker import WorkerOptions, start_study
from hpo.definition.study_file import to_toml
from tests.hpo.studyfiles import TINY_STUDY, write_study

RUNGS = [{"epochs": 1, "train_size": 40}, {"epochs": 1, "train_size": 80}]


def test_rungs_are_parsed_cheapest_first_and_checked(tmp_path, study_name):
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_study_file(write_study(tmp_path, study_name, url, budget={"epochs": 2, "train_size": 160,
                                                                          "rungs": RUNGS}))
    assert spec.rungs == (Rung(1, 40), Rung(1, 80))
    bad = [([{"epochs": 1, "train_size": 80}, {"epochs": 1, "train_size": 40}], "cost less and less"),
           ([{"epochs": 2, "train_size": 160}], "cost less and less"),  # as costly as the full budget
           ([{"epochs": 1}], "needs both epochs and train_size"), ([3], "must be a table"),
           ([{"epochs": 1, "train_size": 40, "lr": 1}], "unknown key")]
    for rungs, message in bad:
        path = write_study(tmp_path, study_name, url, budget={"epochs": 2, "train_size": 160, "rungs": rungs})
        with pytest.raises(StudyFileError, match=message):
            load_study_file(path)


def rung_study(tmp_path, study_name):
    url = f"sqlite:///{tmp_path / 's.db'}"
    raw = copy.deepcopy(TINY_STUDY)
    raw["study"].update(name=study_name, storage=url)
    raw["budget"].update(epochs=2, train_size=160, rungs=RUNGS)
    raw["pruner"] = {"kind": "successive-halving", "min_resource": 1, "reduction_factor": 3}
    raw["sampler"] = {"kind": "random", "seed": 0}
    path = tmp_path / "rungs.toml"
    path.write_text(to_toml(raw))
    return path, url


def test_each_trial_runs_its_rungs_then_the_full_budget(tmp_path, tiny_cifar, study_name):
    path, url = rung_study(tmp_path, study_name)
    start_study(load_study_file(path, n_trials=3), WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1,
                                                                 out=io.StringIO()))
    trials = optuna.load_study(study_name=study_name, storage=url).trials
    assert len(trials) == 3
    for t in trials:
        rungs = t.user_attrs["rungs"]
        assert [(r["rung"], r["epochs"], r["train_size"]) for r in rungs] == [(0, 1, 40), (1, 1, 80)][:len(rungs)]
        assert [t.intermediate_values[3 ** r["rung"]] for r in rungs] == [r["val_acc"] for r in rungs]
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["pruned_at_rung"] == len(rungs) - 1 and "curve" not in t.user_attrs
        else:
            assert t.state == TrialState.COMPLETE and len(rungs) == 2
            assert len(t.user_attrs["curve"]) == 2  # the full run, scored every epoch
            assert t.value == max(m["val_acc"] for m in t.user_attrs["curve"]) == t.intermediate_values[9]


def test_successive_halving_stops_trials_at_their_rungs(tmp_path, tiny_cifar, study_name, monkeypatch):
    """Rung scores made distinct (a trial's rung score = its lr): the pruner's decisions are optuna's own
    successive halving over rung 0 and rung 1, and a pruned trial never runs a later rung or its full run."""
    ran: list[tuple[float, int]] = []

    def rung_score(self, i, rung, cfg, run_opts):
        ran.append((cfg.lr, i))
        return {"rung": i, "epochs": rung.epochs, "train_size": rung.train_size, "val_acc": cfg.lr,
                "train_time_s": 0.0, "eval_time_s": 0.0}

    monkeypatch.setattr(Objective, "_train_rung", rung_score)
    path, url = rung_study(tmp_path, study_name)
    out = io.StringIO()
    start_study(load_study_file(path, n_trials=12), WorkerOptions(data_dir=str(tiny_cifar), device="cpu",
                                                                  threads=1, out=out))
    trials = optuna.load_study(study_name=study_name, storage=url).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and len(pruned) < len(trials)
    for t in pruned:
        i = t.user_attrs["pruned_at_rung"]
        assert len(t.user_attrs["rungs"]) == i + 1 and "curve" not in t.user_attrs
        assert (t.params["lr"], i + 1) not in ran  # stopped: its next rung never ran
        earlier = [u.intermediate_values[3 ** i] for u in trials if u.number < t.number and 3 ** i in
                   u.intermediate_values]
        assert earlier and t.params["lr"] < max(earlier)  # it was not the best so far at that rung
        # its progress line and its note name the rung and its score (not "epoch ?", "nan", "before training")
        assert f"trial {t.number} pruned at rung {i} (val_acc {t.params['lr']:.4f})" in out.getvalue()
        assert format_note(t).startswith(f"## Trial {t.number}: pruned at rung {i}\n\n**Pruned** at rung {i} (")
    # the records of a rung study are consistent (steps 1, 3, 9 are rungs, not epochs)
    assert check_consistency(open_storage(url), study_name) == []
