"""Pruner replay: what a pruner would have decided on learning curves already measured, without training.

Given the full learning curves of an unpruned study (validation accuracy per epoch of every trial), each
replay feeds the curves, in one random order, to a fresh in-memory optuna study with the pruner under test:
a trial reports epoch by epoch and stops where `should_prune()` says so, exactly as the objective does. Over
many orders this measures what pruning costs and saves: the fraction of epochs not trained, and how often the
trial that is best at full length (its best validation accuracy, the study's objective) would have survived.
Deterministic for a given seed; no torch, no data.
"""

from __future__ import annotations

import logging
import random
import statistics
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

Curve = Sequence[float]  # validation accuracy after epochs 1..n

# Pruner name -> factory given the per-trial epochs. The first is the quick study's default, scaled.
PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "median (5 startup, warm-up 2)": lambda n: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    "median (5 startup, warm-up 1)": lambda n: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    "percentile 25 (5 startup, warm-up 2)": lambda n: optuna.pruners.PercentilePruner(
        25.0, n_startup_trials=5, n_warmup_steps=2),
    "successive halving (min 1, rf 3)": lambda n: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=3),
    "successive halving (min 1, rf 2)": lambda n: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=2),
    "hyperband (min 1, rf 3)": lambda n: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=n, reduction_factor=3),
}


def replay_order(curves: Sequence[Curve], order: Sequence[int], pruner: optuna.pruners.BasePruner) -> list[int]:
    """Epochs each curve gets trained for when the trials run in `order` under `pruner` (index = curve)."""
    # A fixed name: HyperbandPruner assigns brackets by hashing the study name and trial number.
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    trained = [0] * len(curves)
    for i in order:
        trial = study.ask()
        curve = curves[i]
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            trained[i] = step
            if step < len(curve) and trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curve))
    return trained


def replay(curves: Sequence[Curve], make_pruner: Callable[[], optuna.pruners.BasePruner], orders: int,
           rng: random.Random) -> dict[str, float]:
    """Mean over `orders` random orders: epochs saved (fraction), and survival of the best / top-3 trials."""
    full = [len(c) for c in curves]
    ranked = sorted(range(len(curves)), key=lambda i: max(curves[i]), reverse=True)
    top1, top3 = ranked[0], ranked[:3]
    saved, survived1, survived3_any, survived3 = [], [], [], []
    for _ in range(orders):
        order = list(range(len(curves)))
        rng.shuffle(order)
        trained = replay_order(curves, order, make_pruner())
        saved.append(1 - sum(trained) / sum(full))
        alive = [trained[i] == full[i] for i in range(len(curves))]
        survived1.append(float(alive[top1]))
        survived3_any.append(float(any(alive[i] for i in top3)))
        survived3.append(sum(alive[i] for i in top3) / len(top3))
    return {"epochs_saved": statistics.fmean(saved), "top1_survival": statistics.fmean(survived1),
            "top3_any_survival": statistics.fmean(survived3_any), "top3_mean_survival": statistics.fmean(survived3)}


def replay_pruners(studies: Sequence[Sequence[Curve]], pruners: dict[str, Callable[[int], Any]], epochs: int,
                   orders: int = 50, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each pruner over each study's curves (mean over studies of the per-study means)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        out = {}
        for name, factory in pruners.items():
            rng = random.Random(seed)
            per_study = [replay(curves, lambda: factory(epochs), orders, rng) for curves in studies]
            out[name] = {k: round(statistics.fmean(r[k] for r in per_study), 4) for k in per_study[0]}
        return out
    finally:
        optuna.logging.set_verbosity(level)
