"""The worker loop through the installed CLI on a real SQLite file and the real PostgreSQL: a worker that
stalls past the grace period and comes back, SIGTERM treated like Ctrl-C, and progress lines that count what
the budget counts."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy
from optuna.trial import TrialState

import hpo.storage.opening
from hpo.results.consistency import check_consistency
from hpo.storage import open_storage
from tests.helpers import DONE, HPO, hpo_popen, hpo_run, run_cli, storage_for, trials_of, wait_for
from tests.hpo.studyfiles import write_study


def first_epoch_done(url: str, name: str):
    return next((t for t in trials_of(url, name) if t.state == TrialState.RUNNING and t.user_attrs.get("curve")),
                None)


def test_stalled_worker_drops_its_lost_trial_and_goes_on(tmp_path, tiny_cifar, storage_url, study_name):
    """A frozen VM or a lost network: the worker is silent past the grace period, another worker fails and
    re-runs its trial; when it comes back it drops that trial with one warning and finishes the run."""
    path = write_study(tmp_path, study_name, storage_url, budget={"epochs": 6}, workers={"grace_period": 2})
    data = ["--data-dir", str(tiny_cifar), "--threads", "1"]
    stalled = hpo_popen("study", "start", str(path), "--n-trials", "2", *data, cwd=tmp_path)
    try:
        trial = wait_for(lambda: first_epoch_done(storage_url, study_name), stalled, "a trial finished an epoch")
        stalled.send_signal(signal.SIGSTOP)
        time.sleep(3)  # past the grace period (2 s)
        other = run_cli("study", "join", str(path), *data)  # the other worker, here (this process is not stalled)
        assert trials_of(storage_url, study_name)[trial.number].state == TrialState.FAIL
    finally:
        stalled.send_signal(signal.SIGCONT)
    out, err = stalled.communicate(timeout=120)
    assert other.returncode == 0, other.stderr
    assert stalled.returncode == 0 and "Traceback" not in err and "Cannot tell" not in err, err
    assert err.count("\n") == 1 and err.startswith(f"warning: trial {trial.number} was failed and re-queued by "
                                                   "another worker while this one stalled"), err
    trials = trials_of(storage_url, study_name)
    lost = trials[trial.number]
    assert lost.state == TrialState.FAIL and "fail_reason" not in lost.user_attrs
    rerun = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert len(rerun) == 1 and rerun[0].state in DONE and rerun[0].params == lost.params
    assert 2 <= len([t for t in trials if t.state in DONE]) <= 3  # the budget, + 1 for two workers
    assert check_consistency(storage_for(storage_url), study_name) == []


@pytest.mark.parametrize("storage_url", ["postgres"], indirect=True)
def test_a_worker_frozen_inside_a_transaction_does_not_block_the_others(tmp_path, tiny_cifar, storage_url,
                                                                        study_name, monkeypatch):
    """A worker frozen mid-transaction (a paused VM, a lost network) keeps its row locks: here a session opened
    as a worker opens them, inside a transaction that locked the running trial 0 as a worker's epoch report
    does, then left. The server ends it after STALLED_TRANSACTION_S (2 s here), and `hpo study join` fails and
    re-runs trial 0. Before, the join waited on that lock for ever."""
    monkeypatch.setattr(hpo.storage.opening, "STALLED_TRANSACTION_S", 2)
    path = write_study(tmp_path, study_name, storage_url, budget={"epochs": 6}, workers={"grace_period": 2})
    data = ["--data-dir", str(tiny_cifar), "--threads", "1"]
    dead = hpo_popen("study", "start", str(path), "--n-trials", "1", *data, cwd=tmp_path)
    trial = wait_for(lambda: first_epoch_done(storage_url, study_name), dead, "a trial finished an epoch")
    dead.kill()
    dead.communicate()
    frozen = open_storage(storage_url).engine.connect()
    try:
        frozen.execute(sqlalchemy.text(
            "SELECT 1 FROM trials JOIN studies USING (study_id) WHERE study_name = :name AND number = :number "
            "FOR KEY SHARE OF trials"), {"name": study_name, "number": trial.number})
        time.sleep(3)  # the grace period: trial 0 is stale
        # A process of its own: its sessions keep the server's default STALLED_TRANSACTION_S, not the 2 s above.
        other = hpo_run("study", "join", str(path), *data, cwd=tmp_path, timeout=60)
        assert other.returncode == 0, other.stderr
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="idle-in-transaction timeout"):
            frozen.execute(sqlalchemy.text("SELECT 1"))  # the server ended the frozen session
    finally:
        frozen.close()  # without the fix, its lock would also hold up the fixture's clean-up
    trials = trials_of(storage_url, study_name)
    assert trials[trial.number].state == TrialState.FAIL
    assert [t.state in DONE for t in trials if t.system_attrs.get("failed_trial") == trial.number] == [True]
    assert check_consistency(storage_for(storage_url), study_name) == []


# SQLite only: what SIGTERM does is the worker's, not the storage's (Ctrl-C on PostgreSQL, with the re-queued trial
# re-run: tests/hpo/test_distributed.py::test_ctrl_c_fails_the_trial_and_the_next_start_resumes).
@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_sigterm_is_ctrl_c_and_the_rerun_is_named(tmp_path, tiny_cifar, storage_url, study_name):
    path = write_study(tmp_path, study_name, storage_url, budget={"epochs": 12})
    args = ["study", "start", str(path), "--n-trials", "1", "--data-dir", str(tiny_cifar), "--threads", "1"]
    proc = hpo_popen(*args, cwd=tmp_path)
    wait_for(lambda: first_epoch_done(storage_url, study_name), proc, "trial 0 finished an epoch")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert err.startswith("interrupted: ") and err.count("\n") == 1, err
    interrupted, queued = trials_of(storage_url, study_name)
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["fail_reason"] == "interrupted"
    assert queued.state == TrialState.WAITING and queued.params == interrupted.params

    resumed = run_cli(*args)  # the next start: the database carries the queue over, any process may run it
    assert resumed.returncode == 0, resumed.stderr
    # The interrupted trial does not count against the budget; its re-run does, and says what it re-runs.
    assert "trial 1 (re-run of trial 0) complete: " in resumed.stdout and " | 1/1 done: 1 complete" in resumed.stdout
    assert check_consistency(storage_for(storage_url), study_name) == []


def test_ctrl_c_while_the_worker_processes_start_prints_no_traceback(tmp_path, tiny_cifar, study_name):
    """A terminal's Ctrl-C reaches every process of the group, the spawned workers too while they are still
    importing torch: each printed a 40-line KeyboardInterrupt traceback from inside an import."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = write_study(tmp_path, study_name, url)
    proc = hpo_popen("study", "start", str(path), "--workers", "2", "--threads", "1", "--data-dir", str(tiny_cifar),
                     cwd=tmp_path, start_new_session=True)  # its own process group, like a terminal's job
    wait_for(lambda: len(_spawned_workers(proc.pid)) == 2, proc, "both worker processes spawned")
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: within milliseconds of the spawn, mid-import
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("interrupted: a trial that was running is marked failed")  # not "the running trial"
    assert not [t for t in trials_of(url, study_name) if t.state == TrialState.RUNNING]
    assert check_consistency(storage_for(url), study_name) == []


def _spawned_workers(pid: int) -> list[int]:
    """The multiprocessing-spawned children of `pid` (not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in _read_or_empty(Path(f"/proc/{c}/cmdline"))]


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def test_sigterm_to_the_parent_stops_every_worker(tmp_path, tiny_cifar, study_name):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # Long unpruned trials: both workers are still inside a trial when SIGTERM arrives (with 12 epochs and the
    # median pruner, one worker could finish the budget's last trial first, under any load).
    path = write_study(tmp_path, study_name, url, budget={"epochs": 40}, pruner={"n_startup_trials": 100})
    proc = hpo_popen("study", "start", str(path), "--n-trials", "4", "--workers", "2", "--threads", "1",
                     "--data-dir", str(tiny_cifar), cwd=tmp_path)
    wait_for(lambda: len([t for t in trials_of(url, study_name) if t.state == TrialState.RUNNING
                          and t.user_attrs.get("curve")]) == 2, proc, "both workers finished an epoch")
    os.kill(proc.pid, signal.SIGTERM)  # the parent alone, as systemd or `timeout` would
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.startswith("interrupted: ") and err.count("\n") == 1, err
    trials = trials_of(url, study_name)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and all(t.user_attrs["fail_reason"] == "interrupted" for t in failed), [(t.number, t.state.name, t.user_attrs.get("fail_reason"), len(t.user_attrs.get("curve", []))) for t in trials]
    assert check_consistency(storage_for(url), study_name) == []


def test_workers_stop_when_their_parent_is_killed(tmp_path, tiny_cifar, study_name):
    """kill -9 (or the OOM killer) of `hpo study start --workers 2` leaves no worker running on unseen: each
    records its trial as interrupted and exits."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = write_study(tmp_path, study_name, url, budget={"epochs": 40}, pruner={"n_startup_trials": 100})
    proc = hpo_popen("study", "start", str(path), "--n-trials", "4", "--workers", "2", "--threads", "1",
                     "--data-dir", str(tiny_cifar), cwd=tmp_path)
    wait_for(lambda: len([t for t in trials_of(url, study_name) if t.state == TrialState.RUNNING
                          and t.user_attrs.get("curve")]) == 2, proc, "both workers finished an epoch")
    workers = _spawned_workers(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=60)  # the pipes close once the last worker has exited
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and "Traceback" not in err, err
    trials = trials_of(url, study_name)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # Without the watch, both workers ran the rest of the budget: every trial COMPLETE, none failed.
    assert len(failed) == 2 and all(t.user_attrs["fail_reason"] == "interrupted" for t in failed), \
        [(t.number, t.state.name) for t in trials]
    assert check_consistency(storage_for(url), study_name) == []


def _file_size_limit(limit: int) -> None:
    """In the child: files may not grow past `limit` bytes, and a write past it fails (EFBIG) instead of
    killing the process (SIGXFSZ): to SQLite, a disk that is full."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_database_that_cannot_grow_stops_the_worker_with_the_drivers_words_and_loses_nothing(
        tmp_path, tiny_cifar, study_name):
    """Before: 'error: unexpected AssertionError: Should not reach.' (optuna's tell, whose write failed) or
    'unexpected StorageInternalError: ... invalid data in the commit ...'."""
    db = tmp_path / "study.db"
    path = write_study(tmp_path, study_name, f"sqlite:///{db}", study={"trials": 30})
    args = [HPO, "study", "start", str(path), "--data-dir", str(tiny_cifar), "--threads", "1"]
    full = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=functools.partial(_file_size_limit, 300_000))
    assert full.returncode == 1, full.stderr
    last = full.stderr.splitlines()[-1]
    assert last.startswith(f"error: the database sqlite:///{db} failed: ") and last.endswith(
        "; this worker stops (fix the database, e.g. free disk space, then run the same command: a trial left "
        "running is re-run)"), full.stderr
    assert not any(words in full.stderr for words in ("unexpected", "Should not reach", "invalid data")), full.stderr
    before = {t.number: t.values for t in trials_of(f"sqlite:///{db}", study_name) if t.state.is_finished()}
    again = run_cli(*args[1:], "--n-trials", "2")  # the same command without the limit
    assert again.returncode == 0, again.stderr
    after = trials_of(f"sqlite:///{db}", study_name)
    assert {t.number: t.values for t in after if t.number in before} == before  # what was recorded stays
    assert len(after) > len(before)
