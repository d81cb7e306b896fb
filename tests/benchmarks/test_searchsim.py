"""The search-strategy simulator (benchmarks/searchsim.py) on synthetic tables with known answers: the table
format and its errors, the surrogate, paired noise, compute accounting per scheme, the statistics, and the
CLI (benchmarks/simulate.py)."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from benchmarks import searchsim as ss

REPO = Path(__file__).resolve().parents[2]
SIGMA = 0.01  # the synthetic table's seed noise (standard deviation of the full fidelity's final value)
WIDTH_OFFSET = {16: -0.05, 32: 0.0, 64: -0.02}
OPTIMUM = {"lr": 0.1, "width": 32}  # mean final 0.8
FULL_COST, R0_COST, R1_COST = 8 * 20_000, 2 * 2_000, 4 * 5_000


def mean_final(lr: float, width: int) -> float:
    """The known objective: a parabola in log10(lr) peaking at lr = 0.1, shifted per width."""
    return 0.8 - 0.1 * (math.log10(lr) + 1) ** 2 + WIDTH_OFFSET[width]


def synthetic_raw(n_lr: int = 13) -> dict:
    """A table on a log-spaced lr grid (holding 0.1) x 3 widths; rungs rank exactly as the full runs do."""
    configs = []
    for lr in np.geomspace(0.01, 1.0, n_lr):
        for width in WIDTH_OFFSET:
            f = mean_final(float(lr), width)
            curve = [f * (1 - math.exp(-e / 2)) / (1 - math.exp(-4)) for e in range(1, 9)]
            configs.append({"params": {"lr": float(lr), "width": width}, "full": {"curve": curve, "final": f},
                            "r0": {"final": f - 0.2}, "r1": {"final": f - 0.1}})
    return {"space": {"lr": {"low": 0.01, "high": 1.0, "log": True}, "width": {"choices": [16, 32, 64]}},
            "fidelities": {"full": {"epochs": 8, "train_images": 20_000}, "r1": {"epochs": 4, "train_images": 5_000},
                           "r0": {"epochs": 2, "train_images": 2_000}},
            "configs": configs,
            "noise": [{"params": OPTIMUM, "full": [0.8 - SIGMA, 0.8, 0.8 + SIGMA]}]}


@pytest.fixture(scope="module")
def table() -> ss.Table:
    return ss.parse_table(synthetic_raw())


def fixed(params: dict) -> ss.Strategy:
    """A 'sampler' that proposes `params` in every trial (optuna's PartialFixedSampler, every parameter fixed)."""
    return ss.Strategy(lambda seed: optuna.samplers.PartialFixedSampler(params, optuna.samplers.RandomSampler(seed)))


def always_prune(table: ss.Table) -> optuna.pruners.BasePruner:
    return optuna.pruners.ThresholdPruner(lower=2.0)  # accuracies never reach 2: pruned at the first check


# ---------------------------------------------------------------------------------------------------- table


def test_load_table_orders_rungs_by_cost_and_pools_the_seed_noise(tmp_path):
    raw = synthetic_raw()
    raw["noise"] = [{"params": OPTIMUM, "full": [0.79, 0.80, 0.81], "r0": [0.5, 0.6]},
                    {"params": {"lr": 0.5, "width": 16}, "full": [0.70, 0.74]}]
    path = tmp_path / "table.json"
    path.write_text(json.dumps(raw))
    table = ss.load_table(path)
    assert [f.name for f in table.fidelities] == ["r0", "r1", "full"]
    assert [f.image_epochs for f in table.fidelities] == [R0_COST, R1_COST, FULL_COST]
    # Pooled over seeds: squares about each entry's mean over the summed degrees of freedom (2 + 1).
    assert table.noise_std["full"] == pytest.approx(math.sqrt((2 * 0.01 ** 2 + 2 * 0.02 ** 2) / 3))
    assert table.noise_std["r0"] == pytest.approx(math.sqrt(2 * 0.05 ** 2 / 1))
    assert table.noise_std["r1"] == table.noise_std["full"]  # no noise measured at r1: full's
    assert table.lr_peak_epoch == 2  # ceil(0.2 x 8 epochs)
    assert isinstance(table.space["lr"], optuna.distributions.FloatDistribution) and table.space["lr"].log
    assert table.space["width"] == optuna.distributions.CategoricalDistribution([16, 32, 64])


def _set(path: str, value):
    def mutate(raw: dict) -> None:
        *parents, last = path.split("/")
        node = raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[int(last) if isinstance(node, list) else last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return mutate


_DELETE = object()
BAD_TABLES = [
    (_set("noise", _DELETE), "missing noise"),
    (_set("extra", 1), "unknown key 'extra'"),
    (_set("space/lr", {"low": 0.0, "high": 1.0, "log": True}), "space.lr: a log range needs low > 0"),
    (_set("space/lr", {"low": 0.1}), "space.lr: expected"),
    (_set("space/width", {"choices": []}), "space.width.choices: expected a non-empty list"),
    (_set("space/depth", {"low": 1.5, "high": 4, "int": True}), "space.depth: an int range needs integer"),
    (_set("fidelities/full", _DELETE), "fidelities: expected an object holding 'full'"),
    (_set("fidelities/r1", {"epochs": 20, "train_images": 50_000}), "'full' must cost the most image-epochs"),
    (_set("fidelities/r1", {"epochs": 2, "train_images": 2_000}), "two fidelities cost the same"),
    (_set("fidelities/r0/epochs", 0), "fidelities.r0: epochs and train_images must be integers >= 1"),
    (_set("fidelities/full/lr_peak_epoch", 9), "fidelities.full.lr_peak_epoch: expected an integer in 0..8"),
    (_set("configs/0/params/width", _DELETE), "configs[0].params: missing width"),
    (_set("configs/0/params/lr", 5.0), "configs[0].params.lr: 5.0 is outside the space"),
    (_set("configs/0/params/width", 48), "configs[0].params.width: 48 is outside the space"),
    (_set("configs/0/params/depth", 3), "configs[0].params: 'depth' is not in the space"),
    (_set("configs/1/r9", {"final": 0.5}), "configs[1]: unknown fidelity 'r9'"),
    (_set("configs/2/full/curve", _DELETE), "configs[2].full: a full run needs its curve"),
    (_set("configs/2/full/curve", [0.5] * 7), "configs[2].full.curve: expected 8 finite numbers"),
    (_set("configs/2/r0/final", "high"), "configs[2].r0.final: expected a finite number, got 'high'"),
    (_set("configs/3", {"params": {"lr": 0.1, "width": 32}}), "configs[3]: measures no fidelity"),
    (lambda raw: [c.pop("r1") for c in raw["configs"]], "configs: no config measures fidelity 'r1'"),
    (_set("noise/0/full", [0.8]), "needs an entry with two or more 'full' finals"),
    (_set("noise/0/params/lr", 2.0), "noise[0].params.lr: 2.0 is outside the space"),
    (_set("noise/0/r7", [0.1, 0.2]), "noise[0]: unknown fidelity 'r7'"),
]


@pytest.mark.parametrize("mutate, message", BAD_TABLES, ids=[m for _, m in BAD_TABLES])
def test_load_table_names_the_file_and_the_field_of_each_problem(tmp_path, mutate, message):
    raw = copy.deepcopy(synthetic_raw(n_lr=3))
    mutate(raw)
    path = tmp_path / "table.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as error:
        ss.load_table(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_load_table_rejects_a_file_that_is_not_json(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("{'space': ")
    with pytest.raises(ValueError, match="table.json: not valid JSON"):
        ss.load_table(path)
    with pytest.raises(ValueError, match="expected a JSON object"):
        ss.parse_table([1, 2])


# ------------------------------------------------------------------------------------------------ surrogate


def test_encode_puts_every_parameter_on_a_unit_scale(table):
    mid = ss.encode(table.space, {"lr": 0.1, "width": 32})  # 0.1 is the log-midpoint of [0.01, 1]
    assert mid.tolist() == pytest.approx([0.5, 0, 1 / math.sqrt(2), 0])
    other = ss.encode(table.space, {"lr": 0.1, "width": 64})
    assert np.linalg.norm(mid - other) == pytest.approx(1.0)  # two choices: as far apart as a range's ends


def test_surrogate_answers_measured_configs_and_interpolates_between_neighbours(table):
    surrogate = ss.Surrogate(table, neighbours=2)
    assert surrogate.final(OPTIMUM) == pytest.approx(0.8)
    assert surrogate.final(OPTIMUM, "r0") == pytest.approx(0.6)
    measured = next(c for c in table.configs if c["params"] == {"lr": 0.01, "width": 64})
    assert surrogate.curve(measured["params"]).tolist() == pytest.approx(measured["full"]["curve"])
    # Halfway (on the log scale) between two grid points: the mean of the two, the nearest pair.
    grid = np.geomspace(0.01, 1.0, 13)
    between = {"lr": float(math.sqrt(grid[3] * grid[4])), "width": 16}
    expected = (mean_final(grid[3], 16) + mean_final(grid[4], 16)) / 2
    assert surrogate.final(between) == pytest.approx(expected)
    assert surrogate.curve(between)[-1] == pytest.approx(expected)


def test_surrogate_averages_duplicate_measurements():
    raw = synthetic_raw(n_lr=3)
    raw["configs"].append(copy.deepcopy(raw["configs"][0]))
    raw["configs"][-1]["full"]["final"] += 0.1
    surrogate = ss.Surrogate(ss.parse_table(raw))
    assert surrogate.final(raw["configs"][0]["params"]) == pytest.approx(raw["configs"][0]["full"]["final"] + 0.05)


# ---------------------------------------------------------------------------------------------- simulation


def test_noise_draws_depend_on_seed_repetition_and_trial_only():
    a = ss.noise_draws(0, 3, 7, 3)
    assert np.array_equal(a, ss.noise_draws(0, 3, 7, 3))
    for other in (ss.noise_draws(1, 3, 7, 3), ss.noise_draws(0, 4, 7, 3), ss.noise_draws(0, 3, 8, 3)):
        assert not np.allclose(a, other)
    assert ss.sampler_seed(0, 3) == ss.sampler_seed(0, 3) != ss.sampler_seed(0, 4)


def test_every_strategy_sees_the_same_noise_draw_for_the_same_trial(table):
    """Paired by repetition: two strategies that always run configs a and b differ, trial by trial, by exactly
    f(a) - f(b), although each trial's value carries its own noise draw."""
    b = {"lr": 0.01, "width": 16}
    sim = ss.simulate(table, {"random": fixed(OPTIMUM), "b": fixed(b)}, repetitions=3, budget_trials=6, horizon=1)
    for trace_a, trace_b in zip(sim.traces["random"], sim.traces["b"]):
        assert trace_a.value - trace_b.value == pytest.approx(np.full(6, 0.8 - mean_final(**b)))
        assert np.std(trace_a.value) > SIGMA / 3  # the draws are there
    surrogate = ss.Surrogate(table)
    for r, trace in enumerate(sim.traces["random"]):
        drawn = [ss.noise_draws(0, r, k, 3)[-1] for k in range(6)]
        assert trace.value == pytest.approx(surrogate.final(OPTIMUM) + SIGMA * np.array(drawn))
    assert not np.allclose(sim.traces["random"][0].value, sim.traces["random"][1].value)


def test_same_seed_same_results_other_seed_other_results(table):
    strategies = {name: ss.STRATEGIES[name] for name in ("random", "tpe", "random-median", "tpe-hyperband")}

    def run(seed: int) -> tuple[list, dict]:
        sim = ss.simulate(table, strategies, repetitions=3, seed=seed, budget_trials=12)
        flat = [(name, t.cost.tolist(), t.value.tolist(), t.reached.tolist())
                for name, traces in sim.traces.items() for t in traces]
        return flat, ss.summarise(sim, n_boot=200, seed=seed)

    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert first[0] != other[0]


def test_pruned_trials_cost_what_they_ran(table):
    surrogate = ss.Surrogate(table)

    def trace(scheme: str, pruner) -> ss.Trace:
        return ss.run_repetition(table, surrogate, ss.Strategy(ss.STRATEGIES["random"].sampler, scheme, pruner),
                                 repetition=0, seed=0, horizon=10 * FULL_COST)

    stopped_at_rung0 = trace("rungs", always_prune)
    assert set(stopped_at_rung0.cost) == {R0_COST} and not stopped_at_rung0.reached.any()
    assert len(stopped_at_rung0.cost) == 10 * FULL_COST // R0_COST
    every_rung = trace("rungs", lambda t: optuna.pruners.ThresholdPruner(lower=-1.0))
    assert set(every_rung.cost) == {R0_COST + R1_COST + FULL_COST} and every_rung.reached.all()
    first_epoch = trace("epochs", always_prune)
    assert set(first_epoch.cost) == {20_000} and not first_epoch.reached.any()
    sim = ss.Simulation({"x": [stopped_at_rung0]}, "x", FULL_COST, 10 * FULL_COST, FULL_COST)
    assert ss.pruning_effect(sim, "x")[0] == pytest.approx(1 - R0_COST / FULL_COST)


def test_successive_halving_keeps_about_a_third_of_the_trials_at_each_rung(table):
    """Rung i is reported at step 3**i, optuna's rung i: of trials ranked alike at every rung, about 1/3 pass
    rung 0 and 1/9 reach the full run (more early on, while few trials compete)."""
    strategy = ss.STRATEGIES["random-halving"]
    trace = ss.run_repetition(table, ss.Surrogate(table), strategy, repetition=0, seed=0, horizon=40 * FULL_COST)
    passed_rung0 = np.mean(trace.cost > R0_COST)
    assert len(trace.cost) > 200
    assert 0.25 < passed_rung0 < 0.45
    assert 0.08 < trace.reached.mean() < 0.2
    assert set(trace.cost) == {R0_COST, R0_COST + R1_COST, R0_COST + R1_COST + FULL_COST}


def test_median_pruning_waits_past_the_learning_rate_peak(table):
    trace = ss.run_repetition(table, ss.Surrogate(table), ss.STRATEGIES["random-median"], 0, 0, 30 * FULL_COST)
    epochs = set((trace.cost / 20_000).astype(int))
    assert min(epochs) == table.lr_peak_epoch + 1 and 8 in epochs  # never before the peak, some run in full


@pytest.mark.parametrize("name", list(ss.STRATEGIES))
def test_every_registered_strategy_runs_on_the_table(table, name):
    sim = ss.simulate(table, {"random": ss.STRATEGIES["random"], name: ss.STRATEGIES[name]}, repetitions=2,
                      budget_trials=3, horizon=1)
    for trace in sim.traces[name]:
        assert trace.cost.sum() >= 3 * FULL_COST and np.isfinite(trace.value).all()
        assert (trace.cost <= R0_COST + R1_COST + FULL_COST).all()
    assert ss.summarise(sim, n_boot=50)["strategies"][name]["trials"] >= 3


def test_arguments_are_checked(table):
    with pytest.raises(ValueError, match="needed exactly when the scheme prunes"):
        ss.Strategy(ss.STRATEGIES["random"].sampler, "epochs")
    with pytest.raises(ValueError, match="scheme must be one of"):
        ss.Strategy(ss.STRATEGIES["random"].sampler, "restarts", ss.median_pruner)
    with pytest.raises(ValueError, match="reference strategy 'random' is not among tpe"):
        ss.simulate(table, {"tpe": ss.STRATEGIES["tpe"]})
    raw = synthetic_raw(n_lr=3)
    raw["fidelities"] = {"full": raw["fidelities"]["full"]}
    for config in raw["configs"]:
        del config["r0"], config["r1"]
    with pytest.raises(ValueError, match="rungs scheme needs fidelities cheaper than 'full'"):
        ss.simulate(ss.parse_table(raw), {"random": ss.STRATEGIES["random"], "h": ss.STRATEGIES["random-halving"]})


# --------------------------------------------------------------------------------------------- comparisons


def test_a_sampler_that_proposes_the_optimum_reaches_randoms_best_far_sooner(table):
    sim = ss.simulate(table, {"random": ss.STRATEGIES["random"], "oracle": fixed(OPTIMUM)}, repetitions=20,
                      budget_trials=15)
    row = ss.summarise(sim, n_boot=300)["strategies"]["oracle"]
    # Random's best carries its luckiest noise draw: the oracle needs a few draws of its own to match it
    # (a few trials, against random's budget of 15), and now and then never does.
    assert row["reached"] >= 0.9
    assert row["median_ratio"] < 0.25 and row["ratio_interval"][1] < 1 / 3
    assert row["p_vs_reference_holm"] < 1e-3
    assert row["goal_met"] and row["p_ratio_below_goal_holm"] < 0.05


def test_an_independent_random_search_is_no_better_and_no_worse_than_random(table):
    strategies = {"random": ss.STRATEGIES["random"], "other": ss.STRATEGIES["random-other-seeds"]}
    sim = ss.simulate(table, strategies, repetitions=40, budget_trials=20)
    summary = ss.summarise(sim, n_boot=300)
    rows = summary["strategies"]
    assert summary["target"] == "next repetition"
    assert 0.6 < rows["other"]["median_ratio"] / rows["random"]["median_ratio"] < 1.6
    assert 0.6 < rows["random"]["median_ratio"] < 1.6  # random needs about its budget to reach its final best
    assert rows["other"]["p_vs_reference"] > 0.2 and not rows["other"]["goal_met"]
    # Targeted with the reference's own best, the same search looks slower: the bias reach_targets avoids.
    biased = ss.summarise(sim, n_boot=300, same_repetition=True)["strategies"]
    assert biased["random"]["median_ratio"] == 1.0 and biased["other"]["median_ratio"] > 1.6
    assert biased["other"]["p_vs_reference"] < 0.01


def test_a_renamed_copy_of_random_gives_identical_compute_and_p_one(table):
    sim = ss.simulate(table, {"random": ss.STRATEGIES["random"], "copy": ss.STRATEGIES["random"]}, repetitions=6,
                      budget_trials=10)
    rows = ss.summarise(sim, n_boot=100)["strategies"]
    assert rows["copy"]["median_ratio"] == rows["random"]["median_ratio"]
    assert rows["copy"]["p_vs_reference"] == 1.0 and rows["copy"]["p_vs_reference_holm"] == 1.0


def test_pruning_on_the_same_draws_saves_compute_and_keeps_the_best_on_ranked_curves(table):
    """The curves never cross, so the median pruner never loses the best configuration; it finds random's
    targets with less compute on the very same proposals."""
    sim = ss.simulate(table, {"random": ss.STRATEGIES["random"], "median": ss.STRATEGIES["random-median"]},
                      repetitions=20, budget_trials=20)
    rows = ss.summarise(sim, n_boot=200)["strategies"]
    assert rows["median"]["best_survival"] == 1.0 and rows["median"]["compute_saved"] > 0.2
    assert rows["median"]["median_ratio"] < rows["random"]["median_ratio"]
    assert rows["median"]["p_vs_reference"] < 0.05
    targets = ss.reach_targets(sim)
    d = ss.log_differences(ss.compute_to_reach(sim, "median", targets), ss.compute_to_reach(sim, "random", targets))
    assert (d <= 0).all() and (d < 0).sum() >= 5  # never later than random on the same proposals


# --------------------------------------------------------------------------------------------- statistics


def test_trace_best_so_far_counts_only_full_fidelity_trials():
    trace = ss.Trace(np.array([10.0, 10.0, 5.0]), np.array([0.5, 0.9, 0.95]), np.array([True, False, True]))
    assert trace.best_at(np.array([0, 9.9, 10, 20, 25, 99])).tolist() == [-np.inf, -np.inf, 0.5, 0.5, 0.95, 0.95]
    assert trace.compute_to_reach(0.9) == 25.0  # the 0.9 trial was pruned: it is not found
    assert trace.compute_to_reach(0.5) == 10.0
    assert trace.compute_to_reach(0.99) == math.inf


def test_iqm_is_the_mean_of_the_middle_half():
    assert ss.iqm(np.arange(1, 9)) == 4.5  # mean of 3, 4, 5, 6
    assert ss.iqm([1, 2, 3, 1000]) == 2.5  # a runaway repetition does not move it
    assert ss.iqm(np.array([[1, 10], [2, 20], [3, 30], [4, 40]])).tolist() == [2.5, 25.0]
    assert ss.iqm([-np.inf, 1, 2, 3]) == 1.5


def test_bootstrap_interval_on_known_arrays():
    lo, hi = ss.bootstrap_interval(np.full(30, 0.7), np.median)
    assert lo == hi == 0.7
    x = np.random.default_rng(0).normal(0, 1, 400)
    lo, hi = ss.bootstrap_interval(x, np.mean, n_boot=2000, seed=1)
    assert lo < np.mean(x) < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.2)  # +-1.96 sigma/sqrt(n)
    assert (lo, hi) == ss.bootstrap_interval(x, np.mean, n_boot=2000, seed=1)
    lo, hi = ss.bootstrap_interval([1.0, 1.0, 1.0, np.inf, np.inf], np.median)
    assert lo == 1.0 and hi == np.inf  # never-reached repetitions keep the upper bound honest, not nan


def test_holm_on_known_p_values():
    assert ss.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert ss.holm([0.5, 0.9]) == [1.0, 1.0]
    assert ss.holm([0.2]) == [0.2]


def test_wilcoxon_treats_never_reached_as_the_largest_difference():
    assert ss.wilcoxon_p(np.zeros(10)) == 1.0
    assert ss.wilcoxon_p(-np.arange(1.0, 21)) == pytest.approx(2 / 2 ** 20)  # exact: every sign negative
    d = np.array([np.inf, -1, -2, -3, 4, -5, -6, 7, -8])
    assert ss.wilcoxon_p(d) == ss.wilcoxon_p(np.where(np.isinf(d), 100.0, d))
    assert ss.wilcoxon_p(-np.arange(1.0, 21), "less") < 1e-5
    assert ss.wilcoxon_p(np.arange(1.0, 21), "less") > 0.99
    assert ss.log_differences(np.array([np.inf, np.inf, 2.0]), np.array([np.inf, 1.0, 4.0])).tolist() == \
        pytest.approx([0.0, np.inf, math.log(0.5)])


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_prints_the_table_and_writes_results_deterministically(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(synthetic_raw(n_lr=7)))

    def run(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "simulate.py"), str(path), "--out", str(out),
                               "--strategies", "random-median", "random-halving", "--repetitions", "4",
                               "--budget-trials", "5"], check=False, capture_output=True, text=True, timeout=120)

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    lines = first.stdout.splitlines()
    assert lines[0].split()[:3] == ["strategy", "ratio", "[95%"]
    assert [line.split()[0] for line in lines[1:4]] == ["random", "random-median", "random-halving"]
    record = json.loads((tmp_path / "a" / "simulation.json").read_text())
    assert record["settings"]["repetitions"] == 4 and record["table"]["fidelities"] == ["r0", "r1", "full"]
    assert record["table"]["noise_std"]["full"] == pytest.approx(SIGMA)
    assert set(record["summary"]["strategies"]) == {"random", "random-median", "random-halving"}
    assert "p_vs_reference_holm" in record["summary"]["strategies"]["random-halving"]
    assert (tmp_path / "a" / "anytime.html").stat().st_size > 10_000
    assert record["summary"] == json.loads((tmp_path / "b" / "simulation.json").read_text())["summary"]


def test_cli_reports_a_bad_table_in_one_line(tmp_path):
    path = tmp_path / "table.json"
    raw = synthetic_raw(n_lr=3)
    del raw["noise"]
    path.write_text(json.dumps(raw))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "simulate.py"), str(path), "--out",
                           str(tmp_path / "out")], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {path}: missing noise"
    assert not (tmp_path / "out").exists()
