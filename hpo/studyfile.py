"""Study files (`studies/*.toml`): what to search, on which storage, with which sampler, pruner and budget.

A study file is data. `load_study_file` reads and validates it (one clear `StudyFileError` per bad field;
unknown keys are errors) into a frozen `StudySpec`. The parsed dict (`StudySpec.raw`) is stored on the study
(user_attr "study_file"), so retraining and the dashboard rebuild the exact spec from storage alone with
`spec_from_dict(raw)`.

Layout (every table but [study] and [space] is optional):

    [study]    name, storage, trials, timeout, target_accuracy, stop_on_target, max_params, artifact_dir
    [sampler]  kind = tpe | random | gp | cmaes, seed, ...          (see SAMPLER_OPTIONS)
    [pruner]   kind = median | successive-halving | hyperband | none, ... (see PRUNER_OPTIONS)
    [budget]   per trial: epochs, train_size, val_size, split_seed
    [workers]  crash safety: heartbeat_interval, grace_period, max_retry, keep_checkpoints
    [train]    the base recipe (TrainConfig fields but epochs) and [train.model]
    [space]    searched parameters, e.g. lr = { low = 0.01, high = 0.5, log = true }
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarnet.config import DataConfig, TrainConfig
from cifarnet.errors import ConfigError
from hpo.errors import StudyFileError
from hpo.space import Choice, SearchSpace, apply_params, parse_space

DEFAULT_STORAGE = "sqlite:///hpo.db"

SAMPLER_OPTIONS: dict[str, dict[str, type]] = {
    "tpe": {"seed": int, "n_startup_trials": int, "multivariate": bool, "constant_liar": bool},
    "random": {"seed": int},
    "gp": {"seed": int, "n_startup_trials": int},
    "cmaes": {"seed": int, "n_startup_trials": int},
}
PRUNER_OPTIONS: dict[str, dict[str, type]] = {
    "median": {"n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int, "n_min_trials": int},
    "successive-halving": {"min_resource": int, "reduction_factor": int, "min_early_stopping_rate": int},
    "hyperband": {"min_resource": int, "max_resource": int, "reduction_factor": int},
    "none": {},
}
# Tables of a study file and their keys (type, or None for tables validated elsewhere).
STUDY_KEYS = {"name": str, "storage": str, "trials": int, "timeout": float, "target_accuracy": float,
              "stop_on_target": bool, "max_params": int, "artifact_dir": str}
BUDGET_KEYS = {"epochs": int, "train_size": int, "val_size": int, "split_seed": int}
WORKER_KEYS = {"heartbeat_interval": int, "grace_period": int, "max_retry": int, "keep_checkpoints": bool}
# Options that may be 0; every other number in a study file must be > 0.
ZERO_OK = {"seed", "split_seed", "n_warmup_steps", "n_startup_trials", "min_early_stopping_rate", "max_retry"}
TABLES = ("study", "sampler", "pruner", "budget", "workers", "train", "space")


@dataclass(frozen=True)
class SamplerSpec:
    kind: str = "tpe"
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the optuna sampler


@dataclass(frozen=True)
class PrunerSpec:
    kind: str = "median"
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the optuna pruner


@dataclass(frozen=True)
class WorkerSpec:
    # A running trial refreshes its heartbeat this often (seconds) ...
    heartbeat_interval: int = 20
    # ... and counts as dead (FAIL, then re-queued) when the heartbeat is older than this.
    grace_period: int = 60
    # How many times one dead trial is re-run before it stays failed.
    max_retry: int = 2
    # Keep finished trials' per-epoch checkpoints (hpo.checkpoints); by default they are removed, so a long
    # study does not fill the disk.
    keep_checkpoints: bool = False


@dataclass(frozen=True)
class StudySpec:
    name: str
    storage: str  # SQLAlchemy URL
    base: TrainConfig  # the recipe every trial starts from; epochs = the per-trial budget
    data: DataConfig  # the per-trial data budget (training subset, validation size; no test set)
    space: SearchSpace
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    workers: WorkerSpec = field(default_factory=WorkerSpec)
    n_trials: int | None = None  # trials per `hpo study start` (the seed trial included in a new study)
    timeout: float | None = None  # seconds per `hpo study start`; no new trial starts after it
    target_accuracy: float | None = None  # validation accuracy that counts as "good enough"
    stop_on_target: bool = False  # stop every worker once a trial reaches target_accuracy
    max_params: int | None = None  # configurations with more parameters are rejected before training
    artifact_dir: str = ""  # absolute folder of the optuna artifact store
    raw: dict[str, Any] = field(default_factory=dict)  # the parsed file, overrides applied

    def __hash__(self) -> int:  # dict fields; identity is fine for a frozen value used as a config
        return id(self)


def load_study_file(path: str | Path, storage: str | None = None, n_trials: int | None = None,
                    timeout: float | None = None) -> StudySpec:
    """Read and validate a study TOML; CLI overrides are written into `raw` so it stays the whole truth."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyFileError(f"study file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise StudyFileError(f"{path}: TOML syntax error: {e}") from None
    study = raw.get("study")
    if isinstance(study, dict):
        overrides = {"storage": storage, "trials": n_trials, "timeout": timeout}
        study.update({k: v for k, v in overrides.items() if v is not None})
        # Relative artifact folders resolve once, here, so the stored file means the same from any cwd.
        study["artifact_dir"] = str(_artifact_dir(study))
    try:
        return spec_from_dict(raw)
    except StudyFileError as e:
        raise StudyFileError(f"{path}: {e}") from None


def spec_from_dict(raw: dict) -> StudySpec:
    """Validate a parsed study file (e.g. `study.user_attrs["study_file"]`) into a StudySpec."""
    raw = copy.deepcopy(raw)
    _check_keys("study file", raw, {t: dict for t in TABLES})
    for table in ("study", "space"):
        if table not in raw:
            raise StudyFileError(f"missing [{table}] table")
    study = _parse_study(raw["study"])
    base, data = _parse_budget(raw.get("budget", {}), raw.get("train", {}))
    space = parse_space(raw["space"])
    _check_space(space, base)
    return StudySpec(
        name=study["name"], storage=study.get("storage", DEFAULT_STORAGE), base=base, data=data, space=space,
        sampler=SamplerSpec(*_parse_kind("sampler", raw.get("sampler", {}), SAMPLER_OPTIONS, "tpe")),
        pruner=PrunerSpec(*_parse_kind("pruner", raw.get("pruner", {}), PRUNER_OPTIONS, "median")),
        workers=_parse_workers(raw.get("workers", {})),
        n_trials=study.get("trials"), timeout=study.get("timeout"),
        target_accuracy=study.get("target_accuracy"), stop_on_target=study.get("stop_on_target", False),
        max_params=study.get("max_params"), artifact_dir=str(_artifact_dir(study)), raw=raw,
    )


def _typed(where: str, values: dict[str, Any], keys: dict[str, type]) -> dict[str, Any]:
    """Check the keys and value types of a flat table; counts and sizes must also be positive."""
    _check_keys(where, values, keys)
    out = {}
    for key, value in values.items():
        kind = keys[key]
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise StudyFileError(f"{where} {key} must be {_type_name(kind)}, got {value!r}")
        if kind in (int, float) and (value < 0 or (value == 0 and key not in ZERO_OK)):
            raise StudyFileError(f"{where} {key} must be {'>= 0' if key in ZERO_OK else '> 0'}, got {value!r}")
        out[key] = float(value) if kind is float else value
    return out


def _parse_study(values: dict[str, Any]) -> dict[str, Any]:
    study = _typed("[study]", values, STUDY_KEYS)
    if not study.get("name"):
        raise StudyFileError("[study] name is required (a non-empty string)")
    if study.get("target_accuracy", 1.0) > 1:
        raise StudyFileError(f"[study] target_accuracy is a fraction in (0, 1], got {study['target_accuracy']}")
    if "trials" not in study and "timeout" not in study:
        raise StudyFileError("[study] set trials and/or timeout (or pass --n-trials / --timeout)")
    if study.get("stop_on_target") and "target_accuracy" not in study:
        raise StudyFileError("[study] stop_on_target needs a target_accuracy")
    return study


def _check_keys(where: str, values: Any, known: dict[str, Any]) -> None:
    if not isinstance(values, dict):
        raise StudyFileError(f"{where} must be a table")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise StudyFileError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(known) or 'none'})")
    for key, kind in known.items():
        if kind is dict and key in values and not isinstance(values[key], dict):
            raise StudyFileError(f"{where}: {key} must be a [{key}] table")


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]


def _parse_kind(table: str, values: dict[str, Any], kinds: dict[str, dict[str, type]],
                default: str) -> tuple[str, dict[str, Any]]:
    """[sampler] / [pruner]: a `kind` and that kind's options."""
    values = dict(values)
    kind = values.pop("kind", default)
    if kind not in kinds:
        raise StudyFileError(f"[{table}] kind must be one of {', '.join(kinds)}; got {kind!r}")
    return kind, _typed(f"[{table}] (kind {kind})", values, kinds[kind])


def _parse_budget(budget: dict[str, Any], train: dict[str, Any]) -> tuple[TrainConfig, DataConfig]:
    budget = _typed("[budget]", budget, BUDGET_KEYS)
    if "epochs" in train:
        raise StudyFileError("[train] epochs: set the per-trial epochs in [budget] instead")
    try:
        base = TrainConfig.from_dict({**train, "epochs": budget.get("epochs", TrainConfig.epochs)})
    except ConfigError as e:
        raise StudyFileError(f"[train] {e}") from None
    data = DataConfig(train_size=budget.get("train_size"), val_size=budget.get("val_size", DataConfig.val_size),
                      test_size=0, split_seed=budget.get("split_seed", 0))
    if data.val_size == 0:
        raise StudyFileError("[budget] val_size must be > 0: trials are scored on the validation split")
    return base, data


def _parse_workers(values: dict[str, Any]) -> WorkerSpec:
    spec = WorkerSpec(**_typed("[workers]", values, WORKER_KEYS))
    if spec.grace_period <= spec.heartbeat_interval:
        raise StudyFileError(f"[workers] grace_period ({spec.grace_period}) must exceed heartbeat_interval "
                             f"({spec.heartbeat_interval}), or live trials would be declared dead")
    return spec


def _check_space(space: SearchSpace, base: TrainConfig) -> None:
    """Every bound of the space must give a valid TrainConfig, so trials never fail on a bad range."""
    if not space.params:
        raise StudyFileError("[space] is empty: name at least one parameter to search")
    for name, dist in space.params.items():
        values = dist.choices if isinstance(dist, Choice) else (dist.low, dist.high)
        for value in values:
            try:
                apply_params(base, {name: value})
            except ConfigError as e:
                detail = str(e).removeprefix("searched values give an invalid config: ")
                raise StudyFileError(f"[space] {name}: {value!r} is not a valid training value ({detail})") from None


def _artifact_dir(study: dict[str, Any]) -> Path:
    """Explicit folder (relative to cwd), else artifacts/<name> next to the SQLite file, else in cwd."""
    if isinstance(study.get("artifact_dir"), str) and study["artifact_dir"]:
        return Path(study["artifact_dir"]).expanduser().resolve()
    name = study.get("name") if isinstance(study.get("name"), str) else "study"
    storage = study.get("storage", DEFAULT_STORAGE)
    root = Path.cwd()
    if isinstance(storage, str) and storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        root = Path(storage.removeprefix("sqlite:///")).expanduser().resolve().parent
    return (root / "artifacts" / name).resolve()
