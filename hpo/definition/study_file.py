"""Study files (`studies/*.toml`): what to search, on which storage, with which sampler, pruner and budget.

A study file is data. `load_study_file` reads and validates it (one clear `StudyFileError` per bad field;
unknown keys are errors) into a frozen `StudySpec`. The parsed dict (`StudySpec.raw`) is stored on the study
(user_attr "study_file"), so retraining and the dashboard rebuild the exact spec from storage alone with
`spec_from_dict(raw)`; its storage URL has no password (everyone who reads the database sees the attr).
Values are refused up front when a run could not use them: non-finite or out-of-range numbers (UPPER), names
that are not safe folder names, control characters, any malformed structure; always as one StudyFileError.

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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from cifarnet.config import (MAX_EPOCHS, SEED_LIMIT, DataConfig, TrainConfig, dumps_toml, has_type, read_toml_bounded,
                             type_text)
from cifarnet.errors import ConfigError
from cifarnet.redact import hide_password
from hpo.errors import StudyFileError
from hpo.definition.paths import resolve_sqlite_url
from hpo.definition.space import Choice, SearchSpace, apply_params, params_range, parse_space

DEFAULT_STORAGE = "sqlite:///hpo.db"

SAMPLER_OPTIONS: dict[str, dict[str, type]] = {
    "tpe": {"seed": int, "n_startup_trials": int, "multivariate": bool, "constant_liar": bool},
    "random": {"seed": int},
    "gp": {"seed": int, "n_startup_trials": int},
    "cmaes": {"seed": int, "n_startup_trials": int},
    "qmc": {"seed": int, "scramble": bool},  # scrambled Sobol points, in trial order (benchmark tables)
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
BUDGET_KEYS = {"epochs": int, "train_size": int, "val_size": int, "split_seed": int, "rungs": list}
RUNG_KEYS = {"epochs": int, "train_size": int}
MAX_RUNGS = 8
RUNG_BASE = 3  # rung i reports at step 3**i: optuna's successive halving rungs (min_resource 1, reduction_factor 3)
WORKER_KEYS = {"heartbeat_interval": int, "grace_period": int, "max_retry": int, "keep_checkpoints": bool}
FINALIST_KEYS = {"top": int, "seeds": int, "epochs": int, "train_size": int}
RETRAIN_KEYS = {"target": float, "max_epochs": int, "train_size": int, "tta_flip": bool, "tta_shift": int}
# Options that may be 0; every other number in a study file must be > 0.
ZERO_OK = {"seed", "split_seed", "n_warmup_steps", "n_startup_trials", "min_early_stopping_rate", "max_retry",
           "tta_shift"}
# Largest value each number may take: what one run can use. Epochs and resources are epochs; the sampler seed
# stays below 2**31 so seed + worker index (hpo.running.study.build_sampler) is still a valid 32-bit numpy seed.
TRAIN_IMAGES = 50_000  # CIFAR-10's training set, validation split included
UPPER = {
    "trials": 1_000_000, "timeout": 366 * 86_400.0, "target_accuracy": 1.0, "max_params": 10**9,
    "epochs": MAX_EPOCHS, "train_size": TRAIN_IMAGES, "val_size": TRAIN_IMAGES - 1, "split_seed": SEED_LIMIT - 1,
    # The heartbeat thread sleeps heartbeat_interval seconds; a dead worker is noticed after grace_period.
    "heartbeat_interval": 3_600, "grace_period": 7 * 86_400, "max_retry": 100,
    "seed": 2**31 - 1, "n_startup_trials": 1_000_000, "n_warmup_steps": MAX_EPOCHS, "interval_steps": MAX_EPOCHS,
    "n_min_trials": 1_000_000, "min_resource": MAX_EPOCHS, "max_resource": MAX_EPOCHS, "reduction_factor": 100,
    "min_early_stopping_rate": 100, "top": 100, "seeds": 100, "target": 1.0, "max_epochs": MAX_EPOCHS,
    "tta_shift": 4,
}
# Study names become folder names (artifacts/<name>, runs/retrain/<name>) and output lines.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,100}")
PROBLEM_SEPARATOR = "; "  # a file with several problems: all of them, in one line
TABLES = ("study", "sampler", "pruner", "budget", "workers", "train", "space", "finalists", "retrain")


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
    # Keep finished trials' per-epoch checkpoints (hpo.running.checkpoints); by default they are removed, so a long
    # study does not fill the disk.
    keep_checkpoints: bool = False


@dataclass(frozen=True)
class Rung:
    """A complete cheaper run a trial makes before its full budget (budget-aware multi-fidelity)."""

    epochs: int
    train_size: int

    @property
    def image_epochs(self) -> int:
        return self.epochs * self.train_size


@dataclass(frozen=True)
class FinalistSpec:
    """After the search, its `top` trials run again with `seeds` seeds on the validation split at this fidelity
    (hpo.running.finalists); the best mean validation accuracy wins and is what `hpo retrain` retrains."""

    top: int = 3
    seeds: int = 2
    epochs: int | None = None  # None: the search's per-trial epochs
    train_size: int | None = None  # None: the search's training subset


@dataclass(frozen=True)
class RetrainSpec:
    """How `hpo retrain` retrains this study's trial unless its command line says otherwise."""

    target: float = 0.85  # test accuracy that stops training early (changes nothing in the schedule)
    max_epochs: int = 30  # the schedule's length
    train_size: int | None = None  # training images (class-balanced subset); None = all 50k
    # Test-time views of the retrain's evaluation (None: the trial's). They change nothing that is trained, so
    # a search can score its trials with cheap views and the retrain with more.
    tta_flip: bool | None = None
    tta_shift: int | None = None


@dataclass(frozen=True)
class StudySpec:
    name: str
    storage: str  # SQLAlchemy URL
    base: TrainConfig  # the recipe every trial starts from; epochs = the per-trial budget
    data: DataConfig  # the per-trial data budget (training subset, validation size; no test set)
    space: SearchSpace
    # [budget] rungs: complete cheaper runs, cheapest first, each scored and offered to the pruner before the next
    # (hpo.running.objective); () = one run of the full budget, scored every epoch.
    rungs: tuple[Rung, ...] = ()
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    workers: WorkerSpec = field(default_factory=WorkerSpec)
    n_trials: int | None = None  # trials per `hpo study start` (the seed trial included in a new study)
    timeout: float | None = None  # seconds per `hpo study start`; no new trial starts after it
    target_accuracy: float | None = None  # validation accuracy that counts as "good enough"
    stop_on_target: bool = False  # stop every worker once a trial reaches target_accuracy
    max_params: int | None = None  # configurations with more parameters are rejected before training
    finalists: FinalistSpec | None = None  # [finalists]: re-run the top trials with several seeds before a retrain
    retrain: RetrainSpec = field(default_factory=RetrainSpec)  # [retrain]: the retrain's defaults
    artifact_dir: str = ""  # absolute folder of the optuna artifact store
    raw: dict[str, Any] = field(default_factory=dict)  # the parsed file, overrides applied, storage password removed


def load_study_file(path: str | Path, storage: str | None = None, n_trials: int | None = None,
                    timeout: float | None = None) -> StudySpec:
    """Read and validate a study TOML; CLI overrides are written into `raw` so it stays the whole truth."""
    path = Path(path)
    raw = _read_toml(path)
    try:
        study = raw.get("study")
        if isinstance(study, dict):
            _relative_to_file(study, path.parent)
            overrides = {"storage": storage, "trials": n_trials, "timeout": timeout}
            study.update({k: v for k, v in overrides.items() if v is not None})
            # Relative artifact folders resolve once, here, so the stored file means the same from any cwd.
            study["artifact_dir"] = str(_artifact_dir(study))
        return spec_from_dict(raw)
    except StudyFileError as e:
        raise StudyFileError(f"{path}: {e}") from None


def to_toml(raw: dict[str, dict[str, Any]]) -> str:
    """A study file's text from its tables (the inverse of reading one)."""
    return dumps_toml(raw)


def _read_toml(path: Path) -> dict[str, Any]:
    # Bounded before parsing (size, dotted-key parts, nesting): a crafted 100 KB file cannot exhaust the machine.
    return read_toml_bounded(path, StudyFileError, "study file")


def spec_from_dict(raw: dict) -> StudySpec:
    """Validate a parsed study file (e.g. `study.user_attrs["study_file"]`) into a StudySpec.

    `raw` of the result keeps the storage URL without its password: that is what goes into the study, where
    everyone who can read the database (and the dashboard) sees it. The password stays in `storage` only."""
    try:
        return _spec_from_dict(copy.deepcopy(raw))
    except RecursionError:
        raise StudyFileError("study file nested too deeply") from None


def _spec_from_dict(raw: dict) -> StudySpec:
    """Every table checked, every problem collected: one StudyFileError naming them all (`hpo study check`
    reports a file's errors at once, not one per run)."""
    _check_keys("study file", raw, {t: dict for t in TABLES})
    problems: list[str] = []

    def checked(parse: Callable[..., Any], *args: Any) -> Any:
        try:
            return parse(*args)
        except StudyFileError as e:
            problems.append(str(e))
            return None

    problems += [f"missing [{table}] table" for table in ("study", "space") if table not in raw]
    study = checked(_parse_study, raw["study"]) if "study" in raw else None
    budget = checked(_parse_budget, raw.get("budget", {}), raw.get("train", {}))
    rungs = checked(_parse_rungs, raw.get("budget", {}).get("rungs", []), *budget) if budget else ()
    space = checked(parse_space, raw["space"]) if "space" in raw else None
    if space is not None and budget is not None:
        checked(_check_space, space, budget[0])
    sampler = checked(_parse_kind, "sampler", raw.get("sampler", {}), SAMPLER_OPTIONS, "tpe")
    pruner = checked(_parse_kind, "pruner", raw.get("pruner", {}), PRUNER_OPTIONS, "median")
    workers = checked(_parse_workers, raw.get("workers", {}))
    finalists = checked(_typed, "[finalists]", raw["finalists"], FINALIST_KEYS) if "finalists" in raw else {}
    retrain = checked(_typed, "[retrain]", raw.get("retrain", {}), RETRAIN_KEYS)
    if problems:
        raise StudyFileError(PROBLEM_SEPARATOR.join(problems))
    base, data = budget
    storage = study.get("storage", DEFAULT_STORAGE)
    if "storage" in raw["study"]:
        raw["study"]["storage"] = hide_password(storage, None)
    return StudySpec(
        name=study["name"], storage=storage, base=base, data=data, space=space, rungs=rungs,
        sampler=SamplerSpec(*sampler), pruner=PrunerSpec(*pruner), workers=workers,
        n_trials=study.get("trials"), timeout=study.get("timeout"),
        target_accuracy=study.get("target_accuracy"), stop_on_target=study.get("stop_on_target", False),
        max_params=study.get("max_params"), artifact_dir=str(_artifact_dir(study)), raw=raw,
        finalists=FinalistSpec(**finalists) if "finalists" in raw else None, retrain=RetrainSpec(**retrain),
    )


def _typed(where: str, values: dict[str, Any], keys: dict[str, type]) -> dict[str, Any]:
    """Check the keys and value types of a flat table; counts and sizes must also be positive. Every bad value
    of the table is named (one StudyFileError)."""
    _check_keys(where, values, keys)
    out, problems = {}, []
    for key, value in values.items():
        kind = keys[key]
        if not has_type(value, kind) or value is None:
            problems.append(f"{where} {key} must be {type_text(kind)}, got {value!r}")
            continue
        if kind in (int, float):
            high = UPPER[key]
            if not math.isfinite(value) or value < 0 or (value == 0 and key not in ZERO_OK) or value > high:
                high_text = f"{int(high):,}" if float(high).is_integer() else f"{high}"
                problems.append(f"{where} {key} must be {'>= 0' if key in ZERO_OK else '> 0'} and <= "
                                f"{high_text}, got {value!r}")
                continue
        if kind is str and any(ord(c) < 32 or ord(c) == 127 for c in value):
            problems.append(f"{where} {key} must not contain control characters (newline, NUL, ...)")
            continue
        out[key] = float(value) if kind is float else value
    if problems:
        raise StudyFileError(PROBLEM_SEPARATOR.join(problems))
    return out


def _parse_study(values: dict[str, Any]) -> dict[str, Any]:
    study = _typed("[study]", values, STUDY_KEYS)
    if not study.get("name"):
        raise StudyFileError("[study] name is required (a non-empty string)")
    check_name(study["name"])
    if study.get("target_accuracy", 1.0) > 1:
        raise StudyFileError(f"[study] target_accuracy is a fraction in (0, 1], got {study['target_accuracy']}")
    if "trials" not in study and "timeout" not in study:
        raise StudyFileError("[study] set trials and/or timeout (or pass --n-trials / --timeout)")
    if study.get("stop_on_target") and "target_accuracy" not in study:
        raise StudyFileError("[study] stop_on_target needs a target_accuracy")
    return study


def check_name(name: str) -> None:
    """Study names become folder names and output lines: letters, digits, '.', '_' and '-' only."""
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise StudyFileError(f"[study] name must be 1-100 of letters, digits, '.', '_', '-' (not '.' or '..'), "
                             f"got {name!r}")


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


def _parse_kind(table: str, values: dict[str, Any], kinds: dict[str, dict[str, type]],
                default: str) -> tuple[str, dict[str, Any]]:
    """[sampler] / [pruner]: a `kind` and that kind's options."""
    values = dict(values)
    kind = values.pop("kind", default)
    if not isinstance(kind, str) or kind not in kinds:
        raise StudyFileError(f"[{table}] kind must be one of {', '.join(kinds)}; got {kind!r}")
    options = _typed(f"[{table}] (kind {kind})", values, kinds[kind])
    if table == "pruner":
        _check_pruner(kind, options)
    return kind, options


# The one map from a study file's pruner kind to optuna's class (hpo.running.study.build_pruner builds from it).
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner, "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}


def _check_pruner(kind: str, options: dict[str, Any]) -> None:
    """optuna's own constructor checks the options' relations (e.g. reduction_factor >= 2) up front."""
    try:
        PRUNERS[kind](**options)
    except (ValueError, TypeError) as e:
        raise StudyFileError(f"[pruner] (kind {kind}): {e}") from None


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


def _parse_rungs(values: list[Any], base: TrainConfig, data: DataConfig) -> tuple[Rung, ...]:
    """[budget] rungs = [{ epochs = .., train_size = .. }, ...]: each cheaper (epochs x images) than the next, the
    last cheaper than the full budget."""
    if len(values) > MAX_RUNGS:
        raise StudyFileError(f"[budget] rungs: at most {MAX_RUNGS}, got {len(values)}")
    rungs = []
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise StudyFileError(f"[budget] rungs[{i}] must be a table like {{ epochs = 2, train_size = 2000 }}")
        fields = _typed(f"[budget] rungs[{i}]", value, RUNG_KEYS)
        if set(fields) != set(RUNG_KEYS):
            raise StudyFileError(f"[budget] rungs[{i}] needs both epochs and train_size")
        rungs.append(Rung(**fields))
    full = base.epochs * (data.train_size or TRAIN_IMAGES - data.val_size)
    costs = [r.image_epochs for r in rungs] + [full]
    if any(a >= b for a, b in zip(costs, costs[1:])):
        raise StudyFileError(f"[budget] rungs must cost less and less (epochs x train_size, then the full budget "
                             f"{base.epochs} x {data.train_size or 'all'}), cheapest first; got {costs}")
    return tuple(rungs)


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


def check_size_budget(spec: StudySpec) -> tuple[int, int]:
    """The space's parameter range; StudyFileError when even its smallest model is above max_params, so every
    trial would be rejected before training (`hpo study check`, and `hpo study start` before the study is
    touched). Not in `load_study_file`: it builds models, and the commands that only read must not load torch."""
    low, high = params_range(spec.space, spec.base)
    if spec.max_params is not None and low > spec.max_params:
        raise StudyFileError(f"study {spec.name!r}: [study] max_params {spec.max_params:,} is below the smallest "
                             f"model of [space] ({low:,} parameters): every trial would be rejected before training")
    return low, high


def _relative_to_file(study: dict[str, Any], folder: Path) -> None:
    """Paths written in a study file are relative to its folder (hpo.definition.paths), not to the current one."""
    try:
        if isinstance(study.get("storage"), str):
            study["storage"] = resolve_sqlite_url(study["storage"], folder)
        if isinstance(study.get("artifact_dir"), str) and study["artifact_dir"]:
            study["artifact_dir"] = str((folder / Path(study["artifact_dir"]).expanduser()).resolve())
    except (RuntimeError, ValueError, OSError) as e:  # "~nouser/x", a NUL byte
        raise StudyFileError(f"[study] artifact_dir / storage: not a usable path ({e})") from None


def _artifact_dir(study: dict[str, Any]) -> Path:
    """Explicit folder (relative to cwd), else artifacts/<name> next to the SQLite file, else in cwd."""
    try:
        if isinstance(study.get("artifact_dir"), str) and study["artifact_dir"]:
            return Path(study["artifact_dir"]).expanduser().resolve()
        name = study.get("name")
        if not isinstance(name, str) or not name:
            name = "study"
        check_name(name)  # before it becomes part of a path
        storage = study.get("storage", DEFAULT_STORAGE)
        root = Path.cwd()
        if isinstance(storage, str) and storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
            root = Path(storage.removeprefix("sqlite:///")).expanduser().resolve().parent
        return (root / "artifacts" / name).resolve()
    except (RuntimeError, ValueError, OSError) as e:  # "~nouser/x", a NUL byte, an unreadable cwd
        raise StudyFileError(f"[study] artifact_dir / storage: not a usable path ({e})") from None
