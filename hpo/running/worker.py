"""Running a study: `start_study` (create/resume, then K local worker processes), `join_study` (`hpo study join`:
join from any process or machine) and `run_worker` (one process's trials).

Workers coordinate only through the storage: each runs `study.optimize` (`catch=` for trial errors) with a
progress callback and `BudgetGuard`, which stops it when the run's stored budget is spent. optuna's heartbeat
fails a dead worker's trial and re-queues it. Ctrl-C / SIGTERM fails the running trial as "interrupted",
re-queues it and raises `Interrupted` (the CLI exits 130 / 143).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState

from cifarnet.data import load_cifar10, make_splits, resolve_data_dir
from cifarnet.train import RunOptions
from hpo.errors import HPOError, StorageError, WorkerInterrupted, first_line
from hpo.running.launcher import check_device, run_processes
from hpo.running.notes import annotate_trial, outcome
from hpo.running.objective import TRIAL_ERRORS, Objective
from hpo.definition.paths import study_artifact_dir
from hpo.storage import RECONNECT_WINDOW_S, database_failure, display_url, heartbeat_enabled, interrupt_received, \
    interrupts_between_storage_calls, is_connection_lost, is_transient, open_existing_storage, open_storage
from hpo.running.study import INTERRUPTED_REASON, build_pruner, build_sampler, check_same_search, clear_stop, create_or_resume, requeue_interrupted, stop_requested
from hpo.results.records import StudyStatus, best_completed, study_status
from hpo.definition.study_file import StudySpec, check_size_budget

_log = logging.getLogger(__name__)
TRANSIENT_PAUSE_S = 2.0  # back-off after the database was locked past its busy timeout or dropped a connection


@dataclass(frozen=True)
class WorkerOptions:
    data_dir: str | None = None  # CIFAR-10 folder on this machine (default: $CIFAR10_DIR)
    device: str = "auto"
    workers: int = 1  # local processes sharing the cores
    threads: int | None = None  # torch threads per worker; None = this machine's cores // workers
    out: TextIO | None = None  # progress lines (default: stdout)
    devices: tuple[str, ...] = ()  # one process per entry, pinned to it (launcher.device_slots); overrides the two above

    def slots(self) -> tuple[str, ...]:
        return self.devices or (self.device,) * self.workers


@dataclass(frozen=True)
class RunBudget:
    """What one `hpo study start` asked for; stored on the study so joining workers obey it too."""

    first_trial: int  # trials numbered from here on belong to this run
    n_trials: int | None
    deadline: float | None  # epoch seconds after which no trial starts
    started: float


class Step(enum.Enum):
    RUN = "run a trial"
    WAIT = "wait: the budget is spent but trials of the run are still running elsewhere"
    STOP = "stop"


def start_study(spec: StudySpec, opts: WorkerOptions = WorkerOptions()) -> StudyStatus:
    """Create or resume the study, run `opts.workers` local workers until the budget is spent, summarise."""
    if opts.workers < 1 or (opts.threads is not None and opts.threads < 1):
        raise HPOError(f"--workers and --threads must be >= 1, got {opts.workers} and {opts.threads}")
    check_size_budget(spec)
    _check_inputs(opts)
    begin_run(spec)
    _run_slots(spec, opts, seeded=True)
    return study_status(spec.storage, spec.name)


def begin_run(spec: StudySpec) -> RunBudget:
    """Create or resume the study and store this run's budget, which every worker then obeys."""
    optuna.logging.set_verbosity(logging.WARNING)  # "A new study created ..." is noise next to our lines
    study = create_or_resume(spec, open_storage(spec.storage))
    now = time.time()
    trials = study.get_trials(deepcopy=False)
    # Queued trials (the baseline of a new study, re-runs of dead or interrupted trials) belong to this run.
    first = min([t.number for t in trials if t.state == TrialState.WAITING], default=len(trials))
    budget = RunBudget(first, spec.n_trials, now + spec.timeout if spec.timeout else None, now)
    study.set_user_attr("run_budget", dataclasses.asdict(budget))
    clear_stop(study)  # an explicit start means "run again", even after an earlier run hit its target
    return budget


def join_study(spec: StudySpec, opts: WorkerOptions = WorkerOptions()) -> StudyStatus:
    """`hpo study join`: join a study started elsewhere, under the budget its `hpo study start` stored, with one
    process per device slot (`opts.devices`). A run with nothing left to do asks for no data or device."""
    storage, study = _open_study(spec)
    if BudgetGuard(_stored_budget(study, spec), can_wait=heartbeat_enabled(storage)).next_step(study) is not Step.STOP:
        _check_inputs(opts)
        _run_slots(spec, opts, seeded=False)
    return study_status(spec.storage, spec.name)


def _check_inputs(opts: WorkerOptions) -> None:
    """Fail before the study is touched: missing or corrupt data, a device this machine lacks."""
    resolve_data_dir(opts.data_dir)
    load_cifar10(opts.data_dir)  # cached: the in-process worker reuses it
    for device in set(opts.slots()):
        check_device(device)


def _run_slots(spec: StudySpec, opts: WorkerOptions, seeded: bool) -> None:
    """One worker in this process, or one process per slot. Seeded workers (`hpo study start`) get the
    sampler seed + their index; joining ones fresh randomness, so they never replay another machine's."""
    slots = opts.slots()
    if len(slots) == 1:
        run_worker(spec, dataclasses.replace(opts, device=slots[0], devices=()), seed_offset=0 if seeded else None)
        return
    # Each child prints to the inherited stdout; `workers` sizes its share of the cores.
    jobs = [(spec, dataclasses.replace(opts, device=device, devices=(), workers=len(slots), out=None),
             i if seeded else None) for i, device in enumerate(slots)]
    with interrupts_between_storage_calls(signal.SIGTERM):  # SIGTERM stops the children like Ctrl-C
        run_processes(run_worker, jobs)


def run_worker(spec: StudySpec, opts: WorkerOptions, seed_offset: int | None) -> int:
    """Run trials until the stored run budget is spent, the deadline passes or the stop flag is raised.
    Returns the number of trials this worker ran."""
    # One pool of cores shared by K processes: more threads than cores makes every worker crawl.
    threads = opts.threads or max(1, usable_cores() // opts.workers)
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(logging.ERROR)  # our one line per trial replaces optuna's log and tracebacks
    storage, study = _open_study(spec)
    budget = _stored_budget(study, spec)
    study.sampler = build_sampler(spec, seed_offset, budget.first_trial)
    cifar = load_cifar10(opts.data_dir)
    splits = make_splits(cifar, spec.data)
    run_opts = RunOptions(device=opts.device, progress=False, loader_workers=0 if threads == 1 else 2)
    artifact_dir = study_artifact_dir(study.user_attrs, spec.storage, spec.artifact_dir)
    out = opts.out or sys.stdout
    objective = Objective(spec, splits, run_opts, artifact_dir, cifar, say=lambda line: print(line, file=out, flush=True))
    runner = TrialRunner(objective, artifact_dir)
    guard = BudgetGuard(budget, can_wait=heartbeat_enabled(storage))
    with interrupts_between_storage_calls(signal.SIGTERM):  # so an interrupt can always be recorded on the trial
        try:
            run_trials(study, storage, runner, guard, [runner.told, Progress(budget, out), guard],
                       spec.workers.heartbeat_interval)
        except Exception as e:  # each call already waited RECONNECT_WINDOW_S: one clear line, not optuna's words
            if is_connection_lost(e):
                raise StorageError(f"lost the database {display_url(spec.storage)} for more than "
                                   f"{RECONNECT_WINDOW_S} s; this worker stops (its running trial is failed and "
                                   f"re-run by the next worker on the study)") from None
            # A write the database refused for good (disk full, I/O error, read-only): optuna's words would be
            # "invalid data in the commit" or "Should not reach." (tests/hpo/test_worker_loop.py::
            # test_a_database_that_cannot_grow_stops_the_worker_with_the_drivers_words_and_loses_nothing).
            if (words := database_failure(e)) is not None:
                raise StorageError(f"the database {display_url(spec.storage)} failed: {words}; this worker stops "
                                   f"(fix the database, e.g. free disk space, then run the same command: a trial "
                                   f"left running is re-run)") from None
            raise
    return runner.ran


def _open_study(spec: StudySpec) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    """The study a worker joins, on a storage with the study file's heartbeats."""
    # Joining a study that is not there must not leave an empty database behind (`hpo study join` on a mistyped
    # path: tests/hpo/test_cli.py::test_join_on_a_missing_database_creates_nothing).
    storage = open_existing_storage(spec.storage, heartbeat=spec.workers)
    try:
        return storage, optuna.load_study(study_name=spec.name, storage=storage, pruner=build_pruner(spec))
    except KeyError:
        raise HPOError(f"no study {spec.name!r} in {display_url(spec.storage)}: start it with "
                       f"`hpo study start`, then join it with `hpo study join`") from None


class TrialRunner:
    """The objective as optimize calls it: remembers which trial runs (to re-queue it after an interrupt, to
    name it when it was taken away) and writes the trial's dashboard note as it ends."""

    def __init__(self, objective: Callable[[optuna.Trial], float], artifact_dir: Path):
        self.objective, self.artifact_dir = objective, artifact_dir
        self.current: int | None = None  # number of the trial in progress
        self.ran = 0

    def __call__(self, trial: optuna.Trial) -> float:
        self.current, self.ran = trial.number, self.ran + 1
        state, value = TrialState.FAIL, None
        try:
            value = self.objective(trial)
            state = TrialState.COMPLETE
            return value
        except optuna.TrialPruned:
            state = TrialState.PRUNED
            raise
        except (KeyboardInterrupt, optuna.exceptions.UpdateFinishedTrialError):
            state = None  # stopping now, or the trial is no longer ours: no note
            raise
        finally:
            if state is not None:
                self._annotate(trial, state, value)

    def told(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """optimize callback: the trial is recorded, so nothing is left to re-queue or to drop."""
        self.current = None

    def _annotate(self, trial: optuna.Trial, state: TrialState, value: float | None) -> None:
        """Notes are a convenience: failing to write one never fails the trial."""
        try:
            self.artifact_dir.mkdir(parents=True, exist_ok=True)
            annotate_trial(trial, state, value, FileSystemArtifactStore(str(self.artifact_dir)))
        except Exception as e:
            _log.warning("warning: trial %d has no dashboard note: %s: %s", trial.number, type(e).__name__,
                         database_failure(e) or first_line(e))


def run_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, runner: TrialRunner, guard: "BudgetGuard",
               callbacks: list[Callable], poll_s: float) -> None:
    """optuna's optimize runs the trials; between its runs this loop waits while the budget is spent but
    trials of the run may still die elsewhere, and outlives what must not stop a worker: a trial taken from
    it, a database locked or disconnected for too long."""
    while (step := guard.next_step(study)) is not Step.STOP:
        if step is Step.WAIT:
            time.sleep(poll_s)
            continue
        try:
            study.optimize(runner, catch=TRIAL_ERRORS, callbacks=callbacks)
        except KeyboardInterrupt as e:
            recorded = _requeue_after_interrupt(study, storage, runner.current)
            raise WorkerInterrupted(getattr(e, "signum", signal.SIGINT), recorded) from None
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            # optuna's tell: "Cannot tell a FAIL trial". This worker stalled past the grace period (a frozen VM,
            # a lost network) and another one failed and re-queued its trial
            # (tests/hpo/test_worker_loop.py::test_stalled_worker_drops_its_lost_trial_and_goes_on).
            if runner.current is None or not _lost(study, runner.current):
                raise
            _log.warning("warning: trial %d was failed and re-queued by another worker while this one stalled "
                         "(no heartbeat for longer than the grace period); dropped it", runner.current)
        except Exception as e:
            if (interrupt := interrupt_received()) is not None:
                # optuna could not record the interrupted trial (database gone) and raised its own error instead
                # (tests/hpo/test_distributed.py::test_ctrl_c_while_the_database_is_gone_exits_at_once).
                recorded = _requeue_after_interrupt(study, storage, runner.current)
                raise WorkerInterrupted(interrupt.signum, recorded) from None
            if not is_transient(e):
                raise
            # A trial in flight was failed with the reason or (if even that write failed) is left RUNNING for
            # its stale heartbeat to fail and re-queue. This worker carries on.
            _log.warning("warning: storage unavailable (%s); retrying in %.0f s", type(e).__name__, TRANSIENT_PAUSE_S)
            time.sleep(TRANSIENT_PAUSE_S)


def _lost(study: optuna.Study, number: int) -> bool:
    """Failed by another worker's stale-heartbeat check: optuna's tell then finds it finished, whether the
    objective noticed first (its own writes failed) or not (tell raced the check)."""
    return study.get_trials(deepcopy=False)[number].state == TrialState.FAIL


class BudgetGuard:
    """Whether to run another trial, wait for others' trials to end, or stop; as an optimize callback, stops
    optimize when the answer is no longer "run".

    Why not optuna's MaxTrialsCallback: it counts trials by state, and two FAIL trials count differently here:
    one failed by its error (a NaN loss) uses the budget, one whose worker died (or was interrupted) does not,
    since its re-queued copy will (tests/hpo/test_study.py::test_nan_loss_fails_trial_and_study_goes_on,
    tests/hpo/test_distributed.py::test_six_workers_two_killed_end_with_n_to_n_plus_5_trials)."""

    def __init__(self, budget: RunBudget, can_wait: bool):
        self.budget, self.can_wait = budget, can_wait

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.next_step(study) is not Step.RUN:
            study.stop()

    def next_step(self, study: optuna.Study) -> Step:
        budget = self.budget
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # A dead worker's RUNNING trial must become FAIL (+ re-queued) before it is counted, or it would
            # hold its budget slot forever.
            optuna.storages.fail_stale_trials(study)
        if stop_requested(study) or (budget.deadline is not None and time.time() >= budget.deadline):
            return Step.STOP
        if budget.n_trials is None:
            return Step.RUN
        trials = study.get_trials(deepcopy=False)
        # A queued trial of this run (the re-run of a dead or interrupted one) always runs: it holds the slot
        # its first attempt held, so it is never left behind for the next run
        # (tests/hpo/test_distributed.py::test_six_workers_two_killed_end_with_n_to_n_plus_5_trials).
        if budget_used(trials, budget) < budget.n_trials or any(
                t.state == TrialState.WAITING and t.number >= budget.first_trial for t in trials):
            return Step.RUN
        # Spent, but a trial running elsewhere may yet die and be re-queued; someone must stay to re-run it.
        # Without heartbeats (the gRPC proxy) a dead worker's trial would be waited for forever.
        still_running = any(t.state == TrialState.RUNNING and t.number >= budget.first_trial for t in trials)
        return Step.WAIT if still_running and self.can_wait else Step.STOP


def _requeue_after_interrupt(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int | None) -> bool:
    """Queue the interrupted trial again so the study does not lose it (the next `hpo study start` would
    also do it); a database problem here must not hide the interrupt, and is said (returns False). A trial
    interrupted as optuna started it, before the objective ran (`number` None), is recorded as interrupted here."""
    try:
        started = getattr(storage, "started_trial_id", None)  # not behind the gRPC proxy
        trial = storage.get_trial(started) if started is not None else None
        if trial is not None and trial.state == TrialState.RUNNING:
            storage.set_trial_user_attr(started, "fail_reason", INTERRUPTED_REASON)
            storage.set_trial_state_values(started, TrialState.FAIL)
            number = trial.number
        if number is not None:  # None: interrupted between trials
            requeue_interrupted(study, only=number)
        return True
    except Exception as e:
        _log.warning("warning: trial %s not re-queued (%s); the next `hpo study start` does it",
                     "?" if number is None else number, e)
        return False


def _stored_budget(study: optuna.Study, spec: StudySpec) -> RunBudget:
    stored_file, raw = study.user_attrs.get("study_file"), study.user_attrs.get("run_budget")
    if stored_file is None or raw is None:
        raise HPOError(f"study {spec.name!r} in {display_url(spec.storage)} was never started: "
                       f"run `hpo study start` first, then join it with `hpo study join`")
    check_same_search(stored_file, spec)
    return RunBudget(**raw)


def counts_against_budget(t: FrozenTrial, budget: RunBudget) -> bool:
    """A trial of this run that uses a slot of `n_trials`. One failed by a stale heartbeat (no fail_reason)
    or interrupted does not: its re-queued (WAITING) copy does, so a crash does not eat into the budget."""
    return t.number >= budget.first_trial and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        or (t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") not in (None, INTERRUPTED_REASON)))


def budget_used(trials: list[FrozenTrial], budget: RunBudget) -> int:
    return sum(counts_against_budget(t, budget) for t in trials)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask on Linux), shared by local workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Progress:
    """optuna callback: one line per finished trial with what the budget counts, best so far and ETA."""

    def __init__(self, budget: RunBudget, out: TextIO, clock: Callable[[], float] = time.time):
        self.budget, self.out, self.clock = budget, out, clock

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state.is_finished() and counts_against_budget(t, self.budget)]
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


def describe_trial(trial: FrozenTrial) -> str:
    secs = f"{trial.duration.total_seconds():.1f}s" if trial.duration else ""
    attrs, history = trial.user_attrs, trial.system_attrs.get("retry_history")
    name = f"trial {trial.number}" + (f" (re-run of trial {history[-1]})" if history else "")
    if trial.state == TrialState.COMPLETE:
        return f"{name} complete: val_acc {trial.value:.4f} in {secs}"
    if trial.state == TrialState.PRUNED and "fail_reason" in attrs:
        return f"{name} pruned: {attrs['fail_reason']}"
    if trial.state == TrialState.PRUNED:  # the last value it reported: at the epoch or the rung it was stopped
        last = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else float("nan")
        return f"{name} {outcome(trial)} (val_acc {last:.4f})"
    return f"{name} failed: {attrs.get('fail_reason', 'unknown error')}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
