"""Per-trial Markdown notes and the per-epoch metrics table, as optuna-dashboard shows them.

`annotate_trial(trial, state, value, artifact_store)` runs once per trial from inside the objective, on the live
`optuna.Trial` (optuna-dashboard's `save_note` and optuna's `upload_artifact` both want a live trial): the
worker calls it as the objective ends, when the trial's fate is known. It reads only the trial's user_attrs
(conventions in hpo.running.objective). The learning curve itself is optuna-dashboard's own intermediate-value chart.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial, TrialState

from cifarnet.config import TrainConfig
from cifarnet.files import write_csv_atomic
from cifarnet.errors import ConfigError

CURVE_CSV = "curve.csv"


def annotate_trial(trial: optuna.Trial, state: TrialState, value: float | None = None,
                   artifact_store: Any | None = None) -> None:
    """Save the live trial's note as it ends in `state`; with a store and a recorded curve, upload curve.csv."""
    curve = trial.user_attrs.get("curve") or []
    frozen = optuna.trial.create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params=trial.params,
        distributions=trial.distributions, user_attrs=trial.user_attrs,
        intermediate_values={int(m["epoch"]): m["val_acc"] for m in curve})
    frozen.number = trial.number
    others = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    optuna_dashboard.save_note(trial, format_note(frozen, others))
    if artifact_store is not None and curve:
        with tempfile.TemporaryDirectory() as tmp:
            write_csv_atomic(curve, Path(tmp) / CURVE_CSV)
            upload_artifact(artifact_store=artifact_store, file_path=str(Path(tmp) / CURVE_CSV), study_or_trial=trial)


def outcome(trial: FrozenTrial) -> str:
    """One phrase for the trial's fate, e.g. "complete", "pruned at epoch 2", "pruned at rung 1" (a rung study's
    trials are stopped between complete short runs), "pruned before training"."""
    attrs, state = trial.user_attrs, trial.state
    if state == TrialState.PRUNED:
        if "pruned_at_rung" in attrs:
            return f"pruned at rung {attrs['pruned_at_rung']}"
        return f"pruned at epoch {attrs['pruned_at_epoch']}" if "pruned_at_epoch" in attrs else "pruned before training"
    return "failed" if state == TrialState.FAIL else state.name.lower()


def format_note(trial: FrozenTrial, others: list[FrozenTrial] = ()) -> str:
    """Markdown: fate (and why), model size, searched parameters, the full training config."""
    attrs = trial.user_attrs
    title = f"## Trial {trial.number}: {outcome(trial)}"
    if attrs.get("seed_baseline"):
        title += " (seed baseline: the original CifarNet)"
    lines = [title, "", _why(trial, others)]
    facts = _facts(trial)
    if facts:
        lines += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()]
    if trial.params:
        lines += ["", "### Searched parameters", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(trial.params.items())]
    if "config" in attrs:
        lines += ["", "### Training config", "", _config_summary(attrs["config"], attrs.get("data"))]
    return "\n".join(lines) + "\n"


def _why(trial: FrozenTrial, others: list[FrozenTrial]) -> str:
    attrs, curve, state = trial.user_attrs, trial.user_attrs.get("curve") or [], trial.state
    epochs = (attrs.get("config") or {}).get("epochs", "?")
    reason = attrs.get("fail_reason")
    if state == TrialState.FAIL:
        return f"**Failed:** {reason or 'no reason recorded'}"
    if state == TrialState.PRUNED and "pruned_at_rung" in attrs:
        rung = attrs["rungs"][-1]  # the rung it was stopped after
        return (f"**Pruned** at rung {attrs['pruned_at_rung']} ({rung['epochs']} epochs on {rung['train_size']:,} "
                f"images): val_acc {rung['val_acc']:.4f}; successive halving kept the better trials of that rung."
                + (f" Reason: {reason}." if reason else ""))
    if state == TrialState.PRUNED and "pruned_at_epoch" not in attrs:
        return f"**Pruned before training:** {reason or 'no reason recorded'}"
    if state == TrialState.PRUNED:
        epoch = attrs["pruned_at_epoch"]
        value = trial.intermediate_values.get(epoch, curve[-1]["val_acc"] if curve else float("nan"))
        peers = [t.intermediate_values[epoch] for t in others if epoch in t.intermediate_values]
        context = (f"; the {len(peers)} other finished trials that reached epoch {epoch} had median "
                   f"{statistics.median(peers):.4f} and best {max(peers):.4f} there") if peers else ""
        return f"**Pruned** at epoch {epoch} of {epochs}: val_acc {value:.4f}{context}." + (
            f" Reason: {reason}." if reason else "")
    if curve:
        best = max(curve, key=lambda m: m["val_acc"])
        return (f"**Best val_acc {best['val_acc']:.4f}** at epoch {best['epoch']} "
                f"({len(curve)} of {epochs} epochs trained).")
    return "No epochs recorded."


def _facts(trial: FrozenTrial) -> dict[str, str]:
    attrs, facts = trial.user_attrs, {}
    if "params_count" in attrs:
        facts["parameters"] = f"{attrs['params_count']:,}"
    if "fitted_widths" in attrs:  # narrowed to the study's max_params (hpo.definition.space.fit_widths)
        fitted = attrs["fitted_widths"]
        facts["widths fitted to max_params"] = f"sampled {fitted['sampled']}, trained {fitted['trained']}"
    if "macs" in attrs:
        facts["MACs per image"] = f"{attrs['macs'] / 1e6:.2f} M"
    if "receptive_field" in attrs:
        facts["receptive field"] = f"{attrs['receptive_field']} px"
    if attrs.get("epoch_times"):
        times = attrs["epoch_times"]
        facts["time per epoch"] = f"{sum(times) / len(times):.1f} s ({len(times)} epochs)"
    if "device" in attrs:
        facts["device"] = str(attrs["device"])
    if trial.value is not None:
        facts["objective (best val_acc)"] = f"{trial.value:.4f}"
    return facts


def _config_summary(cfg: dict[str, Any], data: dict[str, Any] | None) -> str:
    try:
        model = TrainConfig.from_dict(cfg).model.describe()
    except (ConfigError, TypeError):  # a config this version cannot read: show it raw
        model = str(cfg.get("model"))
    recipe = (f"{cfg.get('optimizer')} lr {_fmt(cfg.get('lr'))} momentum {_fmt(cfg.get('momentum'))} "
              f"wd {_fmt(cfg.get('weight_decay'))}, {cfg.get('schedule')} (warm-up {_fmt(cfg.get('warmup_frac'))}), "
              f"batch {cfg.get('batch_size')}, {cfg.get('epochs')} epochs")
    flip = "" if cfg.get("flip_p") is None else f", flip p {_fmt(cfg.get('flip_p'))}"
    extras = (f"aug {_fmt(cfg.get('aug_strength'))} ({cfg.get('aug_backend')}){flip}, label smoothing "
              f"{_fmt(cfg.get('label_smoothing'))}, EMA {_fmt(cfg.get('ema_decay'))}, TTA flip {cfg.get('tta_flip')} "
              f"shift {cfg.get('tta_shift', 0)}, alternate flip {cfg.get('alternate_flip', False)}, whiten "
              f"{cfg.get('whiten', False)}, norm lr x{_fmt(cfg.get('norm_lr_scale', 1.0))}, "
              f"bf16 {cfg.get('bf16')}, seed {cfg.get('seed')}")
    lines = [f"- model: {model}", f"- recipe: {recipe}", f"- extras: {extras}"]
    if data:
        lines.append("- data: " + ", ".join(f"{k} {v}" for k, v in data.items()))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
