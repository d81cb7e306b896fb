"""Per-trial Markdown notes and learning-curve artifacts, as optuna-dashboard shows them.

`annotate_trial(study, trial, artifact_store)` is what the study service calls once per trial: from the
objective with the live `optuna.Trial` (e.g. in a `finally:` after the conventional user_attrs are set), or as a
`study.optimize` callback with the finished `FrozenTrial` (`functools.partial(annotate_trial,
artifact_store=store)`; preferred: the final state is known, so "pruned" and "failed" are exact).
It reads only the trial's user_attrs (conventions in the team brief). `annotate_study` backfills a study.
"""

from __future__ import annotations

import csv
import json
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial, TrialState
# Private, but the only way to write a finished trial's note (the public save_note() needs a live Trial).
from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

from dashboard.chart import curve_svg

CURVE_SVG, CURVE_CSV = "learning_curve.svg", "curve.csv"


def annotate_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial,
                   artifact_store: Any | None = None) -> list[str]:
    """Save the trial's note; with a store and a recorded curve, upload learning_curve.svg and curve.csv.

    Returns the uploaded artifact ids (empty without a store or a curve).
    """
    frozen = trial if isinstance(trial, FrozenTrial) else study._storage.get_trial(trial._trial_id)
    others = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
              if t.number != frozen.number]
    _save_note(study, trial, frozen, format_note(frozen, others))
    curve = frozen.user_attrs.get("curve") or []
    if artifact_store is None or not curve:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        svg, table = Path(tmp) / CURVE_SVG, Path(tmp) / CURVE_CSV
        svg.write_text(curve_svg(curve, f"trial {frozen.number}: {outcome(frozen)}"))
        write_curve_csv(curve, table)
        return [_upload(study, trial, frozen, artifact_store, path) for path in (svg, table)]


def annotate_study(study: optuna.Study, artifact_store: Any | None = None) -> list[int]:
    """Annotate every finished trial that has no note yet (a study run before annotation was wired in);
    the numbers of the trials annotated."""
    notes = study._storage.get_study_system_attrs(study._study_id)
    todo = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
            and not get_note_from_system_attrs(notes, t._trial_id)["body"]]
    for t in todo:
        annotate_trial(study, t, artifact_store)
    return [t.number for t in todo]


def outcome(trial: FrozenTrial) -> str:
    """One phrase for the trial's fate, e.g. "complete", "pruned at epoch 2", "pruned before training"."""
    attrs, state = trial.user_attrs, _state(trial)
    if state == TrialState.PRUNED:
        return f"pruned at epoch {attrs['pruned_at_epoch']}" if "pruned_at_epoch" in attrs else "pruned before training"
    return "failed" if state == TrialState.FAIL else state.name.lower()


def _state(trial: FrozenTrial) -> TrialState:
    """The final state; for a live trial (annotated from inside the objective) what its user_attrs imply."""
    if trial.state.is_finished():
        return trial.state
    attrs = trial.user_attrs
    if "pruned_at_epoch" in attrs:
        return TrialState.PRUNED
    if "fail_reason" in attrs:
        return TrialState.FAIL
    return TrialState.COMPLETE if attrs.get("curve") else trial.state


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
    attrs, curve, state = trial.user_attrs, trial.user_attrs.get("curve") or [], _state(trial)
    epochs = (attrs.get("config") or {}).get("epochs", "?")
    reason = attrs.get("fail_reason")
    if state == TrialState.FAIL:
        return f"**Failed:** {reason or 'no reason recorded'}"
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
    m = cfg.get("model", {})
    model = (f"widths {m.get('widths')}, dilation {m.get('dilation')}, "
             f"{'residual' if m.get('residual') else 'no residual'}, "
             f"{'depthwise-separable' if m.get('depthwise') else 'plain'} convs")
    recipe = (f"{cfg.get('optimizer')} lr {_fmt(cfg.get('lr'))} momentum {_fmt(cfg.get('momentum'))} "
              f"wd {_fmt(cfg.get('weight_decay'))}, {cfg.get('schedule')} (warm-up {_fmt(cfg.get('warmup_frac'))}), "
              f"batch {cfg.get('batch_size')}, {cfg.get('epochs')} epochs")
    flip = "" if cfg.get("flip_p") is None else f", flip p {_fmt(cfg.get('flip_p'))}"
    extras = (f"aug {_fmt(cfg.get('aug_strength'))} ({cfg.get('aug_backend')}){flip}, label smoothing "
              f"{_fmt(cfg.get('label_smoothing'))}, EMA {_fmt(cfg.get('ema_decay'))}, TTA flip {cfg.get('tta_flip')} shift {cfg.get('tta_shift', 0)}, "
              f"bf16 {cfg.get('bf16')}, seed {cfg.get('seed')}")
    lines = [f"- model: {model}", f"- recipe: {recipe}", f"- extras: {extras}"]
    if data:
        lines.append("- data: " + ", ".join(f"{k} {v}" for k, v in data.items()))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_curve_csv(curve: list[dict[str, Any]], path: Path) -> None:
    """One row per epoch; optuna-dashboard shows .csv artifacts as a table."""
    columns = list(dict.fromkeys(k for m in curve for k in m))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(curve)


def _save_note(study: optuna.Study, trial: optuna.Trial | FrozenTrial, frozen: FrozenTrial, body: str) -> None:
    if isinstance(trial, optuna.Trial):
        optuna_dashboard.save_note(trial, body)
        return
    # save_note() wants a live Trial; notes are study system attrs, so a finished trial takes the same
    # versioned write the dashboard's own note editor uses.
    attrs = study._storage.get_study_system_attrs(study._study_id)
    version = get_note_from_system_attrs(attrs, frozen._trial_id)["version"] + 1
    save_note_with_version(study._storage, study._study_id, frozen._trial_id, version, body)


def _upload(study: optuna.Study, trial: optuna.Trial | FrozenTrial, frozen: FrozenTrial, store: Any,
            path: Path) -> str:
    if not frozen.state.is_finished():
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                               storage=study._storage)
    # A finished trial's system attrs are read-only; optuna-dashboard also lists a trial's artifacts
    # registered on the study under "dashboard:artifacts:<trial_id>:<artifact_id>".
    artifact_id = str(uuid.uuid4())
    mimetype = "image/svg+xml" if path.suffix == ".svg" else "text/csv"
    meta = {"artifact_id": artifact_id, "filename": path.name, "mimetype": mimetype, "encoding": None}
    with open(path, "rb") as f:
        store.write(artifact_id, f)
    study._storage.set_study_system_attr(study._study_id, f"dashboard:artifacts:{frozen._trial_id}:{artifact_id}",
                                         json.dumps(meta))
    return artifact_id
