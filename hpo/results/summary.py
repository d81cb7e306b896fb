"""What a study run achieved and what pruning saved: the figures `hpo study summary` writes to results/.

Epochs run and saved by pruning come from hpo.results.efficiency.pruning_savings, as in `hpo report`;
over-budget configurations rejected before training are counted apart (they cost no epoch either way). A
rung study counts them in image-epochs (`compute_unit`).
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState

from cifarnet.hardware import now_iso
from hpo.results.efficiency import pruning_savings, trial_budget
from hpo.storage import display_url
from hpo.running.study import load_spec, load_study, seed_baseline
from hpo.results.records import best_completed, best_record, count_states


def summarize_study(storage_url: str, name: str) -> dict[str, Any]:
    study = load_study(storage_url, name)
    all_trials = study.get_trials(deepcopy=False)
    trials = [t for t in all_trials if t.state.is_finished()]
    spec = load_spec(study)  # a study of plain optuna in the same database has none: one clear line
    epochs_budget = spec.base.epochs
    trained = [t for t in trials if t.user_attrs.get("curve") or t.user_attrs.get("rungs")]
    rejected = [t for t in trials if t.state == TrialState.PRUNED and t not in trained]
    savings = pruning_savings(trials, *trial_budget(spec))
    seconds = [s for t in trained for s in t.user_attrs.get("epoch_times", [])]
    best = best_completed(trials)
    started = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    ended = max((t.datetime_complete for t in trials if t.datetime_complete), default=None)
    return {
        "study": name, "storage": display_url(storage_url), "date": now_iso(),
        "trials": count_states(all_trials),
        "trained_trials": len(trained), "rejected_before_training": len(rejected),
        "epochs_per_trial_budget": epochs_budget, "train_images_per_epoch": spec.data.train_size,
        "epochs_run": savings["epochs_trained"], "epochs_if_no_pruning": savings["epochs_unpruned"],
        "epochs_saved_by_pruning": savings["epochs_saved"],
        "compute_unit": savings["unit"],  # image-epochs in a rung study: its runs differ in size
        "mean_epoch_s": sum(seconds) / len(seconds) if seconds else None,
        "wall_time_s": (ended - started).total_seconds() if started and ended else None,
        "best": best_record(study, best) if best else None,
        "baseline": _baseline(trials),
    }


def _baseline(trials: list[FrozenTrial]) -> dict[str, Any] | None:
    seed = seed_baseline(trials)
    if seed is None:
        return None
    return {"trial": seed.number, "state": seed.state.name, "val_acc": seed.value,
            "params_count": seed.user_attrs.get("params_count")}
