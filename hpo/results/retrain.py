"""Retrain a study's best (or a chosen) trial on all training images until it reaches a target test accuracy.

What is retrained is exactly what was searched: the config is rebuilt by the search's own mapping
(`hpo.definition.space.suggest_config` replaying the trial's parameters through `optuna.trial.FixedTrial`) from the base
recipe stored in the study itself, and checked against the config the trial recorded. Only the budget differs:
the LR schedule is sized for `max_epochs` (epochs = max_epochs), and the target only stops training at the first
epoch whose test accuracy reaches it; it changes nothing in the schedule.

The run folder holds final and best weights, config.toml, metrics (JSON and CSV), a learning-curve plot and a
checkpoint written after every epoch, so an interrupted retrain resumes from its last finished epoch and ends
where an uninterrupted one would. The outcome is recorded on the study as its own record (hpo.results.retrain_records: one
user_attr per run, so a short test retrain never replaces an earlier one) and the files go to the study's
optuna artifact store.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from cifarnet.config import DataConfig, TrainConfig
from cifarnet.errors import ConfigError
from cifarnet.files import write_atomic, write_csv_atomic, write_json_atomic
from cifarnet.hardware import now_iso
from cifarnet.redact import hide_passwords
from cifarnet.run import check_resumable, train_to_dir
from cifarnet.train import Report, RunOptions, load_checkpoint
from cifarnet.weights import save_weights
from hpo.errors import HPOError
from hpo.definition.paths import locate_study, stored_artifact_dir, study_artifact_dir
from hpo.results.retrain_records import new_record_key, retrain_records
from hpo.results.plots import learning_curve_figure
from hpo.running.finalists import recorded_winner
from hpo.definition.space import suggest_config
from hpo.running.study import load_study
from hpo.definition.study_file import StudySpec, spec_from_dict

# The only fields a retrain may change relative to the searched trial: the schedule's length, the seed, and the
# evaluation's test-time views (they change nothing that is trained).
REPLAY_FREE = ("epochs", "seed", "tta_flip", "tta_shift")
ARTIFACT_FILES = ("final.pt", "best.pt", "config.toml", "metrics.json", "metrics.csv", "learning_curve.html")


class RetrainError(HPOError):
    """The study, trial or run folder cannot be retrained as asked."""


@dataclass(frozen=True)
class RetrainOptions:
    storage: str | None = None  # storage URL; default: the study file's, else hpo.definition.study_file.DEFAULT_STORAGE
    trial: int | None = None  # trial number; None = the finalists' winner when finalists ran, else the best trial
    finalists: bool = True  # False: without --trial, the best search trial even where finalists ran
    # Test accuracy to stop at. Not the study's target_accuracy: that one is a validation accuracy after the
    # short per-trial budget, this one is the final figure on the 10k test set. None: the study file's [retrain].
    target: float | None = None
    max_epochs: int | None = None  # the LR schedule is sized for this many epochs; None: the study file's [retrain]
    out: Path | None = None  # run folder; None = runs/retrain/<study>/trial<N> under the cwd
    resume: bool = False  # continue the run folder's checkpoint
    seed: int | None = None  # training seed; None = the trial's
    data_dir: str | None = None  # CIFAR-10 folder; None = $CIFAR10_DIR
    device: str = "auto"
    progress: bool | None = None  # per-epoch progress bar; None = when stderr is a TTY
    on_progress: Callable[[dict[str, Any]], None] | None = None  # progress lines (cifarnet.train.RunOptions)

    def __post_init__(self) -> None:
        if self.max_epochs is not None and self.max_epochs < 1:
            raise RetrainError(f"--max-epochs must be >= 1, got {self.max_epochs}")
        if self.target is not None and not 0 < self.target <= 1:
            raise RetrainError(f"--target must be a test accuracy in (0, 1], got {self.target}")


@dataclass(frozen=True)
class RetrainPlan:
    """Everything decided before training starts (printed by the CLI, checked by the tests)."""

    study: optuna.Study
    trial: FrozenTrial
    spec: StudySpec  # rebuilt from the study's stored "study_file"
    cfg: TrainConfig  # the trial's config with epochs = max_epochs (and the chosen seed)
    data: DataConfig  # all training images, the full test set
    target: float
    out: Path
    artifact_dir: Path
    options: RetrainOptions
    storage_url: str = ""  # where the study lives: stored paths are relative to a SQLite database's folder
    reason: str = ""  # why this trial (the finalists' winner, the best search value, asked for)

    @property
    def schedule_note(self) -> str:
        return (f"schedule sized for --max-epochs {self.cfg.epochs} (epochs = {self.cfg.epochs}); the target "
                f"{self.target:g} only stops training early and changes nothing in the schedule")


@dataclass(frozen=True)
class RetrainResult:
    status: str  # "reached" | "missed"
    study: str
    trial: int
    target: float
    max_epochs: int  # the schedule's length
    epochs_run: int
    epochs_to_target: int | None  # first epoch whose test accuracy reached the target
    best_test_acc: float
    best_epoch: int
    final_test_acc: float
    run_dir: str
    seed: int
    schedule: str
    artifacts: dict[str, str] = field(default_factory=dict)  # file name -> optuna artifact id
    artifact_dir: str = ""
    record_key: str = ""  # the study user_attr holding this run's record (hpo.results.retrain_records)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain_best(study_or_name: str, options: RetrainOptions = RetrainOptions(),
                 report: Report | None = None) -> RetrainResult:
    """Plan and run a retrain: see `prepare_retrain` and `run_retrain`."""
    return run_retrain(prepare_retrain(study_or_name, options), report)


def prepare_retrain(study_or_name: str, options: RetrainOptions = RetrainOptions()) -> RetrainPlan:
    """Find the study and trial, replay its config, and decide target, run folder and artifact store."""
    study, url = open_study(study_or_name, options.storage)
    raw = study.user_attrs.get("study_file")
    if not isinstance(raw, dict):
        raise RetrainError(f"study {study.study_name!r} has no 'study_file' user_attr: it was not created by "
                           f"`hpo study start`, so its search space and base recipe are unknown")
    spec = spec_from_dict(raw)
    if spec.name != study.study_name:  # the name becomes a folder below: only a validated one may
        raise RetrainError(f"study {study.study_name!r} stores the study file of {spec.name!r}; refusing to use it")
    trial, reason = choose_trial(study, options)
    cfg = replay_config(spec, trial)
    seed = options.seed if options.seed is not None else trial.user_attrs["config"].get("seed", cfg.seed)
    max_epochs = options.max_epochs or spec.retrain.max_epochs
    views = {k: v for k, v in {"tta_flip": spec.retrain.tta_flip, "tta_shift": spec.retrain.tta_shift}.items()
             if v is not None}
    cfg = cfg.replace(epochs=max_epochs, seed=seed, **views)
    out = Path(options.out or Path("runs/retrain") / study.study_name / f"trial{trial.number}").resolve()
    if out.exists() and not out.is_dir():  # refused before a record of the retrain is written on the study
        raise RetrainError(f"--out {out} is a file, not a run folder: choose another --out")
    if not options.resume and (out / "checkpoint.pt").exists():
        raise RetrainError(f"{out} already holds a retrain checkpoint: pass --resume to continue it, "
                           f"or choose another --out")
    if options.resume:
        check_resumable(out / "checkpoint.pt", cfg)  # names what differs: another trial, seed or --max-epochs
    artifact_dir = study_artifact_dir(study.user_attrs, url, spec.artifact_dir or Path("artifacts") / study.study_name)
    data = DataConfig(train_size=spec.retrain.train_size, val_size=0, test_size=None)
    target = options.target if options.target is not None else spec.retrain.target
    return RetrainPlan(study=study, trial=trial, spec=spec, cfg=cfg, data=data, target=float(target), out=out, artifact_dir=artifact_dir, options=options,
                       storage_url=url, reason=reason)


def choose_trial(study: optuna.Study, options: RetrainOptions) -> tuple[FrozenTrial, str]:
    """The trial to retrain and why: --trial; else the finalists' winner (hpo.running.finalists) when they ran
    and options.finalists; else the best search trial."""
    if options.trial is not None:
        return pick_trial(study, options.trial), "asked for with --trial"
    winner = recorded_winner(study) if options.finalists else None
    if winner is not None:
        return pick_trial(study, winner[0]), f"the finalists' winner: {winner[1]}"
    best = pick_trial(study, None)
    why = "finalists skipped (--no-finalists)" if not options.finalists and recorded_winner(study) else (
        "no finalists ran")
    return best, f"the best search value ({why})"


def open_study(study_or_name: str, storage: str | None = None) -> tuple[optuna.Study, str]:
    """A studies/*.toml path (its name and storage, unless `storage` overrides) or a study name in `storage`;
    returns the study and its storage URL."""
    name, url = locate_study(study_or_name, storage)
    return load_study(url, name), url


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial `number`, which must be COMPLETE; None = the best trial."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    if number is None:
        if not complete:
            raise RetrainError(f"study {study.study_name!r} has no COMPLETE trial to retrain")
        return study.best_trial
    if number not in trials:
        last = f" (trials are 0..{max(trials)})" if trials else " (it has no trials)"
        raise RetrainError(f"study {study.study_name!r} has no trial {number}{last}")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise RetrainError(f"trial {number} of study {study.study_name!r} is {trial.state.name}, not COMPLETE: "
                           f"only complete trials can be retrained")
    return trial


def replay_config(spec: StudySpec, trial: FrozenTrial) -> TrainConfig:
    """The search's own mapping applied to the trial's parameters, checked against what the trial trained."""
    try:
        cfg = suggest_config(spec.space, FixedTrial(trial.params, trial.number), spec.base, spec.max_params)
    except ValueError as e:  # FixedTrial: a searched parameter the trial never sampled (the space changed)
        raise RetrainError(f"trial {trial.number}'s parameters do not replay in the study's space: {e}") from None
    stored = trial.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise RetrainError(f"trial {trial.number} has no 'config' user_attr to check the replayed config against")
    try:  # a field added since the trial ran takes its default, which keeps the old behaviour (results/quick)
        stored = TrainConfig.from_dict(stored).to_dict()
    except ConfigError as e:
        raise RetrainError(f"trial {trial.number}'s stored config does not load in this version: {e}") from None
    replayed = {k: v for k, v in cfg.to_dict().items() if k not in REPLAY_FREE}
    searched = {k: v for k, v in stored.items() if k not in REPLAY_FREE}
    if replayed != searched:
        diff = sorted(k for k in replayed.keys() | searched.keys() if replayed.get(k) != searched.get(k))
        raise RetrainError(f"replaying trial {trial.number} does not give the config it trained (differs in: "
                           f"{', '.join(diff)}); refusing to retrain something that was not searched")
    return cfg


def run_retrain(plan: RetrainPlan, report: Report | None = None) -> RetrainResult:
    """Train until the target or max epochs, write the run folder, upload it and record the outcome as its own
    record on the study (earlier retrains keep theirs; a resumed run continues the record of its folder)."""
    run_dir = stored_artifact_dir(plan.out, plan.storage_url)  # portable: relative to a SQLite database's folder
    # One record per run folder: a resumed run, whether it was interrupted, killed, failed or had already ended
    # (a script that always passes --resume), continues the record of its folder instead of adding one.
    same_run = [r for r in retrain_records(plan.study) if r.get("run_dir") == run_dir] if plan.options.resume else []
    key = same_run[-1]["key"] if same_run else new_record_key()
    started = same_run[-1].get("started", now_iso()) if same_run else now_iso()
    record = {"trial": plan.trial.number, "target": plan.target, "max_epochs": plan.cfg.epochs, "run_dir": run_dir,
              "schedule": plan.schedule_note, "started": started}
    plan.study.set_user_attr(key, {**record, "status": "running"})
    try:
        history = train_until_target(plan, report)
    except KeyboardInterrupt:
        plan.study.set_user_attr(key, {**record, "status": "interrupted"})  # `--resume` continues this record
        raise
    except Exception as e:  # the study must not say "running" for a retrain that ended
        _record_failure(plan, key, record, e)
        raise
    result = _result(plan, history)
    _finish_run_folder(plan, history, result)
    artifacts = upload_run(plan)
    result = RetrainResult(**{**result.to_dict(), "artifacts": artifacts, "artifact_dir": str(plan.artifact_dir),
                              "record_key": key})
    write_json_atomic(result.to_dict(), plan.out / "retrain.json")
    curve = {m: [h.get(m) for h in history] for m in ("test_acc", "train_acc")}
    # Both folders as the study stores paths (hpo.definition.paths): relative to a SQLite database's folder, so another
    # machine (the dashboard's, a worker's) finds them in its copy of the shared store.
    plan.study.set_user_attr(key, {**result.to_dict(), "run_dir": run_dir, "started": started, "finished": now_iso(),
                                   "artifact_dir": stored_artifact_dir(plan.artifact_dir, plan.storage_url),
                                   "curve": curve})
    return result


def _record_failure(plan: RetrainPlan, key: str, record: dict[str, Any], error: BaseException) -> None:
    reason = f"{type(error).__name__}: {error}"
    try:
        plan.study.set_user_attr(key, {**record, "status": "failed", "reason": hide_passwords(reason),
                                       "finished": now_iso()})
    except Exception as e:  # e.g. the storage itself failed; the original error is the one to report
        print(f"warning: could not record the failed retrain in the study ({type(e).__name__})", file=sys.stderr)


def train_until_target(plan: RetrainPlan, report: Report | None = None) -> list[dict[str, Any]]:
    """The one training loop, stopped by `report` at the first epoch whose test accuracy reaches the target."""
    checkpoint = plan.out / "checkpoint.pt"
    if plan.options.resume and checkpoint.exists():
        state = load_checkpoint(checkpoint)  # its config matches: prepare_retrain checked it
        save_best_weights(state, plan.out)  # in case the kill fell between the checkpoint and best.pt
        # Killed after the last epoch's checkpoint but before training returned: nothing is left to train.
        if _is_done(state["history"], plan.target, plan.cfg.epochs):
            return list(state["history"])

    def on_epoch(epoch: int, metrics: dict[str, Any]) -> bool:
        save_best_weights(load_checkpoint(checkpoint), plan.out)  # the checkpoint of this epoch is on disk
        if report is not None:
            report(epoch, metrics)
        return metrics["test_acc"] >= plan.target

    opts = RunOptions(device=plan.options.device, checkpoint=checkpoint, resume=plan.options.resume,
                      progress=plan.options.progress, on_progress=plan.options.on_progress)
    result, _ = train_to_dir(plan.cfg, plan.data, plan.out, data_dir=plan.options.data_dir, opts=opts,
                             report=on_epoch, command=" ".join(sys.argv))
    return result.history


def _is_done(history: list[dict[str, Any]], target: float, epochs: int) -> bool:
    return len(history) >= epochs or any(h["test_acc"] >= target for h in history)


def save_best_weights(state: dict[str, Any], out: Path) -> None:
    """best.pt <- this checkpoint when its epoch has the highest test accuracy so far (first one on ties).

    Called after every epoch, and again on resume, so a kill between checkpoint and best.pt loses nothing.
    """
    accs = [h["test_acc"] for h in state["history"]]
    if accs and accs.index(max(accs)) == len(accs) - 1:
        save_weights(state, out / "best.pt")


def _result(plan: RetrainPlan, history: list[dict[str, Any]]) -> RetrainResult:
    accs = [h["test_acc"] for h in history]
    reached = [h["epoch"] for h in history if h["test_acc"] >= plan.target]
    best = accs.index(max(accs))
    return RetrainResult(
        status="reached" if reached else "missed", study=plan.study.study_name, trial=plan.trial.number,
        target=plan.target, max_epochs=plan.cfg.epochs, epochs_run=len(history),
        epochs_to_target=reached[0] if reached else None, best_test_acc=accs[best],
        best_epoch=history[best]["epoch"], final_test_acc=accs[-1], run_dir=str(plan.out), seed=plan.cfg.seed,
        schedule=plan.schedule_note,
    )


def _finish_run_folder(plan: RetrainPlan, history: list[dict[str, Any]], result: RetrainResult) -> None:
    """final.pt, metrics.json (+ the outcome), metrics.csv and the learning curve, from the final checkpoint."""
    save_weights(load_checkpoint(plan.out / "checkpoint.pt"), plan.out / "final.pt")
    metrics_path = plan.out / "metrics.json"
    record = _read_json(metrics_path)
    record.update(epochs=history, retrain={**result.to_dict(), "study": plan.study.study_name,
                                           "trial_params": plan.trial.params, "trial_value": plan.trial.value})
    write_json_atomic(record, metrics_path)
    write_csv_atomic(history, plan.out / "metrics.csv")
    write_learning_curve(history, plan.out / "learning_curve.html", target=plan.target, title=(
        f"Retrain of trial {plan.trial.number} of {plan.study.study_name}: {result.status} target "
        f"{plan.target:g} ({plan.schedule_note})"))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def write_learning_curve(history: list[dict[str, Any]], path: Path, *, target: float, title: str) -> None:
    """Accuracy and loss per epoch as one self-contained HTML file (plotly.js inlined: works offline)."""
    write_atomic(path, lambda tmp: learning_curve_figure(history, target, title).write_html(
        tmp, include_plotlyjs=True, full_html=True))


def upload_run(plan: RetrainPlan) -> dict[str, str]:
    """Upload the run's files to the study's artifact store; returns {artifact file name: artifact id}.

    Artifacts go on the study, not on the trial: optuna (and optuna-dashboard) refuse to attach anything to a
    finished trial, and the trial being retrained is COMPLETE. Names carry the trial number instead.
    """
    plan.artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(plan.artifact_dir)
    ids = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ARTIFACT_FILES:
            # upload_artifact names the artifact after the file, so stage a copy under the public name.
            staged = Path(tmp) / f"retrain-trial{plan.trial.number}-{name}"
            shutil.copyfile(plan.out / name, staged)
            ids[staged.name] = upload_artifact(artifact_store=store, file_path=str(staged), study_or_trial=plan.study)
    return ids

