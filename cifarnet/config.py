"""One frozen config describes a training run: the model, the recipe and the data budget.

The search maps (search space, trial) -> TrainConfig; retraining and benchmarks build the same object,
so whatever is trained is fully described by `TrainConfig.to_dict()` (saved in every checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarnet.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "linear")
AUG_BACKENDS = ("torch", "albumentations")
DEVICES = ("auto", "cpu", "cuda")
# How a stage halves the map: "conv1x1" = 3x3 stride-2 conv then a 1x1 conv (the original), "conv" = the
# stride-2 conv alone, "maxpool" = 2x2 max pooling after the stage's last conv, "dilated" = an unpadded 3x3 conv
# dilated by a quarter of the map side (32 -> 16 with dilation 8), the original author's no-stride option.
DOWNSAMPLES = ("conv1x1", "conv", "maxpool", "dilated")
ACTIVATIONS = ("relu", "gelu")
NORM_ORDERS = ("act_bn", "bn_act")  # the original: conv -> ReLU -> BatchNorm
# Upper bounds that keep a config inside what one run can use: MAX_WIDTH is 4x the original's widest block (128);
# all four at 512 is a 27M-parameter model with 0.5 GB activations per layer at batch 256. Seeds are 32-bit.
MAX_WIDTH = 512
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
SEED_LIMIT = 2**32  # seeds are in [0, SEED_LIMIT)


@dataclass(frozen=True)
class ModelConfig:
    # Output channels of blocks 1-4; block 4b doubles the last one (the original: 16, 32, 64, 128 -> 256).
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    # Dilation of the 3x3 conv in block 3b; padding = dilation keeps the 8x8 map ("same").
    dilation: int = 2
    # The original adds block 3b's output to its input (x = x + 3b(x)): the residual around the dilated block.
    residual: bool = True
    # Residuals around the other blocks whose input and output shapes agree (1b and 2b).
    residual_all: bool = False
    # Per stage 2, 3, 4: depthwise-separable convs where the original uses them (2a, 3a, 4a + 4b) or plain 3x3
    # convs. One value sets all three.
    depthwise: tuple[bool, bool, bool] = (True, True, True)
    # Per downsampling step (after stages 1, 2, 3): one of DOWNSAMPLES. One value sets all three.
    downsample: tuple[str, str, str] = ("conv1x1", "conv1x1", "conv1x1")
    # Non-linearity of every block: "relu" (the original) or "gelu".
    activation: str = "relu"
    # Order after each conv: "act_bn" (the original: ReLU, then BatchNorm) or "bn_act".
    norm_order: str = "act_bn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        for name, stages in (("depthwise", 3), ("downsample", 3)):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value) if isinstance(value, (list, tuple)) else (value,) * stages)
        if len(self.widths) != 4 or any(not 1 <= w <= MAX_WIDTH for w in self.widths):
            raise ConfigError(f"model.widths must be 4 integers in 1..{MAX_WIDTH}, got {list(self.widths)}")
        if not 1 <= self.dilation <= 4:
            raise ConfigError(f"model.dilation must be in 1..4, got {self.dilation}")
        if len(self.depthwise) != 3 or any(not isinstance(d, bool) for d in self.depthwise):
            raise ConfigError(f"model.depthwise must be true/false or 3 of them (stages 2-4), got {self.depthwise}")
        if len(self.downsample) != 3 or any(d not in DOWNSAMPLES for d in self.downsample):
            raise ConfigError(f"model.downsample must be one of {', '.join(DOWNSAMPLES)} or 3 of them, "
                              f"got {list(self.downsample)}")
        _check_choice("model.activation", self.activation, ACTIVATIONS)
        _check_choice("model.norm_order", self.norm_order, NORM_ORDERS)

    def describe(self) -> str:
        """One line naming the member's switches (the layer table's footer, trial notes)."""
        dw = {(True,) * 3: "depthwise", (False,) * 3: "plain"}.get(self.depthwise) or "depthwise(stages 2-4) " + (
            "/".join("y" if d else "n" for d in self.depthwise))
        down = self.downsample[0] if len(set(self.downsample)) == 1 else "/".join(self.downsample)
        residual = {(True, False): "3b", (True, True): "1b,2b,3b", (False, True): "1b,2b", (False, False): "none"}[
            (self.residual, self.residual_all)]
        return (f"widths {list(self.widths)}, dilation {self.dilation}, residual {residual}, {dw} convs, "
                f"downsample {down}, {self.activation}, {self.norm_order}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # Passes over the training set; the LR schedule is always sized to this budget.
    epochs: int = 10
    # Images per optimizer step.
    batch_size: int = 256
    # "sgd" = SGD with Nesterov momentum; "adamw" = AdamW.
    optimizer: str = "sgd"
    # Peak learning rate of the schedule.
    lr: float = 0.2
    # SGD momentum / AdamW beta1.
    momentum: float = 0.9
    # Decoupled weight decay: fraction of each conv weight removed per step at the schedule's peak,
    # independent of lr (tuning lr does not change the regularisation). Not applied to biases and BN.
    weight_decay: float = 5e-5
    # "onecycle" (linear warm-up then linear decay to 0), "cosine" (warm-up then cosine), "linear" (decay to 0).
    schedule: str = "onecycle"
    # Fraction of the steps spent warming up (onecycle / cosine).
    warmup_frac: float = 0.2
    # Cross-entropy label smoothing.
    label_smoothing: float = 0.0
    # Augmentation strength in [0, 1]: 0 = none, 0.5 = the original notebook's settings, 1 = strongest.
    aug_strength: float = 0.5
    # Horizontal-flip probability; unset (None) = tied to aug_strength as in the original mapping, min(0.5, strength).
    flip_p: float | None = None
    # "torch" = batched augmentation on the training device; "albumentations" = per-image, DataLoader workers.
    aug_backend: str = "torch"
    # Mirror exactly half the images each epoch, each image in every other epoch (a seeded half in even epochs,
    # the other half in odd ones: airbench's derandomised flip) instead of drawing each mirror with flip_p.
    alternate_flip: bool = False
    # Initialise the first conv as a patch-PCA whitening of the training images (3x3 patches; filters in +-
    # pairs, scaled by 1/sqrt(eigenvalue)) and freeze its weights, as airbench / hlb-CIFAR10 do.
    whiten: bool = False
    # Learning-rate multiplier for BatchNorm and bias parameters (they never get weight decay).
    norm_lr_scale: float = 1.0
    # Decay of an exponential moving average of the weights used for evaluation; 0 = off.
    ema_decay: float = 0.0
    # Evaluate on the image and its mirror and average (test-time augmentation).
    tta_flip: bool = False
    # ... and on copies shifted by +-tta_shift pixels diagonally (reflect border); 0 = off. 1 is the usual choice.
    tta_shift: int = 0
    # bf16 autocast for forward/backward where the device computes bf16 natively (CUDA; CPUs with AVX512-BF16 or
    # AMX); fp32 elsewhere, where emulated bf16 is ~10x slower. Runs record the precision they used.
    bf16: bool = False
    # NHWC memory layout, faster for convs on both oneDNN (CPU) and cuDNN.
    channels_last: bool = True
    # torch.compile the model (worth it for long runs on GPU).
    compile: bool = False
    # Seeds initialisation, shuffling and augmentation; same seed + same device -> same metrics on CPU.
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("aug_backend", self.aug_backend, AUG_BACKENDS)
        checks = {
            "epochs": 1 <= self.epochs <= MAX_EPOCHS,
            "batch_size": 1 <= self.batch_size <= MAX_BATCH_SIZE,
            "seed": 0 <= self.seed < SEED_LIMIT,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "norm_lr_scale": math.isfinite(self.norm_lr_scale) and 0 < self.norm_lr_scale <= 1000,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": 0 <= self.weight_decay < 1,
            "warmup_frac": 0 <= self.warmup_frac < 1,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "aug_strength": 0 <= self.aug_strength <= 1,
            "ema_decay": 0 <= self.ema_decay < 1,
            "tta_shift": 0 <= self.tta_shift <= 4,
            "flip_p": self.flip_p is None or 0 <= self.flip_p <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name} out of range: {getattr(self, name)!r}")
        if self.alternate_flip and self.aug_backend != "torch":
            raise ConfigError("alternate_flip needs aug_backend = \"torch\" (the albumentations backend draws flips per image)")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["model"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a (possibly partial) nested dict; unknown keys are errors."""
        d = dict(d)
        model = d.pop("model", {}) or {}
        if not isinstance(model, dict):
            raise ConfigError(f"model must be a table ([model] / [train.model]), got {model!r}")
        _reject_unknown("model", model, ModelConfig)
        _reject_unknown("train", d, cls)
        _check_types("model.", model, ModelConfig)
        _check_types("", d, cls)
        return cls(model=ModelConfig(**model), **d)


@dataclass(frozen=True)
class DataConfig:
    # Training images per epoch, a class-balanced subset of what is left after the validation split;
    # None = all of them.
    train_size: int | None = None
    # Stratified validation images carved from the training set; 0 = none (retraining on all 50k).
    val_size: int = 5000
    # Test images evaluated every epoch (class-balanced subset); None = all 10k, 0 = skip (search trials).
    test_size: int | None = None
    # Seeds the validation split and the subsets, independently of the training seed.
    split_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"data.{name} must be >= 0, got {v}")
        if self.val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0, got {self.val_size}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_types(prefix: str, d: dict[str, Any], cls: type) -> None:
    """Each value of `d` must have its field's type (bool is not a number; ints are fine for floats)."""
    hints = typing.get_type_hints(cls)
    for key, value in d.items():
        expected = hints[key]
        if not has_type(value, expected):
            raise ConfigError(f"{prefix}{key} must be {type_text(expected)}, got {value!r}")


def has_type(value: Any, expected: Any) -> bool:
    """Whether `value` (as TOML gives it) has the field type `expected`: bool is not a number, an int is a float,
    a per-stage tuple field takes one value or a list. The one type check of run files and study files."""
    if expected in (list, dict):
        return isinstance(value, expected)
    if expected is bool:
        return isinstance(value, bool)
    if typing.get_origin(expected) is tuple:  # a list of one type; bool and str per-stage fields take one value too
        item = typing.get_args(expected)[0]
        if isinstance(value, (list, tuple)):
            return all(has_type(v, item) for v in value)
        return item in (bool, str) and has_type(value, item)
    if isinstance(value, bool):
        return False
    if expected is int:
        return isinstance(value, int)
    if expected is float:
        return isinstance(value, (int, float))
    if expected is str:
        return isinstance(value, str)
    args = typing.get_args(expected)  # X | None
    return value is None or any(has_type(value, a) for a in args if a is not type(None))


def type_text(expected: Any) -> str:
    """`expected` in words, for one-line errors."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list of tables",
             dict: "a table"}
    if typing.get_origin(expected) is tuple:
        item = typing.get_args(expected)[0]
        return "a list of integers" if item is int else f"{names[item]}, or a list of them"
    return names.get(expected) or " or ".join(names[a] for a in typing.get_args(expected) if a in names)


def _reject_unknown(section: str, d: dict[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(unknown)} (known: {', '.join(sorted(known))})")


# Bounds checked before tomllib sees a file: its cost is quadratic in the parts of one dotted key (a 100 KB
# line `a.a.a...` of 50,000 parts needs more than 12 GB) and it recurses once per nested array or inline table.
# A study file is ~3 KB, a run file or the dashboard config well under 1 KB.
MAX_TOML_BYTES = 64 * 1024
MAX_TOML_KEY_PARTS = 32
MAX_TOML_NESTING = 32
# TOML strings and comments, which may hold any of the characters counted below (TOML 1.0 grammar: a basic
# string's escapes, a multi-line string closed by the first unescaped delimiter plus up to two quotes). Every
# alternative matches once it has begun, an unterminated string running to its line's (or the file's) end, so
# the scan is linear; tomllib refuses such a file at that string, before anything after it is parsed.
_TOML_TOKEN = re.compile(r'''
    (?P<skip>"""(?:[^"\\]|\\[\s\S]|"(?!""))*(?:"{3,5})?|\'\'\'[\s\S]*?(?:\'{3,5}|\Z)|\#[^\n]*)
  | (?P<part>[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"?|'[^'\n]*'?)
  | (?P<dot>\.) | (?P<space>[ \t]+) | (?P<open>[\[{]) | (?P<close>[\]}]) | (?P<other>[\s\S])
''', re.VERBOSE)


def toml_shape_problem(text: str) -> str | None:
    """What makes `text` too costly to parse (a dotted key of too many parts, brackets nested too deeply), or
    None. Dotted runs are counted wherever they are (a float is two parts), so nothing TOML reads as a key escapes;
    strings are scanned as TOML scans them, so a quote inside a quoted key part cannot hide the rest."""
    parts, after_dot, depth, line = 0, False, 0, 1
    for m in _TOML_TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "part":
            parts = parts + 1 if after_dot else 1
            after_dot = False
            if parts > MAX_TOML_KEY_PARTS:
                return f"line {line}: a dotted key of more than {MAX_TOML_KEY_PARTS} parts"
        elif kind == "dot":
            after_dot = parts > 0
        elif kind != "space":
            parts, after_dot = 0, False
            depth = depth + 1 if kind == "open" else max(depth - 1, 0) if kind == "close" else depth
            if depth > MAX_TOML_NESTING:
                return f"line {line}: arrays or tables nested more than {MAX_TOML_NESTING} deep"
        line += m.group().count("\n") if kind in ("skip", "other") else 0
    return None


def read_toml_bounded(path: str | Path, error: type[Exception] = ConfigError, what: str = "config file",
                      max_bytes: int = MAX_TOML_BYTES) -> dict[str, Any]:
    """A TOML file as a dict, or `error` with one line: missing, unreadable, larger than `max_bytes`, not
    UTF-8, shaped to exhaust the parser (toml_shape_problem), malformed, or holding a number Python refuses."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # never more, whatever the file (/dev/zero included)
    except FileNotFoundError:
        raise error(f"{what} not found: {path.resolve()}") from None
    except IsADirectoryError:
        raise error(f"cannot read {what} {path}: it is a directory, not a {what}") from None
    except OSError as e:  # no permission
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise error(f"{path} is too large for a {what}: more than {max_bytes:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path} is not a TOML file: it is not a text file (not UTF-8)") from None
    problem = toml_shape_problem(text)
    if problem:
        raise error(f"{path} is not a TOML file this program reads: {problem}")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: TOML syntax error: {e}") from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        raise error(f"{path}: a value out of range: {str(e).split(':')[0]}") from None
    except RecursionError:  # cannot happen within MAX_TOML_NESTING; kept so it stays one line if it did
        raise error(f"{path} is not a TOML file: nested too deeply") from None


def read_toml(path: str | Path, error: type[Exception] = ConfigError, what: str = "config file") -> dict[str, Any]:
    """read_toml_bounded under its older name."""
    return read_toml_bounded(path, error, what)


def load_run_file(path: str | Path) -> tuple[TrainConfig, DataConfig]:
    """A run TOML: TrainConfig fields at the top level, a [model] table and an optional [data] table."""
    path = Path(path)
    raw = read_toml_bounded(path, ConfigError, "config file")
    data = raw.pop("data", {}) or {}
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"data must be a [data] table, got {data!r}")
        _reject_unknown("data", data, DataConfig)
        _check_types("data.", data, DataConfig)
        return TrainConfig.from_dict(raw), DataConfig(**data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_toml(cfg: TrainConfig, data: DataConfig | None = None) -> str:
    """The inverse of load_run_file: TrainConfig fields at the top level, [model], and [data] when given."""
    d = {k: v for k, v in cfg.to_dict().items() if v is not None}  # TOML has no null: absent = None
    if data is not None:
        d["data"] = {k: v for k, v in dataclasses.asdict(data).items() if v is not None}
    return dumps_toml(d)


def dumps_toml(tables: dict[str, Any]) -> str:
    """THE TOML writer of run files and study files (tomli_w): values, arrays, and tables of them."""
    import tomli_w

    return tomli_w.dumps(tables)
