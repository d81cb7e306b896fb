"""The one training loop: search trials, retraining and benchmarks all call `train(cfg, splits, ...)`.

`report(epoch, metrics)` is called after every epoch; it may raise (the HPO layer raises TrialPruned) or
return True to stop early (retraining stops at its target). Nothing here knows about optuna.
"""

from __future__ import annotations

import math
import pickle
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cifarnet.augment import AlbumentationsDataset, TorchAugment, normalize, seed_albumentations_worker
from cifarnet.config import TrainConfig
from cifarnet.data import ImageSet, Splits
from cifarnet.errors import CheckpointError, ConfigError, NonFiniteLossError
from cifarnet.files import write_atomic
from cifarnet.hardware import native_bf16
from cifarnet.fused import fuse_relu_batchnorm, keep_freed_memory
from cifarnet.model import build_model, whiten_first_conv
from cifarnet.tta import tta_logp

Report = Callable[[int, dict[str, Any]], Any]
CHECKPOINT_FORMAT = 1
PROGRESS_EVERY_S = 30.0  # seconds between on_progress calls within an epoch


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what to train): none of this changes the result on a given device."""

    device: str = "auto"  # "cpu", "cuda", "cuda:1" or "auto" (cuda when available)
    checkpoint: Path | None = None  # written atomically after every epoch
    resume: bool = False  # continue from `checkpoint` if it exists
    loader_workers: int = 2  # DataLoader processes for the albumentations backend
    progress: bool | None = None  # per-epoch progress bar (tqdm) on stderr; None = only when stderr is a TTY
    # Called with {epoch, epochs, step, steps, loss, eta_s} at most every PROGRESS_EVERY_S seconds of an epoch:
    # progress lines for logs and workers, where no bar is drawn.
    on_progress: Callable[[dict[str, Any]], None] | None = None
    eval_batch_size: int = 1024
    # False: evaluate val/test after the last epoch only (benchmarks that need final figures; search trials and
    # retrains report every epoch).
    evaluate_every_epoch: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, Any]]  # metrics of every finished epoch, resumed ones included
    model: nn.Module  # the evaluated weights (the EMA when enabled)
    stopped_early: bool  # `report` asked to stop before cfg.epochs
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None


def precision(cfg: TrainConfig, device: torch.device | str) -> str:
    """"bf16" where the config asks for it and the device computes it natively, else "fp32" (see native_bf16)."""
    return "bf16" if cfg.bf16 and native_bf16(device) else "fp32"


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` of `total` (always reaches ~0 at the end)."""
    warm = max(1, round(cfg.warmup_frac * total)) if cfg.schedule != "linear" else 0
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, 1 - progress)  # onecycle's decay phase and plain linear


class _Trainer:
    def __init__(self, cfg: TrainConfig, splits: Splits, opts: RunOptions):
        self.cfg, self.splits, self.opts = cfg, splits, opts
        self.device = resolve_device(opts.device)
        self.bf16 = precision(cfg, self.device) == "bf16"
        self.steps_per_epoch = max(1, len(splits.train) // cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = build_model(cfg.model)
        if cfg.whiten:
            whiten_first_conv(self.model, splits.train.images)
        self.model.to(self.device, memory_format=self._memory_format)
        if not cfg.compile:  # the fused kernel is opaque to torch.compile; compiled models keep the native ops
            fuse_relu_batchnorm(self.model)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.net = self._maybe_compile(self.model)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(cfg, s, self.total_steps)
        )
        self.ema = None
        if cfg.ema_decay:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
            )
        self.augment = TorchAugment(cfg.aug_strength, 0.0 if cfg.alternate_flip else cfg.flip_p)
        # On a GPU the whole uint8 set (150 MB) lives on the device: no host-to-device copy per batch.
        on_gpu = self.device.type == "cuda" and cfg.aug_backend == "torch"
        self.train_images = splits.train.images.to(self.device) if on_gpu else splits.train.images
        self.train_labels = splits.train.labels.to(self.device) if on_gpu else splits.train.labels
        self.flip_half = self._flip_half(len(splits.train)) if cfg.alternate_flip else None

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    def _maybe_compile(self, model: nn.Module) -> nn.Module:
        if not self.cfg.compile:
            return model
        # On CUDA "reduce-overhead" captures CUDA graphs, which pay off for a model this small.
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        return torch.compile(model, mode=mode)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]  # a whitened first conv stays fixed
        self.decay_params = [p for p in params if p.ndim > 1]  # conv kernels; biases and BN are not decayed
        groups: list[dict[str, Any]] = [{"params": params}]
        if cfg.norm_lr_scale != 1.0:  # group 0 keeps cfg.lr: _decay_weights reads the schedule from it
            norm_params = [p for p in params if p.ndim <= 1]
            groups = [{"params": self.decay_params},
                      {"params": norm_params, "lr": cfg.lr * cfg.norm_lr_scale}]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=0.0)

    def _flip_half(self, n: int) -> torch.Tensor:
        """alternate_flip: the seeded half of the images mirrored in even epochs (the other half in odd ones)."""
        gen = torch.Generator().manual_seed(self._epoch_seed(0, 2))
        half = torch.zeros(n, dtype=torch.bool)
        half[torch.randperm(n, generator=gen)[: n // 2]] = True
        return half.to(self.train_images.device)

    @torch.no_grad()
    def _decay_weights(self) -> None:
        # Decoupled: shrink by weight_decay x (schedule factor), independent of the lr value.
        factor = self.scheduler.get_last_lr()[0] / self.cfg.lr
        torch._foreach_mul_(self.decay_params, 1 - self.cfg.weight_decay * factor)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _epoch_seed(self, epoch: int, stream: int) -> int:
        # Per-epoch seeds (not a running RNG state) make a resumed run identical to an uninterrupted one.
        return (self.cfg.seed * 1_000_003 + epoch * 7919 + stream) % 2**63

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg, n = self.cfg, len(self.splits.train)
        gen = torch.Generator().manual_seed(self._epoch_seed(epoch, 0))
        bs = min(cfg.batch_size, n)
        if cfg.aug_backend == "albumentations":
            yield from self._albumentations_batches(epoch, gen, bs)
            return
        aug_gen = torch.Generator(self.device).manual_seed(self._epoch_seed(epoch, 1))
        order = torch.randperm(n, generator=gen).to(self.train_images.device)
        for i in range(self.steps_per_epoch):
            idx = order[i * bs : (i + 1) * bs]
            flip = None if self.flip_half is None else self.flip_half[idx] ^ bool(epoch % 2)
            x = self.augment.from_uint8(self.train_images[idx], aug_gen, self.device, cfg.channels_last, flip)
            yield x, self.train_labels[idx].to(self.device, non_blocking=True)

    def _albumentations_batches(self, epoch: int, gen: torch.Generator, bs: int):
        train = self.splits.train
        dataset = AlbumentationsDataset(train.images, train.labels, self.cfg.aug_strength, self.cfg.flip_p)
        workers = self.opts.loader_workers
        dataset.reseed(self._epoch_seed(epoch, 1))  # used as is when workers == 0
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=bs, shuffle=True, drop_last=True, generator=gen, num_workers=workers,
            pin_memory=self.device.type == "cuda", worker_init_fn=seed_albumentations_worker if workers else None,
        )
        for images, labels in loader:
            yield normalize(images, self.device, self.cfg.channels_last), labels.to(self.device, non_blocking=True)

    def train_epoch(self, epoch: int, progress: "_Progress") -> dict[str, float]:
        self.net.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for step, (x, y) in enumerate(self._batches(epoch)):
            with self._autocast():
                logp = self.net(x)
                loss = F.cross_entropy(logp, y, label_smoothing=self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._decay_weights()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += loss.detach() * len(y)
            correct += (logp.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 0 or step == self.steps_per_epoch - 1:
                self._check_finite(loss_sum, epoch, step)
                progress.update(step + 1, self.steps_per_epoch, loss_sum.item() / seen)
        return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen, "train_images": seen}

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        value = loss_sum.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(epoch + 1, step, value)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state(self, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": history,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if _normalised(state.get("config")) != self.cfg.to_dict():
            raise ConfigError("checkpoint was written for a different config; refusing to resume it")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _normalised(config: Any) -> Any:
    """A stored config as this version writes it (fields added since take their defaults; per-stage switches
    written as one value become lists); anything unreadable is returned as is and compares unequal."""
    try:
        return TrainConfig.from_dict(config).to_dict()
    except (ConfigError, TypeError, AttributeError):
        return config


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ImageSet, device: torch.device | str = "cpu", *, tta_flip: bool = False,
    tta_shift: int = 0, bf16: bool = False, channels_last: bool = True, batch_size: int = 1024,
) -> dict[str, float]:
    """Accuracy and mean NLL of `model` on `data` (averaged over the test-time views when tta_flip/tta_shift)."""
    device = torch.device(device)
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(data), batch_size):
        x = normalize(data.images[i : i + batch_size], device, channels_last)
        y = data.labels[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logp = tta_logp(model, x, tta_flip, tta_shift)
        loss_sum += F.nll_loss(logp.float(), y, reduction="sum").item()
        correct += (logp.argmax(1) == y).sum().item()
    return {"acc": correct / len(data), "loss": loss_sum / len(data)}


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint or weights file this project wrote, loaded with `weights_only=True`: tensors and plain
    Python data only, so a crafted file cannot run code while it is read (torch refuses any other global)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # a plain pickle (not torch's zip) draws a protocol warning first
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's "Weights only load failed": a global outside its allowlist
        lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith("Check the doc")]
        raise CheckpointError(f"{path} is not a checkpoint written by cifarnet: refused to load it, it holds more "
                              f"than tensors and plain data ({lines[-1] if lines else 'unpickling refused'})") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as e:  # truncated, empty or not a torch file: torch raises many types for garbage
        detail = str(e).strip().split(". ")[0] if str(e).strip() else "file ended early"
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({type(e).__name__}: {detail})") from None
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path} is not a checkpoint written by cifarnet (no 'config' entry)")
    return state


def _evaluate_splits(trainer: _Trainer, splits: Splits) -> dict[str, float]:
    cfg, out = trainer.cfg, {}
    for name, data in (("val", splits.val), ("test", splits.test)):
        if data is not None and len(data):
            m = evaluate(trainer.eval_model, data, trainer.device, tta_flip=cfg.tta_flip, tta_shift=cfg.tta_shift,
                         bf16=trainer.bf16,
                         channels_last=cfg.channels_last, batch_size=trainer.opts.eval_batch_size)
            out[f"{name}_acc"], out[f"{name}_loss"] = m["acc"], m["loss"]
    return out


def train(cfg: TrainConfig, splits: Splits, report: Report | None = None, opts: RunOptions = RunOptions()) -> TrainResult:
    """Train `cfg` on `splits.train`, evaluating val/test after every epoch and calling `report`."""
    trainer = _Trainer(cfg, splits, opts)
    history: list[dict[str, Any]] = []
    start = 0
    if opts.resume and opts.checkpoint is not None and Path(opts.checkpoint).exists():
        state = load_checkpoint(opts.checkpoint)
        trainer.load_state(state)
        start, history = state["epoch"], list(state["history"])
    progress = _Progress(cfg.epochs, opts)
    stopped = False
    for epoch in range(start, cfg.epochs):
        progress.start_epoch(epoch, trainer.steps_per_epoch)
        t0 = time.perf_counter()
        metrics: dict[str, Any] = {"epoch": epoch + 1, **trainer.train_epoch(epoch, progress)}
        train_time = time.perf_counter() - t0
        if opts.evaluate_every_epoch or epoch + 1 == cfg.epochs:
            metrics.update(_evaluate_splits(trainer, splits))
        metrics.update(lr=trainer.scheduler.get_last_lr()[0], train_time_s=train_time,
                       eval_time_s=time.perf_counter() - t0 - train_time,
                       images_per_s=metrics["train_images"] / train_time)
        history.append(metrics)
        progress.end_epoch()
        if opts.checkpoint is not None:
            save_atomic(trainer.state(epoch + 1, history), opts.checkpoint)
        if report is not None and report(epoch + 1, metrics):
            stopped = epoch + 1 < cfg.epochs
            break
    return TrainResult(history=history, model=trainer.eval_model, stopped_early=stopped,
                       extra={"device": str(trainer.device), "steps_per_epoch": trainer.steps_per_epoch,
                              "precision": "bf16" if trainer.bf16 else "fp32"})


class _Progress:
    """An epoch's progress: a tqdm bar on stderr where one is wanted (a TTY by default), and the `on_progress`
    callback at most every PROGRESS_EVERY_S seconds, so long epochs are never silent in a log."""

    def __init__(self, epochs: int, opts: RunOptions):
        self.epochs, self.opts = epochs, opts
        self.show_bar = sys.stderr.isatty() if opts.progress is None else opts.progress
        self.bar: tqdm | None = None
        self.epoch, self.done = 0, 0
        self.t0 = self.last_call = 0.0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.epoch, self.done = epoch, 0
        self.t0 = self.last_call = time.perf_counter()
        if self.show_bar:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, file=sys.stderr,
                            dynamic_ncols=True, unit="step")

    def update(self, step: int, steps: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.done)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self.done = step
        now = time.perf_counter()
        if self.opts.on_progress is not None and now - self.last_call >= PROGRESS_EVERY_S:
            self.last_call = now
            self.opts.on_progress({"epoch": self.epoch + 1, "epochs": self.epochs, "step": step, "steps": steps,
                                   "loss": loss, "eta_s": (now - self.t0) / step * (steps - step)})

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def describe_progress(p: dict[str, Any]) -> str:
    """One progress line: where an epoch is and when it ends."""
    return (f"epoch {p['epoch']}/{p['epochs']}, step {p['step']}/{p['steps']}, loss {p['loss']:.4f}, "
            f"epoch ends in {p['eta_s']:.0f}s")
