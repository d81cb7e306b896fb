"""The objective: one trial = suggest a config -> reject it if too big -> train -> report every epoch.

What a trial leaves in storage (the conventions retraining and the dashboard read):
  user_attrs "config", "data", "params_count", "macs", "receptive_field", "device", "precision" (bf16 or fp32:
  bf16 only where the device computes it natively), "worker" (host:pid),
  all before training,
  "epoch_times" and "curve" (after every epoch), "pruned_at_epoch" (pruned), "fail_reason" (failed/rejected),
  "checkpoint" (path relative to the artifact store), "resumed_from_trial" and "resumed_at_epoch" (a re-run
  that continued a dead attempt's checkpoint, see hpo.running.checkpoints), "placement" (where Ray put the worker),
  intermediate values step = epoch (1-based) -> val_acc; the value = the best val_acc (maximised).

A study with [budget] rungs (budget-aware multi-fidelity): before its full run, a trial makes each rung's
complete cheaper run (its own full schedule, on that many images, scored once after its last epoch on the
validation split), reports rung i's val_acc at step RUNG_BASE**i and asks the pruner; the full run then
reports its best val_acc at step RUNG_BASE**len(rungs) (its per-epoch curve is recorded, not reported). Steps
1, 3, 9, ... are the rungs of optuna's SuccessiveHalvingPruner / HyperbandPruner with min_resource 1 and
reduction_factor 3. user_attrs "rungs" (one row per finished rung), "pruned_at_rung". A re-run of a dead
attempt keeps the rungs the attempt finished.

No trial is spent on a model over the study's max_params: the mapping narrows such a sample to fit
(hpo.definition.space.fit_widths; user_attr "fitted_widths" holds the widths the sampler chose).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from cifarnet.config import TrainConfig
from cifarnet.data import CIFAR10, Splits, make_splits
from cifarnet.errors import CifarNetError
from cifarnet.model import model_stats
from cifarnet.train import RunOptions, describe_progress, precision, resolve_device, train
from hpo.running.checkpoints import TrialCheckpoint, retry_history
from hpo.definition.space import apply_params, suggest_config
from hpo.running.study import INTERRUPTED_REASON, request_stop
from hpo.definition.study_file import RUNG_BASE, Rung, StudySpec

# Exceptions that fail one trial while the study goes on (all others stop the worker after recording why):
# NaN/inf loss and bad searched configs (CifarNetError), and a too-wide network on a small GPU.
TRIAL_ERRORS: tuple[type[BaseException], ...] = (CifarNetError, torch.OutOfMemoryError)
STOP_REASON = "stopped: another trial reached the study's target accuracy"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a trial (workers may be anywhere)
# Recorded on every trial this process runs; a Ray worker adds its node and assigned GPUs (hpo.running.ray_workers).
PLACEMENT: dict[str, Any] = {}


class Objective:
    """`study.optimize(Objective(spec, splits, opts, store))`; returns the best validation accuracy of a trial.
    `store` is the study's artifact folder on this machine, where each trial checkpoints (hpo.running.checkpoints)."""

    def __init__(self, spec: StudySpec, splits: Splits, opts: RunOptions, store: Path, cifar: CIFAR10 | None = None,
                 say: Callable[[str], None] | None = None):
        self.spec, self.splits, self.opts, self.store = spec, splits, opts, store
        self.say = say or (lambda line: None)  # progress lines: a trial starts, resumes, and every ~30 s of work
        self.device = str(resolve_device(opts.device))
        self.cifar = cifar  # the whole training pool, for the rungs' smaller subsets
        self._rung_splits: dict[int, Splits] = {}

    def __call__(self, trial: optuna.Trial) -> float:
        checkpoint = TrialCheckpoint.of(trial, self.store)
        try:
            value = self._run(trial, checkpoint)
        except optuna.TrialPruned:
            self._finished(checkpoint)
            raise
        except (Exception, KeyboardInterrupt) as e:  # record why before optuna marks the trial FAIL
            interrupted = isinstance(e, KeyboardInterrupt)
            trial.set_user_attr("fail_reason", INTERRUPTED_REASON if interrupted else _describe(e))
            if not interrupted:  # an interrupted trial is queued again and continues from its checkpoint
                self._finished(checkpoint)
            raise
        self._finished(checkpoint)
        return value

    def _finished(self, checkpoint: TrialCheckpoint) -> None:
        if not self.spec.workers.keep_checkpoints:
            checkpoint.remove()

    def _run(self, trial: optuna.Trial, checkpoint: TrialCheckpoint) -> float:
        spec = self.spec
        cfg = suggest_config(spec.space, trial, spec.base, spec.max_params)
        sampled = apply_params(spec.base, trial.params).model.widths
        if sampled != cfg.model.widths:
            trial.set_user_attr("fitted_widths", {"sampled": list(sampled), "trained": list(cfg.model.widths)})
        stats = model_stats(cfg.model)
        run_opts = dataclasses.replace(self.opts, on_progress=lambda p: self.say(
            f"trial {trial.number}: {describe_progress(p)}"))
        for key, value in {
            "config": cfg.to_dict(), "data": dataclasses.asdict(spec.data), "params_count": stats.params,
            "macs": stats.macs, "receptive_field": stats.receptive_field, "device": self.device,
            "precision": precision(cfg, self.device),
            "worker": WORKER_ID, **({"placement": PLACEMENT} if PLACEMENT else {}),
        }.items():
            trial.set_user_attr(key, value)
        if spec.rungs:
            self._run_rungs(trial, cfg, run_opts)  # raises TrialPruned where the pruner stops the trial
        reporter = EpochReporter(trial, spec, report_steps=not spec.rungs)
        trial.set_user_attr("checkpoint", checkpoint.relative(trial.number))
        resumed_from, finished = checkpoint.resume()
        if resumed_from is not None:
            trial.set_user_attr("resumed_from_trial", resumed_from)
            trial.set_user_attr("resumed_at_epoch", len(finished))
            self.say(f"trial {trial.number} resumes trial {resumed_from} at epoch {len(finished) + 1} of {cfg.epochs}")
        else:
            self.say(f"trial {trial.number} started{' its full run' if spec.rungs else ''}: {cfg.epochs} epochs, "
                     f"{stats.params:,} parameters, {_short(trial.params)}")
        for metrics in finished:  # the dead attempt's epochs, reported again: one continuous curve
            reporter(metrics["epoch"], metrics)
        opts = dataclasses.replace(run_opts, checkpoint=checkpoint.path, resume=resumed_from is not None)
        train(cfg, self.splits, reporter, opts)
        value = max(m["val_acc"] for m in reporter.curve)
        if spec.rungs:
            trial.report(value, step=RUNG_BASE ** len(spec.rungs))
        return value

    def _run_rungs(self, trial: optuna.Trial, cfg: TrainConfig, run_opts: RunOptions) -> None:
        done = _rungs_of_earlier_attempt(trial)
        rows: list[dict[str, Any]] = []
        for i, rung in enumerate(self.spec.rungs):
            if i >= len(done):
                self.say(f"trial {trial.number} rung {i}: {rung.epochs} epochs on {rung.train_size:,} images, "
                         f"{_short(trial.params)}")
            row = done[i] if i < len(done) else self._train_rung(i, rung, cfg, run_opts)
            rows.append(row)
            trial.set_user_attr("rungs", rows)
            trial.report(row["val_acc"], step=RUNG_BASE ** i)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_rung", i)
                raise optuna.TrialPruned(f"val_acc {row['val_acc']:.4f} at rung {i}")

    def _train_rung(self, i: int, rung: Rung, cfg: TrainConfig, run_opts: RunOptions) -> dict[str, Any]:
        """Rung i's complete run: `rung.epochs` with their own schedule on `rung.train_size` images, scored after
        the last epoch (no checkpoint: a rung is short, and a re-run repeats only an unfinished one)."""
        if rung.train_size not in self._rung_splits:
            if self.cifar is None:
                raise CifarNetError("this study has [budget] rungs: its objective needs the whole training pool")
            data = dataclasses.replace(self.spec.data, train_size=rung.train_size)
            self._rung_splits[rung.train_size] = make_splits(self.cifar, data)
        opts = dataclasses.replace(run_opts, checkpoint=None, resume=False, evaluate_every_epoch=False)
        history = train(cfg.replace(epochs=rung.epochs), self._rung_splits[rung.train_size], None, opts).history
        return {"rung": i, "epochs": rung.epochs, "train_size": rung.train_size, "val_acc": history[-1]["val_acc"],
                "train_time_s": sum(m["train_time_s"] for m in history),
                "eval_time_s": sum(m["eval_time_s"] for m in history)}


def _short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _rungs_of_earlier_attempt(trial: optuna.Trial) -> list[dict[str, Any]]:
    """The rungs the newest earlier attempt of this trial finished (a re-run after its worker died)."""
    earlier = retry_history(trial)
    if not earlier:
        return []
    attempts = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
    return list(attempts[earlier[-1]].user_attrs.get("rungs", [])) if earlier[-1] in attempts else []


class EpochReporter:
    """The `report(epoch, metrics)` callback of cifarnet.train.train for one trial.

    Stores the curve as it grows (the dashboard shows running trials), reports val_acc for pruning, raises
    TrialPruned when the pruner says so, and handles the study-wide stop flag (see hpo.running.study).
    """

    def __init__(self, trial: optuna.Trial, spec: StudySpec, report_steps: bool = True):
        self.trial, self.spec, self.report_steps = trial, spec, report_steps
        self.curve: list[dict[str, Any]] = []
        self.epoch_times: list[float] = []

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> None:
        trial, val_acc = self.trial, metrics["val_acc"]
        self.curve.append(dict(metrics))
        self.epoch_times.append(metrics["train_time_s"] + metrics["eval_time_s"])
        trial.set_user_attr("curve", self.curve)
        trial.set_user_attr("epoch_times", self.epoch_times)
        if self.report_steps:
            trial.report(val_acc, step=epoch)
        target = self.spec.target_accuracy
        if self.spec.stop_on_target and target is not None and val_acc >= target:
            # This trial finishes its budget (its value stays comparable); every other worker stops.
            request_stop(trial.study, f"trial {trial.number} reached val_acc {val_acc:.4f} >= {target}")
            return
        if self.report_steps and trial.should_prune():
            trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"val_acc {val_acc:.4f} at epoch {epoch}")
        if self.spec.stop_on_target and trial.study.user_attrs.get("stop_requested"):
            trial.set_user_attr("pruned_at_epoch", epoch)
            trial.set_user_attr("fail_reason", STOP_REASON)
            raise optuna.TrialPruned(STOP_REASON)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
