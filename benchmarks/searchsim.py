"""Search-strategy simulator (issue 29): replay sampler + pruner strategies on a table of measured runs.

Real studies are too expensive to repeat a hundred times per strategy, so a real benchmark measures a table
once and this module replays strategies on it: optuna's own samplers and pruners ask for configurations, a
surrogate fitted on the table answers, and the measured seed noise is added. No torch, no data.

The table (JSON):

    {"space": {"lr": {"low": 0.05, "high": 0.8, "log": true},       # a float range ("log" optional)
               "width": {"low": 16, "high": 64, "int": true},         # an integer range
               "dilation": {"choices": [1, 2, 3]}},                   # a categorical parameter
     "fidelities": {"r0": {"epochs": 2, "train_images": 5000},       # cheaper complete runs (rungs)
                    "full": {"epochs": 8, "train_images": 20000, "lr_peak_epoch": 2}},
     "configs": [{"params": {"lr": 0.3, "width": 32, "dilation": 1},
                  "full": {"curve": [0.41, 0.55, ..., 0.78], "final": 0.78},
                  "r0": {"final": 0.52}}, ...],
     "noise": [{"params": {...}, "full": [0.781, 0.776, 0.785], "r0": [0.52, 0.50]}, ...]}

- `fidelities` must hold "full" (what a study retrains and compares) as the strictly most expensive one; the
  others are the rungs of the budget-aware schemes, cheapest first by image-epochs (epochs x train_images).
  `lr_peak_epoch` (optional, read on "full" only): the epoch where the learning rate peaks; median pruning
  waits past it. Default ceil(0.2 x epochs), cifarnet's one-cycle warm-up fraction.
- `configs`: one measured run per entry (duplicates are averaged). `params` covers the whole space, each
  value inside it. An entry holds any fidelities it measured, at least one; `final` is the trial's objective
  value at that fidelity; "full" entries also carry `curve`, the validation accuracy after each epoch (its
  length is the full fidelity's epochs), which the prefix pruners replay.
- `noise`: the same configuration trained with several seeds; one `final` per seed. The seed standard
  deviation is pooled per fidelity over entries with two or more seeds; "full" needs one; a fidelity without
  noise entries uses full's.

The simulated run of configuration x at fidelity f in trial k of repetition r gives
surrogate(x, f) + sigma_f * z[r, k, f], z standard normal from (seed, r, k): every strategy's trial k of
repetition r sees the same draws (paired by repetition), and every strategy's sampler is seeded from
(seed, r). At full fidelity the one draw shifts the whole mean curve, so the curve a prefix pruner sees
ends where the final value says. Configurations measured in the table answer their measured values (one
seed's result each, so the noise added on top makes their spread slightly wider than a real re-run's).

Schemes (how a trial spends compute, in image-epochs):
  full    no pruning: every trial costs the full fidelity.
  epochs  prefix pruning of the full run: val acc reported each epoch, stop when should_prune (MedianPruner,
          PatientPruner); a trial stopped after e epochs costs e x train_images.
  rungs   budget-aware multi-fidelity: each rung is a complete run at its own fidelity, cheapest first,
          reported as step REDUCTION_FACTOR**rung (optuna's SuccessiveHalving / Hyperband rung `rung`);
          the pruner decides after each rung; a trial costs the sum of the rungs it ran.
Only trials that reached the full fidelity count as found (what a study would retrain). optuna's
WilcoxonPruner needs per-seed or per-shard values of one run, which the table does not hold.

Every strategy runs until it has spent `horizon` x the reference's budget (random search's `budget_trials`
full runs), so that a strategy slower than random can still reach the target. The target of repetition r is
the best value random search found within its budget in repetition r + 1 (cyclically): independent of
repetition r's draws, so an independent random search and the reference itself need the same compute to
reach it in distribution (a target taken from the reference's own draws was reached by the reference by
construction, and makes any other search look several times slower: `reach_targets`). A strategy's
compute-to-reach is its cumulative compute when it first ran a full-fidelity trial at or above the target
(inf if never); its ratio is that over random search's budget, the compute random search spends to find
such a value. Paired Wilcoxon signed-rank tests compare its log compute with the reference's in the same
repetition (same target, same noise draws), Holm-corrected across strategies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import optuna
import scipy.stats
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

FULL = "full"
SCHEMES = ("full", "epochs", "rungs")
_NOISE_TAG, _SAMPLER_TAG = 1, 2  # SeedSequence([a, b]) equals SeedSequence([a, b, 0]): tag each stream


# ---------------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Fidelity:
    name: str
    epochs: int
    train_images: int

    @property
    def image_epochs(self) -> int:
        return self.epochs * self.train_images


@dataclass(frozen=True)
class Table:
    space: dict[str, BaseDistribution]  # parameter -> what samplers propose from
    fidelities: tuple[Fidelity, ...]  # cheapest first; the last is "full"
    configs: tuple[dict[str, Any], ...]  # the measured runs, as in the file
    noise_std: dict[str, float]  # fidelity -> pooled seed standard deviation of `final`
    lr_peak_epoch: int  # full fidelity's epoch where the learning rate peaks

    @property
    def full(self) -> Fidelity:
        return self.fidelities[-1]


def load_table(path: str | Path) -> Table:
    """Read and validate a table file: one ValueError naming the file and the field per problem."""
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return parse_table(raw, where=str(path))


def parse_table(raw: Any, where: str = "table") -> Table:
    """The table from its parsed JSON (see the module docstring for the format)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object with space, fidelities, configs, noise")
    keys = {"space", "fidelities", "configs", "noise"}
    if missing := sorted(keys - set(raw)):
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    if unknown := sorted(set(raw) - keys):
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")
    space = _parse_space(raw["space"], f"{where}: space")
    fidelities, peak = _parse_fidelities(raw["fidelities"], f"{where}: fidelities")
    configs = _parse_configs(raw["configs"], space, fidelities, f"{where}: configs")
    noise_std = _parse_noise(raw["noise"], space, fidelities, f"{where}: noise")
    return Table(space, fidelities, configs, noise_std, peak)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_space(raw: Any, where: str) -> dict[str, BaseDistribution]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: expected a non-empty object of parameter -> range or choices")
    space: dict[str, BaseDistribution] = {}
    for name, spec in raw.items():
        field = f"{where}.{name}"
        if isinstance(spec, dict) and set(spec) == {"choices"}:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError(f"{field}.choices: expected a non-empty list")
            if any(c is not None and not isinstance(c, (str, bool, int, float)) for c in choices):
                raise ValueError(f"{field}.choices: expected numbers, strings, booleans or null, got {choices}")
            space[name] = CategoricalDistribution(choices)
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) <= {"low", "high", "log", "int"}:
            raise ValueError(f"{field}: expected {{\"choices\": [...]}} or {{\"low\", \"high\"[, \"log\"][, \"int\"]}}")
        low, high, log, is_int = spec["low"], spec["high"], spec.get("log", False), spec.get("int", False)
        if not (_number(low) and _number(high)) or low > high:
            raise ValueError(f"{field}: low and high must be finite numbers with low <= high, got {low!r}, {high!r}")
        if not isinstance(log, bool) or not isinstance(is_int, bool):
            raise ValueError(f"{field}: log and int must be true or false")
        if log and low <= 0:
            raise ValueError(f"{field}: a log range needs low > 0, got {low}")
        if is_int and not (float(low).is_integer() and float(high).is_integer()):
            raise ValueError(f"{field}: an int range needs integer low and high, got {low}, {high}")
        space[name] = (IntDistribution(int(low), int(high), log=log) if is_int
                       else FloatDistribution(float(low), float(high), log=log))
    return space


def _parse_fidelities(raw: Any, where: str) -> tuple[tuple[Fidelity, ...], int]:
    if not isinstance(raw, dict) or FULL not in raw:
        raise ValueError(f"{where}: expected an object holding {FULL!r} (and any cheaper rungs)")
    fidelities, peak = [], None
    for name, spec in raw.items():
        if not isinstance(spec, dict) or not {"epochs", "train_images"} <= set(spec) <= {
                "epochs", "train_images", "lr_peak_epoch"}:
            raise ValueError(f"{where}.{name}: expected {{\"epochs\", \"train_images\"[, \"lr_peak_epoch\"]}}")
        epochs, images = spec["epochs"], spec["train_images"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (epochs, images)):
            raise ValueError(f"{where}.{name}: epochs and train_images must be integers >= 1")
        fidelities.append(Fidelity(name, epochs, images))
        if name == FULL:
            peak = spec.get("lr_peak_epoch", math.ceil(0.2 * epochs))
            if not isinstance(peak, int) or isinstance(peak, bool) or not 0 <= peak <= epochs:
                raise ValueError(f"{where}.{name}.lr_peak_epoch: expected an integer in 0..{epochs}, got {peak!r}")
    fidelities.sort(key=lambda f: f.image_epochs)
    costs = [f.image_epochs for f in fidelities]
    if len(set(costs)) < len(costs):
        raise ValueError(f"{where}: two fidelities cost the same image-epochs; rungs need distinct costs")
    if fidelities[-1].name != FULL:
        raise ValueError(f"{where}: {FULL!r} must cost the most image-epochs; {fidelities[-1].name!r} costs more")
    return tuple(fidelities), peak


def _check_params(params: Any, space: dict[str, BaseDistribution], where: str) -> None:
    if not isinstance(params, dict):
        raise ValueError(f"{where}.params: expected an object of parameter -> value")
    if missing := sorted(set(space) - set(params)):
        raise ValueError(f"{where}.params: missing {', '.join(missing)}")
    if unknown := sorted(set(params) - set(space)):
        raise ValueError(f"{where}.params: {unknown[0]!r} is not in the space")
    for name, dist in space.items():
        value = params[name]
        if isinstance(dist, CategoricalDistribution):
            ok = value in dist.choices
        else:
            ok = _number(value) and dist.low <= value <= dist.high
        if not ok:
            raise ValueError(f"{where}.params.{name}: {value!r} is outside the space")


def _parse_configs(raw: Any, space: dict[str, BaseDistribution], fidelities: tuple[Fidelity, ...],
                   where: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: expected a non-empty list of measured runs")
    by_name = {f.name: f for f in fidelities}
    for i, config in enumerate(raw):
        field = f"{where}[{i}]"
        if not isinstance(config, dict) or "params" not in config:
            raise ValueError(f"{field}: expected an object with params and at least one fidelity")
        _check_params(config["params"], space, field)
        measured = [k for k in config if k != "params"]
        if unknown := [k for k in measured if k not in by_name]:
            raise ValueError(f"{field}: unknown fidelity {unknown[0]!r} (table has {', '.join(by_name)})")
        if not measured:
            raise ValueError(f"{field}: measures no fidelity")
        for name in measured:
            _check_run(config[name], by_name[name], f"{field}.{name}")
    for f in fidelities:
        if not any(f.name in config for config in raw):
            raise ValueError(f"{where}: no config measures fidelity {f.name!r}")
    return tuple(raw)


def _check_run(run: Any, fidelity: Fidelity, where: str) -> None:
    if not isinstance(run, dict) or not {"final"} <= set(run) <= {"final", "curve"}:
        raise ValueError(f"{where}: expected {{\"final\"[, \"curve\"]}}")
    if not _number(run["final"]):
        raise ValueError(f"{where}.final: expected a finite number, got {run['final']!r}")
    if fidelity.name == FULL and "curve" not in run:
        raise ValueError(f"{where}: a full run needs its curve (val acc per epoch) for the prefix pruners")
    curve = run.get("curve", [0.0] * fidelity.epochs)
    if not isinstance(curve, list) or len(curve) != fidelity.epochs or not all(map(_number, curve)):
        raise ValueError(f"{where}.curve: expected {fidelity.epochs} finite numbers (one per epoch of "
                         f"{fidelity.name!r})")


def _parse_noise(raw: Any, space: dict[str, BaseDistribution], fidelities: tuple[Fidelity, ...],
                 where: str) -> dict[str, float]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a list of {{params, fidelity: [final per seed]}}")
    names = [f.name for f in fidelities]
    squares, dof = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
    for i, entry in enumerate(raw):
        field = f"{where}[{i}]"
        if not isinstance(entry, dict) or "params" not in entry:
            raise ValueError(f"{field}: expected an object with params and final values per seed")
        _check_params(entry["params"], space, field)
        for name, finals in entry.items():
            if name == "params":
                continue
            if name not in squares:
                raise ValueError(f"{field}: unknown fidelity {name!r} (table has {', '.join(names)})")
            if not isinstance(finals, list) or not finals or not all(map(_number, finals)):
                raise ValueError(f"{field}.{name}: expected a non-empty list of finite finals, one per seed")
            squares[name] += float(np.sum((np.asarray(finals) - np.mean(finals)) ** 2))
            dof[name] += len(finals) - 1
    if dof[FULL] == 0:
        raise ValueError(f"{where}: needs an entry with two or more {FULL!r} finals (seeds) to measure noise")
    full_std = math.sqrt(squares[FULL] / dof[FULL])
    return {name: math.sqrt(squares[name] / dof[name]) if dof[name] else full_std for name in names}


# ------------------------------------------------------------------------------------------------ surrogate


def encode(space: dict[str, BaseDistribution], params: dict[str, Any]) -> np.ndarray:
    """A point of the space as a vector where every parameter spans about 1: ranges scaled to [0, 1] (on a log
    scale for log ranges, as the samplers see them), choices one-hot over sqrt(2), so two different choices
    are as far apart as the two ends of a range."""
    parts: list[float] = []
    for name, dist in space.items():
        value = params[name]
        if isinstance(dist, CategoricalDistribution):
            parts.extend((c == value) / math.sqrt(2) for c in dist.choices)
            continue
        low, high, x = float(dist.low), float(dist.high), float(value)
        if dist.log:
            low, high, x = math.log(low), math.log(high), math.log(x)
        parts.append((x - low) / (high - low) if high > low else 0.0)
    return np.asarray(parts, dtype=float)


class Surrogate:
    """The mean final value of any configuration at each fidelity (and its mean curve at full fidelity).

    Measured configurations answer their measured values (duplicates averaged); others the inverse-squared-
    distance average of their `neighbours` nearest measured configurations in `encode`'s space: deterministic,
    no fitting to tune, and never more optimistic than the table (it cannot invent a better configuration
    than one measured), which keeps a sampler's advantage a property of the table, not of the regressor.
    """

    def __init__(self, table: Table, neighbours: int = 5):
        self.table, self.neighbours = table, neighbours
        self._points: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        for f in table.fidelities:
            runs = [c for c in table.configs if f.name in c]
            x = np.stack([encode(table.space, c["params"]) for c in runs])
            finals = np.array([c[f.name]["final"] for c in runs], dtype=float)
            curves = np.array([c[f.name]["curve"] for c in runs], dtype=float) if f.name == FULL else None
            self._points[f.name] = (x, finals, curves)

    def _weights(self, params: dict[str, Any], fidelity: str) -> tuple[np.ndarray, np.ndarray]:
        x = self._points[fidelity][0]
        distance = np.linalg.norm(x - encode(self.table.space, params), axis=1)
        exact = np.flatnonzero(distance < 1e-9)
        if exact.size:
            return exact, np.full(exact.size, 1 / exact.size)
        nearest = np.argsort(distance, kind="stable")[:self.neighbours]
        w = 1 / distance[nearest] ** 2
        return nearest, w / w.sum()

    def final(self, params: dict[str, Any], fidelity: str = FULL) -> float:
        idx, w = self._weights(params, fidelity)
        return float(w @ self._points[fidelity][1][idx])

    def curve(self, params: dict[str, Any]) -> np.ndarray:
        """Mean validation accuracy after each epoch of the full run (same weights as `final`)."""
        idx, w = self._weights(params, FULL)
        return w @ self._points[FULL][2][idx]


def noise_draws(seed: int, repetition: int, trial: int, n_fidelities: int) -> np.ndarray:
    """Standard normal draws of trial `trial` in `repetition`, one per fidelity (the last is full): a function
    of (seed, repetition, trial) only, so every strategy sees the same draws for the same trial index."""
    return np.random.default_rng([seed, repetition, trial, _NOISE_TAG]).standard_normal(n_fidelities)


def sampler_seed(seed: int, repetition: int) -> int:
    """The sampler seed of `repetition`: the same for every strategy (random and random + pruner propose the
    same configurations in the same order, which sharpens the paired comparison)."""
    return int(np.random.SeedSequence([seed, repetition, 0, _SAMPLER_TAG]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------- strategies

REDUCTION_FACTOR = 3  # rung i is reported as step 3**i: optuna's SuccessiveHalving / Hyperband rung i at min_resource 1


@dataclass(frozen=True)
class Strategy:
    """A sampler and a way to spend compute on a trial; sampler and pruner are built fresh per repetition."""

    sampler: Callable[[int], optuna.samplers.BaseSampler]  # seed -> sampler
    scheme: str = "full"  # one of SCHEMES (module docstring)
    pruner: Callable[[Table], optuna.pruners.BasePruner] | None = None  # table -> pruner; none with "full"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if (self.pruner is None) != (self.scheme == "full"):
            raise ValueError(f"scheme {self.scheme!r}: a pruner is needed exactly when the scheme prunes")


def median_pruner(table: Table) -> optuna.pruners.BasePruner:
    """Median pruning from the first epoch after the learning-rate peak: before it, a run at a high learning
    rate looks worse than it will end, and the pruner would cut exactly the bold configurations."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=table.lr_peak_epoch + 1)


def patient_pruner(table: Table) -> optuna.pruners.BasePruner:
    """The median pruner consulted only once a trial has not improved for an epoch (a still-rising curve
    below the median is left alone)."""
    return optuna.pruners.PatientPruner(median_pruner(table), patience=1)


def halving_pruner(table: Table) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)


def hyperband_pruner(table: Table) -> optuna.pruners.BasePruner:
    """Brackets that start pruning at rung 0, 1, ...: hedges against cheap rungs that rank badly."""
    top = REDUCTION_FACTOR ** (len(table.fidelities) - 1)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=top, reduction_factor=REDUCTION_FACTOR)


def _random(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


STRATEGIES: dict[str, Strategy] = {
    "random": Strategy(_random),
    # The null arm: an independent random search shows what "no better than random" looks like.
    "random-other-seeds": Strategy(lambda seed: optuna.samplers.RandomSampler(seed=(seed + 1) % 2**32)),
    "tpe": Strategy(_tpe),
    "qmc": Strategy(lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True)),
    "gp": Strategy(lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)),
    "random-median": Strategy(_random, "epochs", median_pruner),
    "random-patient": Strategy(_random, "epochs", patient_pruner),
    "tpe-median": Strategy(_tpe, "epochs", median_pruner),
    "random-halving": Strategy(_random, "rungs", halving_pruner),
    "tpe-halving": Strategy(_tpe, "rungs", halving_pruner),
    "random-hyperband": Strategy(_random, "rungs", hyperband_pruner),
    "tpe-hyperband": Strategy(_tpe, "rungs", hyperband_pruner),
}
DEFAULT_STRATEGIES = [name for name in STRATEGIES if name != "gp"]  # gp: seconds per trial at 100 repetitions


# ------------------------------------------------------------------------------------------------ simulation


@dataclass(frozen=True)
class Trace:
    """One repetition of one strategy, trial by trial in the order they ran."""

    cost: np.ndarray  # image-epochs each trial used
    value: np.ndarray  # each trial's value at full fidelity (what its full run gives, pruned or not)
    reached: np.ndarray  # whether the trial ran at full fidelity: only those count as found

    def best_at(self, compute: np.ndarray) -> np.ndarray:
        """Best full-fidelity value among the trials finished by each compute point (-inf before the first)."""
        best = np.maximum.accumulate(np.where(self.reached, self.value, -np.inf))
        done = np.searchsorted(np.cumsum(self.cost), compute, side="right") - 1
        return np.where(done >= 0, best[np.maximum(done, 0)], -np.inf)

    def compute_to_reach(self, target: float) -> float:
        """Cumulative compute when a full-fidelity trial first scored at least `target` (inf if none did)."""
        hits = np.flatnonzero(self.reached & (self.value >= target))
        return float(np.cumsum(self.cost)[hits[0]]) if hits.size else math.inf


def _run_full(study, trial, table: Table, surrogate: Surrogate, z: np.ndarray, value: float) -> tuple[int, bool]:
    study.tell(trial, value)
    return table.full.image_epochs, True


def _run_epochs(study, trial, table: Table, surrogate: Surrogate, z: np.ndarray, value: float) -> tuple[int, bool]:
    full = table.full
    curve = surrogate.curve(trial.params) + table.noise_std[FULL] * z[-1]
    for epoch, accuracy in enumerate(curve[:-1], start=1):
        trial.report(float(accuracy), epoch)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return epoch * full.train_images, False
    trial.report(float(curve[-1]), full.epochs)
    study.tell(trial, value)
    return full.image_epochs, True


def _run_rungs(study, trial, table: Table, surrogate: Surrogate, z: np.ndarray, value: float) -> tuple[int, bool]:
    spent = 0
    for rung, f in enumerate(table.fidelities):
        result = value if f.name == FULL else surrogate.final(trial.params, f.name) + table.noise_std[f.name] * z[rung]
        spent += f.image_epochs
        trial.report(result, REDUCTION_FACTOR ** rung)
        if f.name != FULL and trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return spent, False
    study.tell(trial, value)
    return spent, True


_RUNNERS = {"full": _run_full, "epochs": _run_epochs, "rungs": _run_rungs}


def run_repetition(table: Table, surrogate: Surrogate, strategy: Strategy, repetition: int, seed: int,
                   horizon: float) -> Trace:
    """One strategy's search in one repetition until it has spent `horizon` image-epochs (the trial that
    crosses it finishes: a study does not kill its running trial)."""
    pruner = strategy.pruner(table) if strategy.pruner else optuna.pruners.NopPruner()
    # A fixed name: HyperbandPruner assigns brackets by hashing the study name and trial number.
    study = optuna.create_study(study_name="searchsim", storage=None, direction="maximize", pruner=pruner,
                                sampler=strategy.sampler(sampler_seed(seed, repetition)))
    run = _RUNNERS[strategy.scheme]
    costs, values, reached, spent = [], [], [], 0
    while spent < horizon:
        trial = study.ask(table.space)
        z = noise_draws(seed, repetition, trial.number, len(table.fidelities))
        value = surrogate.final(trial.params, FULL) + table.noise_std[FULL] * z[-1]
        cost, full = run(study, trial, table, surrogate, z, value)
        costs.append(cost)
        values.append(value)
        reached.append(full)
        spent += cost
    return Trace(np.array(costs, dtype=float), np.array(values), np.array(reached, dtype=bool))


@dataclass(frozen=True)
class Simulation:
    traces: dict[str, list[Trace]]  # strategy -> one trace per repetition
    reference: str  # the strategy every other is compared with (random search)
    budget: float  # the reference's budget in image-epochs: its best within it is each repetition's target
    horizon: float  # image-epochs every strategy may spend
    full_cost: int  # image-epochs of one full run


def simulate(table: Table, strategies: dict[str, Strategy], repetitions: int = 100, seed: int = 0,
             budget_trials: int = 30, horizon: float = 2.0, reference: str = "random",
             neighbours: int = 5) -> Simulation:
    """Every strategy in every repetition; the reference gets `budget_trials` full runs of budget, every
    strategy `horizon` times that. Deterministic for a given seed."""
    if reference not in strategies:
        raise ValueError(f"the reference strategy {reference!r} is not among {', '.join(strategies)}")
    if repetitions < 1 or budget_trials < 1 or horizon < 1 or seed < 0:
        raise ValueError("repetitions and budget_trials must be >= 1, horizon >= 1 and seed >= 0")
    if len(table.fidelities) < 2 and any(s.scheme == "rungs" for s in strategies.values()):
        raise ValueError(f"the rungs scheme needs fidelities cheaper than {FULL!r}; the table has none")
    surrogate = Surrogate(table, neighbours)
    budget = budget_trials * table.full.image_epochs
    with _quiet_optuna():
        traces = {name: [run_repetition(table, surrogate, s, r, seed, budget * horizon) for r in range(repetitions)]
                  for name, s in strategies.items()}
    return Simulation(traces, reference, budget, budget * horizon, table.full.image_epochs)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence optuna's per-trial log lines and experimental-feature warnings while simulating."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


# -------------------------------------------------------------------------------------------------- analysis


def iqm(values: Any, axis: int = 0) -> np.ndarray:
    """Interquartile mean: the mean of the middle half (n // 4 cut at each end). Robust to a few runaway
    repetitions like the median, but uses half the data, so its interval is tighter (Agarwal et al. 2021)."""
    x = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = x.shape[axis]
    return np.take(x, np.arange(n // 4, n - n // 4), axis=axis).mean(axis=axis)


def bootstrap_interval(samples: Any, statistic: Callable[..., np.ndarray], n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of `statistic(x, axis=...)` over the repetitions (axis 0 of `samples`).
    The bounds are order statistics (no interpolation), so infinite values (never reached) stay meaningful."""
    x = np.asarray(samples, dtype=float)
    resampled = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))]
    stats = statistic(resampled, axis=1)
    tail = (1 - level) / 2
    return np.quantile(stats, tail, axis=0, method="lower"), np.quantile(stats, 1 - tail, axis=0, method="higher")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false claim across the strategies compared."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty(len(p))
    out[order] = adjusted
    return out.tolist()


def wilcoxon_p(differences: Any, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of paired differences against 0. The statistic uses only ranks and signs,
    so a never-reached repetition (an infinite log ratio) enters exactly as the largest difference; all-zero
    differences (identical strategies) are no evidence at all: p = 1."""
    d = np.asarray(differences, dtype=float)
    big = 2 * np.max(np.abs(d[np.isfinite(d)]), initial=1.0) + 1
    d = np.clip(d, -big, big)
    if not np.any(d):
        return 1.0
    return float(scipy.stats.wilcoxon(d, alternative=alternative).pvalue)


def reach_targets(sim: Simulation, same_repetition: bool = False) -> np.ndarray:
    """Each repetition's target: the best full-fidelity value random search (the reference) found within its
    budget; by default the one of the next repetition (cyclically), whose draws are independent of this one's.
    With `same_repetition` (the issue's first wording) the reference is scored on the very draws that chose
    its target, which it reached by construction, while an independent random search needs several times its
    compute to reach it (tests/benchmarks/test_searchsim.py): every other strategy carries that bias."""
    best = np.array([trace.best_at(np.array([sim.budget]))[0] for trace in sim.traces[sim.reference]])
    return best if same_repetition else np.roll(best, -1)


def compute_to_reach(sim: Simulation, name: str, targets: np.ndarray) -> np.ndarray:
    """Per repetition, the compute `name` spent until a full-fidelity trial reached the target (inf if none)."""
    return np.array([trace.compute_to_reach(t) for trace, t in zip(sim.traces[name], targets)])


def log_differences(reach: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Paired log(compute / reference's compute): scale-free (twice as fast counts the same whether random
    needed 3 or 30 runs); +-inf where only one reached the target, 0 where neither did (no evidence)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.log(reach) - np.log(reference)
    return np.where(np.isnan(d), 0.0, d)


def pruning_effect(sim: Simulation, name: str) -> tuple[float, float]:
    """Mean over repetitions of the fraction of compute saved against running every trial in full, and the
    probability that the configuration best at full fidelity among those sampled ran at full fidelity."""
    saved, survived = [], []
    for trace in sim.traces[name]:
        saved.append(1 - trace.cost.sum() / (len(trace.cost) * sim.full_cost))
        survived.append(bool(trace.reached[np.argmax(trace.value)]))
    return float(np.mean(saved)), float(np.mean(survived))


def summarise(sim: Simulation, goal_ratio: float = 1 / 3, alpha: float = 0.05, same_repetition: bool = False,
              grid_points: int = 41, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The simulator's table and anytime curves. A strategy's ratio is its compute to reach the target over
    random search's budget, the compute random search spends to find such a value (its own ratio has a median
    near 1); with `same_repetition`, over the compute the reference took to its own best. p-values, Holm-
    corrected across the strategies compared: paired two-sided Wilcoxon against the reference's compute to the
    same target, and one-sided Wilcoxon for "ratio below `goal_ratio`"."""
    if len(sim.traces[sim.reference]) < 2 and not same_repetition:
        raise ValueError("independent targets need at least 2 repetitions")
    targets = reach_targets(sim, same_repetition)
    reach = {name: compute_to_reach(sim, name, targets) for name in sim.traces}
    base = reach[sim.reference] if same_repetition else sim.budget
    ratios = {name: reach[name] / base for name in sim.traces}
    others = [name for name in sim.traces if name != sim.reference]
    p_differs = [wilcoxon_p(log_differences(reach[n], reach[sim.reference])) for n in others]
    p_goal = [wilcoxon_p(np.log(ratios[n]) - math.log(goal_ratio), "less") for n in others]
    grid = np.linspace(0, sim.horizon, grid_points)
    rows, anytime = {}, {"compute": grid.tolist()}
    for name in sim.traces:
        rows[name], anytime[name] = _strategy_summary(sim, name, ratios[name], grid, n_boot, seed)
    for name, p, p_holm, g, g_holm in zip(others, p_differs, holm(p_differs), p_goal, holm(p_goal)):
        rows[name].update(p_vs_reference=p, p_vs_reference_holm=p_holm, p_ratio_below_goal=g,
                          p_ratio_below_goal_holm=g_holm,
                          goal_met=bool(rows[name]["median_ratio"] <= goal_ratio and g_holm < alpha))
    return {"reference": sim.reference, "repetitions": len(sim.traces[sim.reference]),
            "target": "same repetition" if same_repetition else "next repetition",
            "budget_image_epochs": sim.budget, "horizon_image_epochs": sim.horizon,
            "full_run_image_epochs": sim.full_cost, "goal_ratio": goal_ratio, "alpha": alpha,
            "strategies": rows, "anytime": anytime}


def _strategy_summary(sim: Simulation, name: str, ratios: np.ndarray, grid: np.ndarray, n_boot: int,
                      seed: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
    lo, hi = bootstrap_interval(ratios, np.median, n_boot, seed=seed)
    saved, survival = pruning_effect(sim, name)
    curves = np.stack([trace.best_at(grid) for trace in sim.traces[name]])  # (repetitions, grid)
    at_budget = np.array([trace.best_at(np.array([sim.budget]))[0] for trace in sim.traces[name]])
    best_lo, best_hi = bootstrap_interval(at_budget, iqm, n_boot, seed=seed)
    curve_lo, curve_hi = bootstrap_interval(curves, iqm, n_boot, seed=seed)
    row = {"median_ratio": float(np.median(ratios)), "ratio_interval": [float(lo), float(hi)],
           "reached": float(np.mean(np.isfinite(ratios))), "compute_saved": saved, "best_survival": survival,
           "trials": float(np.mean([len(t.cost) for t in sim.traces[name]])),
           "best_at_budget_iqm": float(iqm(at_budget)), "best_at_budget_interval": [float(best_lo), float(best_hi)]}
    return row, {"iqm": iqm(curves).tolist(), "low": curve_lo.tolist(), "high": curve_hi.tolist()}


def jsonable(obj: Any) -> Any:
    """Strict JSON: inf (never reached) as the string "inf", -inf (nothing found yet) and nan as null."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj == math.inf else None
    return obj


def format_table(summary: dict[str, Any]) -> str:
    """The simulator's table, one strategy per line."""
    def num(x: float | str | None, digits: int = 2) -> str:  # also as `jsonable` wrote it
        return "-" if x is None else "inf" if x in (math.inf, "inf") else f"{x:.{digits}f}"

    head = (f"{'strategy':20s} {'ratio [95% CI]':>22s} {'reached':>7s} {'p vs ref':>9s} "
            f"{'p <goal':>8s} {'saved':>6s} {'best kept':>9s} {'best@budget':>11s}")
    lines = [head]
    for name, row in summary["strategies"].items():
        interval = f"{num(row['median_ratio'])} [{num(row['ratio_interval'][0])}, {num(row['ratio_interval'][1])}]"
        p = f"{row['p_vs_reference_holm']:.2g}" if "p_vs_reference_holm" in row else "-"
        goal = f"{row['p_ratio_below_goal_holm']:.2g}" if "p_ratio_below_goal_holm" in row else "-"
        best = num(row["best_at_budget_iqm"], 4)
        lines.append(f"{name:20s} {interval:>22s} {row['reached']:7.0%} {p:>9s} {goal:>8s} "
                     f"{row['compute_saved']:6.0%} {row['best_survival']:9.0%} {best:>11s}")
    return "\n".join(lines)


def anytime_figure(summary: dict[str, Any]):
    """Plotly chart: IQM over repetitions of the best full-fidelity value so far against cumulative
    image-epochs, with its bootstrap band, one colour per strategy."""
    import plotly.graph_objects as go

    anytime, fig = summary["anytime"], go.Figure()
    x = anytime["compute"]
    for i, name in enumerate(summary["strategies"]):
        colour = f"hsl({(i * 360) // len(summary['strategies'])},70%,45%)"
        band = [_plottable(v) for v in anytime[name]["high"] + anytime[name]["low"][::-1]]
        fig.add_scatter(x=x + x[::-1], y=band, fill="toself", fillcolor=colour, opacity=0.15,
                        line={"width": 0}, showlegend=False, hoverinfo="skip", legendgroup=name)
        fig.add_scatter(x=x, y=[_plottable(v) for v in anytime[name]["iqm"]], name=name, legendgroup=name,
                        line={"color": colour})
    fig.add_vline(x=summary["budget_image_epochs"], line_dash="dot", annotation_text="reference budget")
    fig.update_layout(template="plotly_white", xaxis_title="cumulative image-epochs",
                      yaxis_title="best full-fidelity value so far (IQM, 95% bootstrap band)")
    return fig


def _plottable(v: float | str | None) -> float | None:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None
