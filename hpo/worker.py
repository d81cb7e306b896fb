"""Running a study: `start_study` (create/resume, then K local worker processes) and `run_worker` (one
process's trial loop; `hpo worker` runs it to join a study from another process or machine).

All workers share one storage and coordinate only through it:
- the run budget ("run_budget" study user_attr: first trial number, trials, deadline) set by `start_study`;
- the stop flag ("stop_requested"), raised when a trial reaches the target with stop_on_target;
- heartbeats: a trial whose worker died is failed and re-queued by the next worker to start a trial.
Each worker prints one line per finished trial (done/pruned/failed, best so far, ETA) and is quiet otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState

from cifarnet.errors import CifarNetError
from cifarnet.data import load_cifar10, make_splits, resolve_data_dir
from cifarnet.train import RunOptions, resolve_device
from hpo.errors import HPOError
from hpo.objective import TRIAL_ERRORS, Objective
from hpo.storage import Heartbeat, display_url, is_locked, open_storage
from hpo.study import (StudyStatus, best_completed, build_pruner, build_sampler, check_same_search, clear_stop,
                       create_or_resume, stop_requested, study_status)
from hpo.studyfile import StudySpec
from dashboard.notes import annotate_trial

_log = logging.getLogger(__name__)
LOCKED_PAUSE_S = 2.0  # back-off after SQLite stayed locked past its busy timeout


@dataclass(frozen=True)
class WorkerOptions:
    data_dir: str | None = None  # CIFAR-10 folder on this machine (default: $CIFAR10_DIR)
    device: str = "auto"
    workers: int = 1  # local processes sharing the cores
    threads: int | None = None  # torch threads per worker; None = this machine's cores // workers
    out: TextIO | None = None  # progress lines (default: stdout)


@dataclass(frozen=True)
class RunBudget:
    """What one `hpo study start` asked for; stored on the study so joining workers obey it too."""

    first_trial: int  # trials numbered from here on belong to this run
    n_trials: int | None
    deadline: float | None  # epoch seconds after which no trial starts
    started: float

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def start_study(spec: StudySpec, opts: WorkerOptions = WorkerOptions()) -> StudyStatus:
    """Create or resume the study, run `opts.workers` local workers until the budget is spent, summarise."""
    if opts.workers < 1 or (opts.threads is not None and opts.threads < 1):
        raise HPOError(f"--workers and --threads must be >= 1, got {opts.workers} and {opts.threads}")
    resolve_data_dir(opts.data_dir)  # fail before creating anything when the data is missing
    resolve_device(opts.device)
    optuna.logging.set_verbosity(logging.WARNING)  # "A new study created ..." is noise next to our lines
    study = create_or_resume(spec, open_storage(spec.storage))
    now = time.time()
    trials = study.get_trials(deepcopy=False)
    # Queued trials (the baseline of a new study, re-runs of dead trials) belong to this run.
    first = min([t.number for t in trials if t.state == TrialState.WAITING], default=len(trials))
    budget = RunBudget(first_trial=first, n_trials=spec.n_trials, deadline=now + spec.timeout if spec.timeout else None, started=now)
    study.set_user_attr("run_budget", budget.to_dict())
    clear_stop(study)  # an explicit start means "run again", even after an earlier run hit its target
    if opts.workers == 1:
        run_worker(spec, opts, seed_offset=0)
    else:
        _run_processes(spec, opts)
    return study_status(spec.storage, spec.name)


def _run_processes(spec: StudySpec, opts: WorkerOptions) -> None:
    # spawn, not fork: torch's thread pools and open database connections do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    opts = dataclasses.replace(opts, out=None)  # each child prints to the inherited stdout
    procs = [ctx.Process(target=_worker_process, args=(spec, opts, i), name=f"hpo-worker-{i}")
             for i in range(opts.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    finally:
        for p in procs:  # only on an interrupt of the parent: children got the same Ctrl-C
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode]
    if failed:
        raise HPOError(f"worker(s) stopped with an error: {', '.join(failed)}; see their messages above")


def _worker_process(spec: StudySpec, opts: WorkerOptions, index: int) -> None:
    # The child's version of hpo.cli.main's error handling: one line, never a traceback for expected errors.
    try:
        run_worker(spec, opts, seed_offset=index)
    except CifarNetError as e:
        print(f"error: worker {index}: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if os.environ.get("HPO_DEBUG"):
            raise
        print(f"error: worker {index}: unexpected {type(e).__name__}: {e} (set HPO_DEBUG=1 for the traceback)",
              file=sys.stderr)
        sys.exit(1)


def join_study(spec: StudySpec, opts: WorkerOptions = WorkerOptions()) -> StudyStatus:
    """`hpo worker`: join a study started elsewhere, under the budget its `hpo study start` stored."""
    run_worker(spec, opts, seed_offset=None)
    return study_status(spec.storage, spec.name)


def run_worker(spec: StudySpec, opts: WorkerOptions, seed_offset: int | None) -> int:
    """Run trials until the stored run budget is spent, the deadline passes or the stop flag is raised.
    Returns the number of trials this worker ran."""
    # One pool of cores shared by K processes: more threads than cores makes every worker crawl.
    threads = opts.threads or max(1, _cores() // opts.workers)
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(logging.ERROR)  # our one line per trial replaces optuna's log and tracebacks
    w = spec.workers
    storage = open_storage(spec.storage, Heartbeat(w.heartbeat_interval, w.grace_period, w.max_retry))
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=build_sampler(spec, seed_offset),
                                  pruner=build_pruner(spec))
    except KeyError:
        raise HPOError(f"no study {spec.name!r} in {display_url(spec.storage)}: start it with "
                       f"`hpo study start`, then join it with `hpo worker`") from None
    budget = _stored_budget(study, spec)
    splits = make_splits(load_cifar10(opts.data_dir), spec.data)
    run_opts = RunOptions(device=opts.device, progress=False, loader_workers=0 if threads == 1 else 2)
    objective = Objective(spec, splits, run_opts)
    callbacks = [Progress(budget, opts.out or sys.stdout), Annotator(study.user_attrs.get("artifact_dir") or spec.artifact_dir)]
    ran = 0
    while not _should_stop(study, budget):
        try:
            study.optimize(objective, n_trials=1, catch=TRIAL_ERRORS, callbacks=callbacks)
            ran += 1
        except optuna.exceptions.StorageInternalError as e:
            # SQLite stayed locked past its busy timeout: the trial in flight (if any) is left RUNNING and
            # is failed + re-queued through its stale heartbeat; this worker carries on.
            if not (is_locked(e) or is_locked(e.__cause__ or e)):
                raise
            time.sleep(LOCKED_PAUSE_S)
    return ran


def _stored_budget(study: optuna.Study, spec: StudySpec) -> RunBudget:
    stored_file, raw = study.user_attrs.get("study_file"), study.user_attrs.get("run_budget")
    if stored_file is None or raw is None:
        raise HPOError(f"study {spec.name!r} in {display_url(spec.storage)} was never started: "
                       f"run `hpo study start` first, then join it with `hpo worker`")
    check_same_search(stored_file, spec)
    return RunBudget(**raw)


def budget_used(trials: list[FrozenTrial], budget: RunBudget) -> int:
    """Trials of this run that count against `n_trials`. A trial failed by a stale heartbeat (no fail_reason)
    does not count: its re-queued copy does, so a crash does not eat into the budget."""
    return sum(1 for t in trials if t.number >= budget.first_trial and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)))


def _should_stop(study: optuna.Study, budget: RunBudget) -> bool:
    # Checked before each trial. K workers may overshoot n_trials by at most K - 1 (they check at once).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A dead worker's RUNNING trial must become FAIL (+ re-queued) before it is counted, or it would
        # hold its budget slot forever; optimize() does this too, but only once it has decided to run.
        optuna.storages.fail_stale_trials(study)
    if stop_requested(study):
        return True
    if budget.deadline is not None and time.time() >= budget.deadline:
        return True
    return budget.n_trials is not None and budget_used(study.get_trials(deepcopy=False), budget) >= budget.n_trials


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Progress:
    """optuna callback: one line per finished trial with the run's counts, best so far and ETA."""

    def __init__(self, budget: RunBudget, out: TextIO, clock: Callable[[], float] = time.time):
        self.budget, self.out, self.clock = budget, out, clock

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        mine = [t for t in trials if t.number >= self.budget.first_trial]
        done = [t for t in mine if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
        n = {s: sum(t.state == s for t in done) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        total = f"/{self.budget.n_trials}" if self.budget.n_trials else ""
        best = best_completed(trials)
        best_text = f"best {best.value:.4f} (trial {best.number})" if best else "best -"
        line = (f"{describe_trial(trial)} | {len(done)}{total} done: {n[TrialState.COMPLETE]} complete, "
                f"{n[TrialState.PRUNED]} pruned, {n[TrialState.FAIL]} failed | {best_text} | "
                f"ETA {self._eta(len(done))}")
        print(line, file=self.out, flush=True)

    def _eta(self, done: int) -> str:
        now, b = self.clock(), self.budget
        left = []
        if b.n_trials is not None and done:
            left.append((now - b.started) / done * max(0, b.n_trials - done))
        if b.deadline is not None:
            left.append(max(0.0, b.deadline - now))
        return _duration(min(left)) if left else "?"


class Annotator:
    """optuna callback: every finished trial gets its Markdown note and learning-curve artifacts in
    optuna-dashboard (dashboard.notes). Notes are a convenience: failing to write one never fails the study."""

    def __init__(self, artifact_dir: str):
        self.artifact_dir = Path(artifact_dir)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            self.artifact_dir.mkdir(parents=True, exist_ok=True)
            annotate_trial(study, trial, artifact_store=FileSystemArtifactStore(str(self.artifact_dir)))
        except Exception as e:
            text = (str(e).strip().splitlines() or [""])[0]
            _log.warning("warning: trial %d has no dashboard note: %s: %s", trial.number, type(e).__name__, text)


def describe_trial(trial: FrozenTrial) -> str:
    secs = f"{trial.duration.total_seconds():.1f}s" if trial.duration else ""
    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        return f"trial {trial.number} complete: val_acc {trial.value:.4f} in {secs}"
    if trial.state == TrialState.PRUNED and "fail_reason" in attrs:
        return f"trial {trial.number} pruned: {attrs['fail_reason']}"
    if trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(attrs.get("pruned_at_epoch", -1), float("nan"))
        return f"trial {trial.number} pruned at epoch {attrs.get('pruned_at_epoch', '?')} (val_acc {last:.4f})"
    return f"trial {trial.number} failed: {attrs.get('fail_reason', 'unknown error')}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

