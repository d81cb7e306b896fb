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

# Searchable parameters -> what kind of value they take. widthN are the four block widths of the model;
# depthwise / downsample set every stage, depthwiseN (stages 2-4) / downsampleN (after stages 1-3) one stage.
PARAM_KINDS: dict[str, type] = {
    "lr": float, "weight_decay": float, "momentum": float, "label_smoothing": float, "aug_strength": float,
    "ema_decay": float, "warmup_frac": float, "flip_p": float, "norm_lr_scale": float,
    "width1": int, "width2": int, "width3": int, "width4": int, "dilation": int, "batch_size": int,
    "optimizer": str, "schedule": str, "residual": bool, "residual_all": bool, "tta_flip": bool,
    "tta_shift": int, "alternate_flip": bool, "whiten": bool, "activation": str, "norm_order": str,
    "depthwise": bool, "depthwise2": bool, "depthwise3": bool, "depthwise4": bool,
    "downsample": str, "downsample1": str, "downsample2": str, "downsample3": str,
}
STAGE_PARAMS = {"depthwise": ("depthwise2", "depthwise3", "depthwise4"),
                "downsample": ("downsample1", "downsample2", "downsample3")}
MODEL_PARAMS = ("width1", "width2", "width3", "width4", "dilation", "residual", "residual_all", "activation",
                "norm_order", *STAGE_PARAMS, *(p for stages in STAGE_PARAMS.values() for p in stages))
# The original CifarNet, enqueued as trial 0 of every study (lr and the rest come from the study's [train]).
_ORIGINAL = ModelConfig()
ORIGINAL_PARAMS: dict[str, Any] = {
    "width1": 16, "width2": 32, "width3": 64, "width4": 128, "dilation": 2, "residual": True,
    "residual_all": False, "activation": "relu", "norm_order": "act_bn", "aug_strength": 0.5,
    "depthwise": True, **dict(zip(STAGE_PARAMS["depthwise"], _ORIGINAL.depthwise)),
    "downsample": "conv1x1", **dict(zip(STAGE_PARAMS["downsample"], _ORIGINAL.downsample)),
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
    for every, stages in STAGE_PARAMS.items():
        both = [s for s in stages if s in params]
        if every in params and both:
            raise StudyFileError(f"[{where}] {every} sets every stage and {both[0]} one of them: search one or the other")
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


def suggest_config(space: SearchSpace, trial: optuna.trial.BaseTrial, base: TrainConfig,
                   max_params: int | None = None) -> TrainConfig:
    """Sample (or, for a FixedTrial, replay) every searched parameter and apply it to `base`; with `max_params`,
    a model over it is narrowed to fit (`fit_widths`), so every point of the space is a model the budget allows
    and no trial is spent on one it does not."""
    values: dict[str, Any] = {}
    for name, dist in space.params.items():
        if isinstance(dist, Choice):
            values[name] = trial.suggest_categorical(name, list(dist.choices))
        elif isinstance(dist, IntRange):
            step = 1 if dist.log else dist.step
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=step, log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    cfg = apply_params(base, values)
    return cfg if max_params is None else fit_widths(cfg, max_params)


WIDTH_STEP = 4  # fitted widths stay multiples of this


def fit_widths(cfg: TrainConfig, max_params: int) -> TrainConfig:
    """`cfg` itself when its model has at most `max_params` parameters; else the same model with every width
    scaled by the largest factor in 0.95, 0.90, ... that fits (rounded to multiples of WIDTH_STEP), keeping the
    proportions the search chose. Deterministic, so a replayed trial gets the model it trained."""
    from cifarnet.model import count_params_of  # torch: only the commands that build models load it

    if count_params_of(cfg.model) <= max_params:
        return cfg
    for step in range(19, 0, -1):
        widths = tuple(max(WIDTH_STEP, round(w * step / 20 / WIDTH_STEP) * WIDTH_STEP) for w in cfg.model.widths)
        fitted = cfg.replace(model=dataclasses.replace(cfg.model, widths=widths))
        if count_params_of(fitted.model) <= max_params:
            return fitted
    raise ConfigError(f"no narrowing of widths {list(cfg.model.widths)} fits max_params {max_params:,}")


def apply_params(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    m = base.model
    model_values: dict[str, Any] = {"widths": tuple(values.get(f"width{i + 1}", w) for i, w in enumerate(m.widths))}
    for every, stages in STAGE_PARAMS.items():
        per_stage = [values.get(every, v) for v in getattr(m, every)]
        model_values[every] = tuple(values.get(stage, v) for stage, v in zip(stages, per_stage))
    for name in ("dilation", "residual", "residual_all", "activation", "norm_order"):
        model_values[name] = values.get(name, getattr(m, name))
    train_values = {k: v for k, v in values.items() if k not in MODEL_PARAMS}
    try:
        return dataclasses.replace(base, model=dataclasses.replace(m, **model_values), **train_values)
    except ConfigError as e:
        raise ConfigError(f"searched values give an invalid config: {e}") from None


def seed_params(space: SearchSpace, base: TrainConfig) -> dict[str, Any]:
    """Trial 0's parameters: the original network with the study's base recipe for everything else."""
    base_values = dataclasses.asdict(base)
    return {name: ORIGINAL_PARAMS.get(name, base_values.get(name)) for name in space.params}


def params_range(space: SearchSpace, base: TrainConfig) -> tuple[int, int]:
    """The fewest and the most parameters a model of `space` has: every distinct combination of the searched
    switches that change the parameter count (depthwise, downsample, per stage or all at once) at the narrowest
    and at the widest widths (parameters grow with each width). Models are built on the meta device: no memory."""
    from cifarnet.model import count_params_of  # torch: only the commands that build models load it

    def values(name: str) -> list[Any]:
        dist = space.params.get(name)
        if isinstance(dist, Choice):
            return list(dict.fromkeys(dist.choices))  # repeated choices add nothing to enumerate
        if isinstance(dist, IntRange):  # optuna's suggest_int never goes past the last step below `high`
            return [dist.low, dist.low + (dist.high - dist.low) // (1 if dist.log else dist.step) * (
                1 if dist.log else dist.step)]
        return [None]

    switches = [name for name in PARAM_KINDS if name.startswith(("depthwise", "downsample")) and name in space.params]
    extremes = [(pick(v for v in values(f"width{i + 1}") if v is not None) if f"width{i + 1}" in space.params
                 else w) for pick in (min, max) for i, w in enumerate(base.model.widths)]
    configs = {apply_params(base, {**{k: v for k, v in zip(switches, combo)},
                                   **{f"width{i + 1}": w for i, w in enumerate(widths)}}).model
               for widths in (extremes[:4], extremes[4:]) for combo in itertools.product(*map(values, switches))}
    sizes = [count_params_of(cfg) for cfg in configs]
    return min(sizes), max(sizes)
