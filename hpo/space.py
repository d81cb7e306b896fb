"""The search space and THE mapping (search space, trial) -> TrainConfig.

`suggest_config` is the only place `trial.suggest_*` is called. The objective calls it with a live trial;
retraining calls it with `optuna.trial.FixedTrial(best.params)`, so a retrained trial is exactly the
configuration that was searched.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Union

import optuna

from cifarnet.config import ModelConfig, TrainConfig
from cifarnet.errors import ConfigError
from hpo.errors import StudyFileError


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]


Dist = Union[FloatRange, IntRange, Choice]

# Searchable parameters -> what kind of value they take. widthN are the four block widths of the model.
PARAM_KINDS: dict[str, type] = {
    "lr": float, "weight_decay": float, "momentum": float, "label_smoothing": float, "aug_strength": float,
    "ema_decay": float, "warmup_frac": float, "flip_p": float,
    "width1": int, "width2": int, "width3": int, "width4": int, "dilation": int, "batch_size": int,
    "optimizer": str, "schedule": str, "residual": bool, "depthwise": bool, "tta_flip": bool,
    "tta_shift": int,
}
MODEL_PARAMS = ("width1", "width2", "width3", "width4", "dilation", "residual", "depthwise")
# The original CifarNet, enqueued as trial 0 of every study (lr and the rest come from the study's [train]).
ORIGINAL_PARAMS: dict[str, Any] = {
    "width1": 16, "width2": 32, "width3": 64, "width4": 128, "dilation": 2, "residual": True, "depthwise": True,
    "aug_strength": 0.5,
}


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, Dist]  # name (a PARAM_KINDS key) -> distribution; unsearched values come from the base


def parse_space(raw: dict[str, Any], where: str = "space") -> SearchSpace:
    """[space] table -> SearchSpace, with one clear error per bad field."""
    params: dict[str, Dist] = {}
    for name, spec in raw.items():
        if name not in PARAM_KINDS:
            raise StudyFileError(f"[{where}] unknown parameter {name!r} (known: {', '.join(sorted(PARAM_KINDS))})")
        params[name] = _parse_dist(f"{where}.{name}", spec, PARAM_KINDS[name])
    return SearchSpace(params)


def _parse_dist(field: str, spec: Any, kind: type) -> Dist:
    if not isinstance(spec, dict):
        raise StudyFileError(f"{field}: expected a table like {{ low = .., high = .. }} or {{ choices = [..] }}")
    keys = set(spec)
    if keys == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise StudyFileError(f"{field}.choices must be a non-empty list")
        if any(not _is_kind(c, kind) for c in choices):
            raise StudyFileError(f"{field}.choices must all be {kind.__name__}, got {choices}")
        return Choice(tuple(choices))
    allowed = {"low", "high", "log"} | ({"step"} if kind is int else set())
    if not {"low", "high"} <= keys or not keys <= allowed:
        raise StudyFileError(f"{field}: keys must be choices, or low/high[/log{'/step' if kind is int else ''}]; "
                             f"got {sorted(keys)}")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if kind not in (int, float) or not (_is_kind(low, kind) and _is_kind(high, kind)):
        raise StudyFileError(f"{field}: low and high must be {kind.__name__} for this parameter")
    if not isinstance(log, bool):
        raise StudyFileError(f"{field}.log must be true or false")
    if low > high:
        raise StudyFileError(f"{field}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise StudyFileError(f"{field}: log range needs low > 0, got {low}")
    if kind is int:
        step = spec.get("step", 1)
        if not _is_kind(step, int) or step < 1 or (log and step != 1):
            raise StudyFileError(f"{field}.step must be an integer >= 1 (and 1 with log = true), got {step!r}")
        return IntRange(int(low), int(high), step, log)
    return FloatRange(float(low), float(high), log)


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def suggest_config(space: SearchSpace, trial: optuna.trial.BaseTrial, base: TrainConfig) -> TrainConfig:
    """Sample (or, for a FixedTrial, replay) every searched parameter and apply it to `base`."""
    values: dict[str, Any] = {}
    for name, dist in space.params.items():
        if isinstance(dist, Choice):
            values[name] = trial.suggest_categorical(name, list(dist.choices))
        elif isinstance(dist, IntRange):
            step = 1 if dist.log else dist.step
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=step, log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return apply_params(base, values)


def apply_params(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    m = base.model
    widths = [values.get(f"width{i + 1}", w) for i, w in enumerate(m.widths)]
    model = ModelConfig(
        widths=tuple(widths), dilation=values.get("dilation", m.dilation),
        residual=values.get("residual", m.residual), depthwise=values.get("depthwise", m.depthwise),
    )
    train_values = {k: v for k, v in values.items() if k not in MODEL_PARAMS}
    try:
        return dataclasses.replace(base, model=model, **train_values)
    except ConfigError as e:
        raise ConfigError(f"searched values give an invalid config: {e}") from None


def seed_params(space: SearchSpace, base: TrainConfig) -> dict[str, Any]:
    """Trial 0's parameters: the original network with the study's base recipe for everything else."""
    base_values = {**dataclasses.asdict(base), **{f"width{i + 1}": w for i, w in enumerate(base.model.widths)},
                   "dilation": base.model.dilation, "residual": base.model.residual,
                   "depthwise": base.model.depthwise}
    return {name: ORIGINAL_PARAMS.get(name, base_values.get(name)) for name in space.params}


def params_range(space: SearchSpace, base: TrainConfig) -> tuple[int, int]:
    """The fewest and the most parameters a model of `space` has: every combination of the searched switches
    (dilation, residual, depthwise) at the narrowest and at the widest widths (parameters grow with each width)."""
    from cifarnet.model import build_model, count_params  # torch: only the commands that build models load it

    def values(name: str) -> list[Any]:
        dist = space.params.get(name)
        if isinstance(dist, Choice):
            return list(dist.choices)
        if isinstance(dist, IntRange):  # optuna's suggest_int never goes past the last step below `high`
            return list(range(dist.low, dist.high + 1, 1 if dist.log else dist.step))
        return [getattr(base.model, name)]

    widths = [values(f"width{i + 1}") if f"width{i + 1}" in space.params else [w]
              for i, w in enumerate(base.model.widths)]
    switches = ["dilation", "residual", "depthwise"]
    sizes = [count_params(build_model(apply_params(base, {**dict(zip(switches, combo)), **{
        f"width{i + 1}": pick(w) for i, w in enumerate(widths)}}).model))
        for pick in (min, max) for combo in itertools.product(*map(values, switches))]
    return min(sizes), max(sizes)
