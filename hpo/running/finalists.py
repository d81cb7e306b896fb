"""Finalists: the search's top trials run again with several seeds, and the best mean validation accuracy wins.

Why: the search scores each configuration once, with one seed, at a cheap fidelity, and its top trials often
differ by less than seed noise, so "the best trial" is partly luck. Before anything is retrained, the `top`
complete trials of the study run again with `seeds` training seeds on the validation split at the fidelity of
the study file's [finalists] table (the 10-epoch schedule of the retrain, on a training subset). The winner is
the finalist with the best mean validation accuracy (ties: the better search value); never a test figure.

The runs are trials of an optuna study of their own beside the search, "<name>-finalists" in the same storage
(optuna-dashboard shows it): each is an enqueued trial carrying its source trial's parameters (user_attrs
"finalist_of" and "finalist_seed"), scored by the search's own objective, so a finalist is exactly the
configuration that was searched. A run that is interrupted runs again next time; finished ones are kept, so
`hpo study finalists` resumes. The result is recorded on the search study (user_attr "finalists", and a
study note in optuna-dashboard): `hpo study status`, `hpo report` and `hpo retrain` read it from there.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import sys
from dataclasses import dataclass
from typing import Any, Iterable, TextIO

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from cifarnet.data import load_cifar10, make_splits
from cifarnet.hardware import now_iso
from cifarnet.train import RunOptions
from hpo.definition.paths import study_artifact_dir
from hpo.definition.study_file import FinalistSpec, StudySpec
from hpo.errors import HPOError
from hpo.running.objective import TRIAL_ERRORS, Objective
from hpo.running.study import STUDY_UID, load_spec, load_study, with_lock_retry
from hpo.storage import open_storage

FINALISTS_ATTR = "finalists"  # the record on the search study
DEFAULT = FinalistSpec()  # used when the study file has no [finalists] table


@dataclass(frozen=True)
class FinalistOptions:
    data_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    out: TextIO | None = None  # progress lines (default: stdout)


def finalist_study_name(name: str) -> str:
    return f"{name}-finalists"


def run_finalists(storage_url: str, name: str, opts: FinalistOptions = FinalistOptions()) -> dict[str, Any]:
    """Run (or resume) the finalists of study `name`, record the result on it and return the record."""
    study = load_study(storage_url, name)
    spec = dataclasses.replace(load_spec(study), storage=storage_url)
    plan = spec.finalists or DEFAULT
    top = top_trials(study.get_trials(deepcopy=False), plan.top)
    if not top:
        raise HPOError(f"study {name!r} has no complete trial: nothing to choose finalists from")
    fidelity = finalist_fidelity(spec, plan)
    finals = repeat_trials(study, fidelity, top, range(plan.seeds), opts, label="finalist")
    record = finalists_record(top, finals, plan, fidelity)
    study.set_user_attr(FINALISTS_ATTR, record)
    _note(study, record)
    return record


def repeat_trials(search: optuna.Study, spec: StudySpec, sources: list[FrozenTrial], seeds: Iterable[int],
                  opts: FinalistOptions, label: str) -> optuna.Study:
    """Each source trial's configuration trained again with each seed, as enqueued trials of the study
    `spec.name` in the search's storage, scored by the search's objective at `spec`'s fidelity (its rungs
    too, with no pruner); pairs already complete there are kept. Returns that study."""
    out = opts.out or sys.stdout
    if opts.threads:
        torch.set_num_threads(opts.threads)
    optuna.logging.set_verbosity(logging.WARNING)
    repeats = _repeat_study(spec, search)
    cifar = load_cifar10(opts.data_dir)
    splits = make_splits(cifar, spec.data)
    store = study_artifact_dir(search.user_attrs, spec.storage, spec.artifact_dir)
    run_opts = RunOptions(device=opts.device, progress=False, loader_workers=0)
    todo = [(t, seed) for t in sources for seed in seeds if _result(repeats, t.number, seed) is None]
    for i, (trial, seed) in enumerate(todo, 1):
        seeded = dataclasses.replace(spec, base=spec.base.replace(seed=seed))
        repeats.enqueue_trial(trial.params, user_attrs={"finalist_of": trial.number, "finalist_seed": seed})
        objective = Objective(seeded, splits, run_opts, store, cifar,
                              say=lambda line: print(line, file=out, flush=True))
        repeats.optimize(objective, n_trials=1, catch=TRIAL_ERRORS)
        value = _result(repeats, trial.number, seed)
        shown = f"val_acc {value:.4f}" if value is not None else "failed"
        print(f"{label} {i}/{len(todo)}: trial {trial.number} seed {seed}: {shown}", file=out, flush=True)
    return repeats


def top_trials(trials: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The k complete trials with the best search values (ties: the earlier trial)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(done, key=lambda t: (-t.value, t.number))[:k]


def finalist_fidelity(spec: StudySpec, plan: FinalistSpec) -> StudySpec:
    """The search spec at the finalists' fidelity: epochs and training subset from [finalists]."""
    base = spec.base.replace(epochs=plan.epochs or spec.base.epochs)
    data = dataclasses.replace(spec.data, train_size=plan.train_size or spec.data.train_size)
    return dataclasses.replace(spec, name=finalist_study_name(spec.name), base=base, data=data, rungs=(),
                               stop_on_target=False)


def _repeat_study(spec: StudySpec, search: optuna.Study) -> optuna.Study:
    storage = open_storage(spec.storage)
    repeats = with_lock_retry(lambda: optuna.create_study(
        storage=storage, study_name=spec.name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner()))
    repeats.set_user_attr("repeats_of", search.study_name)
    repeats.set_user_attr(STUDY_UID, f"{search.user_attrs[STUDY_UID]}-{spec.name}")  # own checkpoint folder
    return repeats


def _result(finals: optuna.Study, number: int, seed: int) -> float | None:
    for t in finals.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("finalist_of") == number and t.user_attrs.get("finalist_seed") == seed:
            return t.value
    return None


def finalists_record(top: list[FrozenTrial], finals: optuna.Study, plan: FinalistSpec,
                     fidelity: StudySpec) -> dict[str, Any]:
    """Each finalist's validation accuracies by seed and their mean; the winner and why."""
    rows = []
    for t in top:
        vals = [_result(finals, t.number, seed) for seed in range(plan.seeds)]
        done = [v for v in vals if v is not None]
        rows.append({"trial": t.number, "search_val_acc": t.value, "val_acc": vals,
                     "mean_val_acc": statistics.fmean(done) if done else None,
                     "params_count": t.user_attrs.get("params_count")})
    ranked = sorted((r for r in rows if r["mean_val_acc"] is not None and None not in r["val_acc"]),
                    key=lambda r: (-r["mean_val_acc"], -r["search_val_acc"], r["trial"]))
    winner = ranked[0] if ranked else None
    why = "" if winner is None else (
        f"best mean validation accuracy {winner['mean_val_acc']:.4f} over {plan.seeds} seed(s) at "
        f"{fidelity.base.epochs} epochs x {fidelity.data.train_size or 'all'} training images among the top "
        f"{len(top)} trials of the search")
    return {"top": plan.top, "seeds": plan.seeds, "epochs": fidelity.base.epochs,
            "train_size": fidelity.data.train_size, "val_size": fidelity.data.val_size, "rows": rows,
            "winner": winner["trial"] if winner else None, "why": why, "study": finals.study_name,
            "finished": now_iso()}


def _note(study: optuna.Study, record: dict[str, Any]) -> None:
    """The finalists table as the study's note in optuna-dashboard."""
    import optuna_dashboard

    lines = [f"## Finalists ({record['seeds']} seeds, {record['epochs']} epochs x "
             f"{record['train_size'] or 'all'} training images, validation split)", "",
             "| trial | search val_acc | val_acc by seed | mean | parameters |", "|---|---|---|---|---|"]
    for r in record["rows"]:
        vals = ", ".join("-" if v is None else f"{v:.4f}" for v in r["val_acc"])
        mean = "-" if r["mean_val_acc"] is None else f"{r['mean_val_acc']:.4f}"
        mark = " **winner**" if r["trial"] == record["winner"] else ""
        lines.append(f"| {r['trial']}{mark} | {r['search_val_acc']:.4f} | {vals} | {mean} | "
                     f"{r['params_count'] or '-'} |")
    lines += ["", f"Winner: trial {record['winner']} ({record['why']}); `hpo retrain` retrains it by default."
              if record["winner"] is not None else "No winner yet: some finalist runs did not finish."]
    optuna_dashboard.save_note(study, "\n".join(lines))


def finalists_due(study_or_name: str, storage: str | None, opts: FinalistOptions) -> dict[str, Any] | None:
    """`hpo retrain` without --trial: run the finalists first when the study file has a [finalists] table and
    none are recorded (or an interrupted run left them unfinished); the record, or None when not asked for."""
    from hpo.definition.paths import locate_study

    name, url = locate_study(study_or_name, storage)
    study = load_study(url, name)
    if "study_file" not in study.user_attrs or load_spec(study).finalists is None or recorded_winner(study):
        return None
    print(f"finalists of {name!r} first (its study file asks for them; hpo retrain --no-finalists skips them)",
          file=opts.out or sys.stdout, flush=True)
    return run_finalists(url, name, opts)


def recorded_winner(study: optuna.Study) -> tuple[int, str] | None:
    """The finalists' winner recorded on the study and why, if finalists ran."""
    record = study.user_attrs.get(FINALISTS_ATTR)
    if not isinstance(record, dict) or record.get("winner") is None:
        return None
    return int(record["winner"]), str(record.get("why", ""))
