"""The report's compute sections: epochs saved by pruning, and the strategy comparison of a search benchmark's
studies stored side by side (benchmarks/search.py names them <benchmark>-<strategy>-s<seed>)."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from dashboard.report import build_report
from hpo.results.efficiency import anytime, compute_to_reach, pruning_savings


def _trial(state: TrialState, vals: list[float]) -> optuna.trial.FrozenTrial:
    curve = [{"epoch": i + 1, "val_acc": v, "train_time_s": 1.0, "eval_time_s": 0.5} for i, v in enumerate(vals)]
    return create_trial(state=state, value=max(vals) if state == TrialState.COMPLETE else None,
                        params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1.0)},
                        intermediate_values={i + 1: v for i, v in enumerate(vals)},
                        user_attrs={"curve": curve})


def _study(storage, name: str, trials: list[tuple[TrialState, list[float]]]) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("study_file", {"budget": {"epochs": 4}})
    for state, vals in trials:
        study.add_trial(_trial(state, vals))
    return study


def test_pruning_savings_and_compute_to_reach():
    trials = [_trial(TrialState.COMPLETE, [0.3, 0.4, 0.5, 0.6]), _trial(TrialState.PRUNED, [0.1, 0.1]),
              _trial(TrialState.COMPLETE, [0.5, 0.6, 0.7, 0.7])]
    for n, t in enumerate(trials):
        t.number = n
    saved = pruning_savings(trials, 4)
    assert saved == {"epochs_trained": 10, "epochs_unpruned": 12, "epochs_saved": 2, "fraction_saved": 2 / 12,
                     "pruned_trials": 1, "unit": "epochs"}
    rows = anytime(trials)
    assert [r["cum_epochs"] for r in rows] == [4, 6, 10] and [r["best_so_far"] for r in rows] == [0.6, 0.6, 0.7]
    assert compute_to_reach(rows, 0.65) == 10 and compute_to_reach(rows, 0.9) is None
    assert compute_to_reach(rows, 0.6, "seconds") == 6.0


def test_report_compares_the_strategies_of_one_benchmark(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'bench.db'}")
    random = _study(storage, "bench-random-s0", [(TrialState.COMPLETE, [0.2, 0.3, 0.4, 0.5]),
                                                  (TrialState.COMPLETE, [0.3, 0.4, 0.5, 0.6])])
    _study(storage, "bench-tpe-median-s0", [(TrialState.COMPLETE, [0.3, 0.4, 0.6, 0.65]),
                                            (TrialState.PRUNED, [0.1, 0.1])])
    _study(storage, "unrelated", [(TrialState.COMPLETE, [0.9])])
    page = build_report(optuna.load_study(study_name="bench-tpe-median-s0", storage=storage), storage)
    assert 'id="strategies"' in page and 'id="pruning"' in page
    assert "tpe-median: median best 0.6500 over 1 seed(s), epochs to reach random&#x27;s best: x0.50" in page
    assert "1 pruned trial(s): 6 of 8 epochs trained, 2 saved (25%)" in page
    assert 'id="strategies"' not in build_report(optuna.load_study(study_name="unrelated", storage=storage), storage)
    assert 'id="strategies"' in build_report(random, storage)
