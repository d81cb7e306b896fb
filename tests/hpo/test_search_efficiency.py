"""Search-efficiency tooling: the pruner replay on synthetic curves with known answers, the `--workers auto`
choice from given measurements, and the search benchmark's study layout on tiny data."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hpo.running.packing import Machine, choose_workers
from benchmarks.pruner_replay import PRUNERS, replay, replay_order, replay_pruners

REPO = Path(__file__).resolve().parents[2]
FLAT = [0.5, 0.5, 0.5, 0.5]
LATE_BLOOMER = [0.1, 0.1, 0.1, 0.9]  # worst until the last epoch, then the best trial of all


def median(startup: int = 1, warmup: int = 0) -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)


def test_late_bloomer_survives_only_when_it_runs_first():
    curves = [FLAT, FLAT, FLAT, FLAT, LATE_BLOOMER]
    assert replay_order(curves, [4, 0, 1, 2, 3], median()) == [4, 4, 4, 4, 4]
    # Once a trial has finished, the bloomer's 0.1 at epoch 1 is below the median (0.5): pruned there.
    assert replay_order(curves, [0, 1, 2, 3, 4], median()) == [4, 4, 4, 4, 1]
    assert replay_order(curves, [0, 4, 1, 2, 3], median()) == [4, 4, 4, 4, 1]  # indexed by curve


def test_replay_means_match_the_orders_drawn():
    curves = [FLAT, FLAT, FLAT, FLAT, LATE_BLOOMER]
    result = replay(curves, median, orders=40, rng=random.Random(7))
    rng, first = random.Random(7), 0
    for _ in range(40):
        order = list(range(5))
        rng.shuffle(order)
        first += order[0] == 4
    assert result["top1_survival"] == pytest.approx(first / 40)
    assert result["epochs_saved"] == pytest.approx((40 - first) / 40 * 3 / 20)
    assert result["top3_any_survival"] == 1.0  # two flat trials are among the top 3 and are never pruned
    assert 0 < result["top1_survival"] < 1


def test_consistently_ranked_curves_never_lose_the_best_trial():
    curves = [[0.1 * i + 0.01 * e for e in range(4)] for i in range(1, 9)]
    result = replay(curves, lambda: median(startup=1), orders=30, rng=random.Random(0))
    assert result["top1_survival"] == 1.0
    assert result["epochs_saved"] > 0  # the worse half is cut early in most orders


def test_no_pruning_saves_nothing_and_replay_is_deterministic():
    curves = [[random.Random(i).random() for _ in range(4)] for i in range(10)]
    nop = replay(curves, optuna.pruners.NopPruner, orders=5, rng=random.Random(0))
    assert nop == {"epochs_saved": 0.0, "top1_survival": 1.0, "top3_any_survival": 1.0, "top3_mean_survival": 1.0}
    a = replay_pruners([curves], PRUNERS, epochs=4, orders=3, seed=1)
    b = replay_pruners([curves], PRUNERS, epochs=4, orders=3, seed=1)
    assert a == b and set(a) == set(PRUNERS)


def test_workers_auto_picks_the_measured_best_for_this_machine():
    runs = [
        {"device": "cpu", "cores": 2, "gpu": "", "concurrent": 1, "trials_per_hour": 300.0},
        {"device": "cpu", "cores": 2, "gpu": "", "concurrent": 2, "trials_per_hour": 250.0},
        {"device": "cpu", "cores": 16, "gpu": "", "concurrent": 4, "trials_per_hour": 900.0},
        {"device": "cuda", "cores": 16, "gpu": "NVIDIA H200", "concurrent": 1, "trials_per_hour": 400.0},
        {"device": "cuda", "cores": 16, "gpu": "NVIDIA H200", "concurrent": 4, "trials_per_hour": 1300.0},
        {"device": "cuda", "cores": 16, "gpu": "NVIDIA H200", "concurrent": 8, "trials_per_hour": 1250.0},
    ]
    assert choose_workers(runs, Machine("cpu", 2)).workers == 1
    assert choose_workers(runs, Machine("cpu", 16)).workers == 4
    assert choose_workers(runs, Machine("cuda", 16, "NVIDIA H200")).workers == 4
    unknown = choose_workers(runs, Machine("cuda", 8, "NVIDIA L4"))
    assert unknown.workers == 1 and "no packing measurement" in unknown.reason
    assert choose_workers([], Machine("cpu", 2)).workers == 1


def test_search_benchmark_layout_on_tiny_data(tiny_cifar, tmp_path):
    """Two strategies x one seed on the tiny set: one study per (strategy, seed) in one SQLite file, with the
    strategy's sampler and pruner, a runs/ record per study and the summary with the headline ratio."""
    out = tmp_path / "search"
    cmd = [sys.executable, str(REPO / "benchmarks" / "search.py"), "--data-dir", str(tiny_cifar), "--out", str(out),
           "--study-file", str(REPO / "studies" / "smoke.toml"), "--strategies", "random", "tpe-median",
           "--seeds", "3", "--trials", "3", "--epochs", "2", "--train-size", "160", "--val-size", "40", "--no-png"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    storage = f"sqlite:///{out / 'search.db'}"
    assert sorted(optuna.get_all_study_names(storage)) == ["search-random-s3", "search-tpe-median-s3"]
    study = optuna.load_study(study_name="search-tpe-median-s3", storage=storage)
    stored = study.user_attrs["study_file"]
    assert stored["sampler"]["kind"] == "tpe" and stored["sampler"]["seed"] == 3
    assert stored["pruner"]["kind"] == "median" and stored["budget"]["epochs"] == 2
    assert len(study.trials) == 3
    record = json.loads((out / "runs" / "random-s3.json").read_text())
    assert [r["number"] for r in record["trials"]] == [0, 1, 2]
    assert record["trials"][-1]["cum_epochs"] == record["epochs"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategies"]["random"]["median_ratio_epochs"] == 1.0
    assert set(summary["strategies"]) == {"random", "tpe-median"}
    assert (out / "anytime.html").stat().st_size > 10_000
