"""What a study spent and found, trial by trial, and how search strategies compare on it: the figures behind the
search-efficiency benchmark (benchmarks/search.py, results/search/summary.json) and the report's compute sections.

Compute is counted in epochs trained (deterministic: it does not drift with the machine's load) and in
training + evaluation seconds as recorded per epoch in each trial's "curve" user_attr. "Best so far" counts
COMPLETE trials only, as the study itself reports its best.
"""

from __future__ import annotations

import re
import statistics
from typing import Any, Iterable

from optuna.trial import FrozenTrial, TrialState

from hpo.definition.study_file import TRAIN_IMAGES, StudySpec

# Studies written by benchmarks/search.py are named <benchmark>-<strategy>-s<seed>.
BENCHMARK_NAME = re.compile(r"^(?P<benchmark>[A-Za-z0-9_.]+)-(?P<strategy>[A-Za-z0-9_.-]+)-s(?P<seed>\d+)$")


def anytime(trials: Iterable[FrozenTrial]) -> list[dict[str, Any]]:
    """One row per trial in number order: its epochs and seconds, cumulative compute and best-so-far."""
    rows, epochs, seconds, best = [], 0, 0.0, None
    for t in sorted(trials, key=lambda t: t.number):
        curve = t.user_attrs.get("curve", [])
        spent = sum(m.get("train_time_s", 0.0) + m.get("eval_time_s", 0.0) for m in curve)
        epochs += len(curve)
        seconds += spent
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = t.value if best is None else max(best, t.value)
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                     "params_count": t.user_attrs.get("params_count"), "macs": t.user_attrs.get("macs"),
                     "val_curve": [m["val_acc"] for m in curve], "epochs": len(curve), "seconds": round(spent, 2),
                     "cum_epochs": epochs, "cum_seconds": round(seconds, 2), "best_so_far": best})
    return rows


def compute_to_reach(rows: list[dict[str, Any]], target: float, unit: str = "epochs") -> float | None:
    """Cumulative compute (`epochs` or `seconds`) at the first trial whose best-so-far reaches `target`."""
    for row in rows:
        if row["best_so_far"] is not None and row["best_so_far"] >= target - 1e-12:
            return row[f"cum_{unit}"]
    return None


def pruning_savings(trials: Iterable[FrozenTrial], budget_epochs: int,
                    rungs: Iterable[tuple[int, int]] = (), train_size: int | None = None) -> dict[str, Any]:
    """Epochs trained, and the epochs pruning saved: what each pruned trial's budget allowed beyond the epochs
    it ran. The one computation behind `hpo study summary` and `hpo report`.

    Trained = epochs run by this attempt: a re-run that resumed a dead attempt's checkpoint did not train the
    epochs it took from it (user_attr "resumed_at_epoch"); those count once, in the dead attempt. Only pruning
    saves: a killed or interrupted trial's missing epochs were never skipped by choice. Trials rejected before
    training and trials still running are left out.

    A rung study (`rungs`: (epochs, training images) of each complete short run before the full one of
    `budget_epochs` on `train_size` images) counts in image-epochs instead (`unit`), as its runs differ in size:
    a trial's budget is every rung plus the full run; a trial pruned at a rung saved what it did not run."""
    rungs = list(rungs)
    trained = saved = pruned = 0
    for t in trials:
        cost = trial_compute(t, budget_epochs, rungs, train_size)
        if cost is None:
            continue
        trained += cost[0]
        saved += cost[1]
        pruned += t.state == TrialState.PRUNED
    full = trained + saved
    return {"epochs_trained": trained, "epochs_unpruned": full, "epochs_saved": saved,
            "fraction_saved": saved / full if full else 0.0, "pruned_trials": pruned,
            "unit": "image-epochs" if rungs else "epochs"}


def trial_budget(spec: StudySpec) -> tuple[int, list[tuple[int, int]], int]:
    """A study's per-trial budget as pruning_savings and trial_compute take it: the full run's epochs, each
    rung's (epochs, training images), and the full run's training images (its train_size, else every training
    image the validation split leaves)."""
    images = spec.data.train_size or TRAIN_IMAGES - spec.data.val_size
    return spec.base.epochs, [(r.epochs, r.train_size) for r in spec.rungs], images


def trial_compute(t: FrozenTrial, budget_epochs: int, rungs: list[tuple[int, int]] = (),
                  train_size: int | None = None) -> tuple[int, int] | None:
    """(trained, saved by pruning) of one finished trial, in pruning_savings' unit; None for a trial that
    trained nothing (rejected before training) or has not finished."""
    per_epoch = train_size if rungs and train_size else 1
    curve, rows = t.user_attrs.get("curve", []), t.user_attrs.get("rungs", []) if rungs else []
    if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) or not (curve or rows):
        return None
    in_rungs = sum(r["epochs"] * r["train_size"] for r in rows)
    trained = in_rungs + (len(curve) - int(t.user_attrs.get("resumed_at_epoch", 0))) * per_epoch
    budget = sum(e * n for e, n in rungs) + budget_epochs * per_epoch
    saved = max(0, budget - in_rungs - len(curve) * per_epoch) if t.state == TrialState.PRUNED else 0
    return trained, saved


def study_record(trials: Iterable[FrozenTrial]) -> dict[str, Any]:
    """A study's trials as `anytime` rows with its totals: the unit `compare_strategies` compares."""
    rows = anytime(trials)
    return {"trials": rows, "epochs": rows[-1]["cum_epochs"] if rows else 0,
            "seconds": round(rows[-1]["cum_seconds"], 1) if rows else 0.0,
            "best": rows[-1]["best_so_far"] if rows else None}


def compare_strategies(records: dict[tuple[str, int], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per strategy (in the order of `records`), against random search with the same seed: the compute it needs
    to reach random's final best as a ratio to what random needed (None: never reached), median and spread
    over seeds, and the same over every (seed, random seed) pair. Records are `study_record`s keyed by
    (strategy, seed)."""
    out = {}
    for strategy in dict.fromkeys(k for k, _ in records):
        per_seed = {}
        for seed in sorted(s for k, s in records if k == strategy):
            rec, ref = records[(strategy, seed)], records.get(("random", seed))
            if ref is None or ref["best"] is None:
                continue
            entry = {"random_best": ref["best"], "best": rec["best"], "epochs_total": rec["epochs"],
                     "seconds_total": rec["seconds"]}
            for unit in ("epochs", "seconds"):
                need = compute_to_reach(rec["trials"], ref["best"], unit)
                entry[f"{unit}_to_random_best"] = need
                entry[f"ratio_{unit}"] = None if need is None else round(
                    need / compute_to_reach(ref["trials"], ref["best"], unit), 3)
            per_seed[seed] = entry
        if not per_seed:
            continue
        ratios = [_inf(e["ratio_epochs"]) for e in per_seed.values()]
        bests = [e["best"] for e in per_seed.values() if e["best"] is not None]
        out[strategy] = {
            "per_seed": per_seed,
            "median_ratio_epochs": _finite(statistics.median(ratios)),
            "ratio_epochs_range": [_finite(min(ratios)), _finite(max(ratios))],
            "median_ratio_seconds": _finite(statistics.median(_inf(e["ratio_seconds"]) for e in per_seed.values())),
            "reached_random_best": sum(e["ratio_epochs"] is not None for e in per_seed.values()),
            "seeds": len(per_seed),
            "median_best": statistics.median(bests) if bests else None,
            "best_range": [min(bests), max(bests)] if bests else None,
            "median_epochs_total": statistics.median(e["epochs_total"] for e in per_seed.values()),
            **_cross_paired(records, strategy),
        }
    return out


def _cross_paired(records: dict[tuple[str, int], dict[str, Any]], strategy: str) -> dict[str, Any]:
    """Every seed of `strategy` against every seed of random (not only its own): TPE's and GP's first trials
    are random draws from the same seed, so a paired comparison is degenerate when random found its best
    among them."""
    ratios = sorted(
        _inf(compute_to_reach(rec["trials"], ref["best"])) / compute_to_reach(ref["trials"], ref["best"])
        for (k, _), rec in records.items() if k == strategy
        for (r, _), ref in records.items() if r == "random" and ref["best"] is not None)
    if not ratios:
        return {}
    pick = [ratios[round(q * (len(ratios) - 1))] for q in (0.25, 0.5, 0.75)]  # nearest-rank quartiles
    return {"cross_pairs": len(ratios), "cross_median_ratio_epochs": _finite(statistics.median(ratios)),
            "cross_ratio_epochs_quartiles": [_finite(q) for q in pick],
            "cross_reached": sum(r != float("inf") for r in ratios)}


def _inf(x: float | None) -> float:
    return float("inf") if x is None else x


def _finite(x: float) -> float | None:
    """JSON has no infinity: a ratio of a strategy that never reached the target is stored as null."""
    return None if x == float("inf") else round(x, 3)
