"""What a study spent and found, trial by trial: the figures behind the search-efficiency benchmark
(benchmarks/search.py) and the report's "Compute" sections.

Compute is counted in epochs trained (deterministic: it does not drift with the machine's load) and in
training + evaluation seconds as recorded per epoch in each trial's "curve" user_attr. "Best so far" counts
COMPLETE trials only, as the study itself reports its best.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from optuna.trial import FrozenTrial, TrialState

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


def pruning_savings(trials: Iterable[FrozenTrial], budget_epochs: int) -> dict[str, int | float]:
    """Epochs trained against the epochs the same trials would have taken unpruned (trials rejected before
    training and trials still running are left out)."""
    trained = full = pruned = 0
    for t in trials:
        curve = t.user_attrs.get("curve", [])
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) or not curve:
            continue
        trained += len(curve)
        full += budget_epochs if t.state == TrialState.PRUNED else len(curve)
        pruned += t.state == TrialState.PRUNED
    return {"epochs_trained": trained, "epochs_unpruned": full, "epochs_saved": full - trained,
            "fraction_saved": (full - trained) / full if full else 0.0, "pruned_trials": pruned}
