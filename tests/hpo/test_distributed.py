"""Distributed and crash-safe studies on the real PostgreSQL (and SQLite where it matters): many workers, killed
workers, Ctrl-C, dropped database connections, a database restart, the gRPC storage proxy and bad input. Tiny data throughout:
the tiny_cifar fixture, TINY_STUDY's narrow models, heartbeat 1 s and grace period 3 s.

Covered elsewhere, not repeated here: a NaN loss fails its trial with the reason stored while the study goes
on (test_study.py), malformed and unreachable URLs (test_storage.py), two `--workers` on SQLite and on
PostgreSQL (test_study_cli.py)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from hpo.errors import HPOError
from hpo.running.launcher import device_slots
from hpo.results.consistency import check_consistency
from hpo.definition.study_file import load_study_file
from hpo.running.worker import WorkerOptions, start_study
from tests.helpers import (DONE, ENV, hpo_popen, hpo_run, one_error_line, run_cli, storage_for, trials_of, wait_for,
                           worker_pid)
from tests.hpo.relay import Relay
from tests.hpo.studyfiles import write_study


@pytest.fixture
def pg_relay(pg_url):
    """A Relay in front of the real PostgreSQL and the URL that reaches the server through it."""
    target = sqlalchemy.engine.make_url(pg_url)
    relay = Relay((target.host, target.port or 5432))
    yield relay, target.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    relay.close()


def test_six_workers_two_killed_end_with_n_to_n_plus_5_trials(tmp_path, tiny_cifar, pg_url, study_name):
    n = 10
    # 4 epochs: a trial caught after epoch 1 has seconds left to be killed in.
    path = write_study(tmp_path, study_name, pg_url, budget={"epochs": 4})
    proc = hpo_popen("study", "start", str(path), "--n-trials", str(n), "--workers", "6", "--threads", "1",
                     "--data-dir", str(tiny_cifar), cwd=tmp_path)

    def two_running_workers():
        running = {worker_pid(t): t.number for t in trials_of(pg_url, study_name)
                   if t.state == TrialState.RUNNING and len(t.user_attrs.get("curve", [])) == 1}
        return dict(list(running.items())[:2]) if len(running) >= 2 else None

    # Six spawned torch processes take minutes to start on a loaded 2-core machine.
    victims = wait_for(two_running_workers, proc, "two workers had a trial running", timeout_s=300)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.startswith("error: worker(s) stopped early: ") and err.count("\n") == 1
    assert err.count("killed by SIGKILL") == 2

    trials = trials_of(pg_url, study_name)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert n <= len([t for t in trials if t.state in DONE]) <= n + 5  # no lock: up to workers - 1 more
    killed = [t for t in trials if t.number in victims.values()]
    assert [t for t in trials if t.state not in DONE] == killed  # nothing else failed, nothing left running
    for dead in killed:
        assert dead.state == TrialState.FAIL and "fail_reason" not in dead.user_attrs
        rerun = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert len(rerun) == 1 and rerun[0].state in DONE and rerun[0].params == dead.params
        assert worker_pid(rerun[0]) not in victims
    assert check_consistency(storage_for(pg_url), study_name) == []


def test_sqlite_worker_slots_join_a_running_study_without_lock_errors(tmp_path, tiny_cifar, study_name):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = write_study(tmp_path, study_name, url, budget={"epochs": 4})
    data = ["--data-dir", str(tiny_cifar), "--threads", "1"]
    start = hpo_popen("study", "start", str(path), "--n-trials", "10", *data, cwd=tmp_path)
    wait_for(lambda: trials_of(url, study_name), start, "the study was created")
    worker = hpo_run("study", "join", str(path), "--devices", "cpu", "--trials-per-device", "2", *data,
                     cwd=tmp_path)  # spawns its 2 workers
    out, err = start.communicate(timeout=120)
    assert start.returncode == 0 and worker.returncode == 0, err + worker.stderr
    assert "locked" not in out + err + worker.stdout + worker.stderr
    trials = trials_of(url, study_name)
    assert 10 <= len(trials) <= 12 and all(t.state in DONE for t in trials)  # 3 processes: up to 2 more
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the joined processes ran trials too
    assert check_consistency(storage_for(url), study_name) == []


def test_ctrl_c_fails_the_trial_and_the_next_start_resumes(tmp_path, tiny_cifar, pg_url, study_name):
    path = write_study(tmp_path, study_name, pg_url, budget={"epochs": 12})
    args = ["study", "start", str(path), "--n-trials", "1", "--data-dir", str(tiny_cifar), "--threads", "1"]
    proc = hpo_popen(*args, cwd=tmp_path)
    wait_for(lambda: any(t.user_attrs.get("curve") for t in trials_of(pg_url, study_name)), proc,
             "trial 0 finished an epoch")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.startswith("interrupted: ") and err.count("\n") == 1

    interrupted, queued = trials_of(pg_url, study_name)
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["fail_reason"] == "interrupted"
    assert queued.state == TrialState.WAITING and queued.params == interrupted.params
    assert queued.user_attrs["seed_baseline"] and "fail_reason" not in queued.user_attrs
    assert queued.system_attrs["failed_trial"] == 0
    assert check_consistency(storage_for(pg_url), study_name) == []

    resumed = run_cli(*args)  # the next start: the database carries the queue over, any process may run it
    assert resumed.returncode == 0, resumed.stderr
    trials = trials_of(pg_url, study_name)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # the baseline, measured
    assert trials[1].user_attrs["seed_baseline"] and len(trials[1].user_attrs["curve"]) == 12
    assert check_consistency(storage_for(pg_url), study_name) == []


@pytest.mark.parametrize("number", [0, 1], ids=["popped-from-the-queue", "created"])
def test_a_trial_interrupted_as_it_starts_is_requeued(tmp_path, tiny_cifar, storage_url, study_name, monkeypatch,
                                                      number):
    """Ctrl-C after optuna set a trial RUNNING but before the objective began (here: in its sampler's
    before_trial): the trial is recorded as interrupted and queued again like one interrupted while training,
    and the next start runs it. Before, it stayed RUNNING with no heartbeat: never failed, never re-run."""
    def interrupt(self, study, trial):
        if trial.number == number:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(optuna.samplers.TPESampler, "before_trial", interrupt)
    # One epoch a trial: where the interrupt lands is the point, not what the trials learn.
    spec = load_study_file(write_study(tmp_path, study_name, storage_url, study={"trials": 3}, budget={"epochs": 1}))
    opts = WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1, out=io.StringIO())
    with pytest.raises(KeyboardInterrupt):
        start_study(spec, opts)
    trials = trials_of(storage_url, study_name)
    assert trials[number].state == TrialState.FAIL and trials[number].user_attrs["fail_reason"] == "interrupted"
    assert trials[-1].state == TrialState.WAITING and trials[-1].system_attrs["retry_history"] == [number]
    assert check_consistency(storage_for(storage_url), study_name) == []

    monkeypatch.undo()
    start_study(spec, opts)
    trials = trials_of(storage_url, study_name)
    assert [t.state for t in trials if t.state not in DONE] == [TrialState.FAIL]
    assert check_consistency(storage_for(storage_url), study_name) == []


KILLED_AS_A_TRIAL_STARTS = """
import os, signal, sys, optuna
from hpo.definition.study_file import load_study_file
from hpo.running.worker import WorkerOptions, start_study
def die(self, study, trial):
    if trial.number == 1:
        os.kill(os.getpid(), signal.SIGKILL)
optuna.samplers.TPESampler.before_trial = die
start_study(load_study_file(sys.argv[1]), WorkerOptions(data_dir=sys.argv[2], device="cpu", threads=1))
"""


def test_a_worker_killed_as_a_trial_starts_leaves_it_to_be_rerun(tmp_path, tiny_cifar, pg_url, study_name):
    """A worker killed after optuna set a trial RUNNING but before optuna's heartbeat thread began: the trial has
    a heartbeat from its start, so it goes stale, fails and is re-run like any dead worker's. Before, a RUNNING
    trial with no heartbeat was never stale: left RUNNING for ever, and other workers of the run waited for it."""
    path = write_study(tmp_path, study_name, pg_url, study={"trials": 3}, budget={"epochs": 1})  # 1: quick trials
    killed = subprocess.run([sys.executable, "-c", KILLED_AS_A_TRIAL_STARTS, str(path), str(tiny_cifar)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert trials_of(pg_url, study_name)[1].state == TrialState.RUNNING
    time.sleep(3)  # the grace period: its heartbeat is stale now
    resumed = run_cli("study", "start", str(path), "--data-dir", str(tiny_cifar), "--threads", "1")  # the next worker
    assert resumed.returncode == 0, resumed.stderr
    trials = trials_of(pg_url, study_name)
    assert trials[1].state == TrialState.FAIL and "fail_reason" not in trials[1].user_attrs  # failed as stale
    rerun = [t for t in trials if t.system_attrs.get("retry_history") == [1]]
    assert len(rerun) == 1 and rerun[0].state in DONE
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert check_consistency(storage_for(pg_url), study_name) == []


def test_worker_survives_its_database_connections_being_dropped(tmp_path, tiny_cifar, pg_url, study_name):
    app = f"hpo-test-{uuid.uuid4().hex[:8]}"  # only this test's connections are terminated
    url = f"{pg_url}?application_name={app}"
    path = write_study(tmp_path, study_name, url, budget={"epochs": 8})
    proc = hpo_popen("study", "start", str(path), "--n-trials", "3", "--data-dir", str(tiny_cifar),
                     "--threads", "1", cwd=tmp_path)
    wait_for(lambda: any(t.user_attrs.get("curve") for t in trials_of(pg_url, study_name)), proc,
             "trial 0 finished an epoch")
    admin = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
    dropped = 0
    while proc.poll() is None:
        with admin.connect() as conn:
            dropped += conn.execute(sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND application_name = :app"), {"app": app}).scalar()
        time.sleep(0.25)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert dropped >= 3 and "Traceback" not in err
    trials = trials_of(pg_url, study_name)
    assert len(trials) == 3 and all(t.state in DONE for t in trials)
    assert check_consistency(storage_for(pg_url), study_name) == []


def test_workers_wait_out_a_database_restart(tmp_path, tiny_cifar, pg_url, pg_relay, study_name):
    """The server goes away for 4 s mid-study (every session dropped, new connections refused: a restart, as a
    relay in front of the real PostgreSQL plays it): each storage call waits for it, and the study finishes
    with no trial failed or re-run. Before, every worker died ("Connection refused" was not transient)."""
    relay, url = pg_relay
    path = write_study(tmp_path, study_name, url, budget={"epochs": 6}, workers={"grace_period": 20})
    proc = hpo_popen("study", "start", str(path), "--n-trials", "4", "--workers", "2", "--threads", "1",
                     "--data-dir", str(tiny_cifar), cwd=tmp_path)
    wait_for(lambda: any(t.user_attrs.get("curve") for t in trials_of(pg_url, study_name)), proc,
             "a trial finished an epoch")
    relay.restart(down_s=4)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and not [line for line in err.splitlines() if line.startswith("error")], err
    assert "warning: database unreachable" in err  # the outage did hit the workers' calls
    trials = trials_of(pg_url, study_name)
    assert 4 <= len(trials) <= 5 and all(t.state in DONE for t in trials), [t.state for t in trials]
    assert check_consistency(storage_for(pg_url), study_name) == []


def test_a_worker_that_loses_its_database_for_good_stops_with_one_clear_error(tmp_path, tiny_cifar, pg_url,
                                                                              pg_relay, study_name, monkeypatch):
    """Past the reconnect window (shortened here to 1 s) the worker gives up with a StorageError naming the
    database, not with optuna's "invalid data in the commit" or an UnboundLocalError from inside optuna."""
    import hpo.storage.optuna_internals

    monkeypatch.setattr(hpo.storage.optuna_internals, "RECONNECT_WINDOW_S", 1)
    relay, url = pg_relay
    spec = load_study_file(write_study(tmp_path, study_name, url, budget={"epochs": 50}))
    first_epoch = lambda: any(t.user_attrs.get("curve") for t in trials_of(pg_url, study_name))  # noqa: E731
    threading.Thread(target=wait_until_then, args=(first_epoch, relay.close), daemon=True).start()
    with pytest.raises(HPOError, match=rf"lost the database postgresql\S*:{relay.port}/\S* for more than"):
        start_study(spec, WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1, out=io.StringIO()))
    running = [t for t in trials_of(pg_url, study_name) if t.state == TrialState.RUNNING]
    assert len(running) == 1  # left for its stale heartbeat: the next worker fails it and runs it again


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_while_the_database_is_gone_exits_at_once(tmp_path, tiny_cifar, pg_url, pg_relay, study_name, workers):
    """Ctrl-C stops the waiting for a lost database: one error line and exit 130 in seconds, not after each
    storage call's 60 s reconnect window."""
    relay, url = pg_relay
    path = write_study(tmp_path, study_name, url, budget={"epochs": 50})
    proc = hpo_popen("study", "start", str(path), "--data-dir", str(tiny_cifar), "--threads", "1",
                     "--workers", str(workers), cwd=tmp_path)
    wait_for(lambda: any(t.user_attrs.get("curve") for t in trials_of(pg_url, study_name)), proc,
             "a trial finished an epoch")
    relay.close()
    time.sleep(3)  # every storage call of the worker is now waiting for the database
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)  # each call would wait 60 s without the fix
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "warning: database unreachable" in err and "Traceback" not in err
    assert "not re-queued" in err  # said, since the database could not take it; the next start re-queues it
    # and the last line does not contradict it with "is marked failed and queued again"
    assert err.splitlines()[-1].startswith("interrupted: the running trial could not be recorded"), err


def test_a_result_whose_commit_reply_was_lost_is_not_a_crash(tmp_path, tiny_cifar, pg_url, pg_relay, study_name):
    """The connection dies after the server committed a trial's result but before the worker heard so: the
    call is tried again, finds the trial finished with that very result, and the worker goes on. Before, the
    retry's "has already finished and can not be updated" stopped the worker."""
    relay, url = pg_relay
    relay.lose_commit_reply(b"COMPLETE")
    spec = load_study_file(write_study(tmp_path, study_name, url, study={"trials": 2}, budget={"epochs": 1}))
    start_study(spec, WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1, out=io.StringIO()))
    assert relay.commit_to_lose is None  # the answer to a COMPLETE trial's commit was lost
    trials = trials_of(pg_url, study_name)
    assert len(trials) == 2 and all(t.state in DONE for t in trials), [t.state for t in trials]
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == max(trials[0].intermediate_values.values())
    assert check_consistency(storage_for(pg_url), study_name) == []


def wait_until_then(condition, action, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # e.g. the study is not created yet
            if condition():
                break
        time.sleep(0.05)
    action()


def test_storage_proxy_serves_a_study(tmp_path, tiny_cifar, study_name):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = hpo_popen("storage-proxy", "--storage", url, "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path)
    try:
        path = write_study(tmp_path, study_name, f"grpc://127.0.0.1:{port}")
        # A process of its own: gRPC stays out of the test process, which forks many more.
        r = hpo_run("study", "start", str(path), "--n-trials", "2", "--data-dir", str(tiny_cifar), "--threads", "1",
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    finally:
        proxy.send_signal(signal.SIGINT)
        out, err = proxy.communicate(timeout=30)
    assert proxy.returncode == 0 and "storage proxy stopped" in out, err
    assert err == ""  # quiet: optuna's own "[I ...] Server started" / "Listening..." lines are not repeated
    trials = trials_of(url, study_name)  # the database behind the proxy
    assert len(trials) == 2 and all(t.state in DONE for t in trials)
    assert check_consistency(storage_for(url), study_name) == []


# --- bad input: one clear line, exit code 1, nothing stored lost ------------------------------------------------

def test_bad_input_is_one_line_and_loses_nothing(tmp_path, tiny_cifar, pg_url, study_name):
    path = write_study(tmp_path, study_name, pg_url)
    spec = load_study_file(path, n_trials=1)
    start_study(spec, WorkerOptions(data_dir=str(tiny_cifar), threads=1, out=open(os.devnull, "w")))
    before = [(t.number, t.state, t.params, t.value) for t in trials_of(pg_url, study_name)]
    budget = optuna.load_study(study_name=study_name, storage=storage_for(pg_url)).user_attrs["run_budget"]

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_cifar, truncated)
    batch = truncated / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    other = write_study(tmp_path, f"{study_name}-other", pg_url)  # same storage, another study's name
    (tmp_path / "changed").mkdir()
    changed = write_study(tmp_path / "changed", study_name, pg_url, space={"width1": {"choices": [4, 8, 12]}})
    data = ["--data-dir", str(tiny_cifar)]
    for args, words in [
        (["study", "start", str(path), "--data-dir", str(truncated)], ["data_batch_3", "truncated or corrupt"]),
        (["study", "join", str(other), *data], ["no study", "hpo study start"]),
        (["study", "join", str(changed), *data], ["different [space]"]),
        (["study", "join", str(other), "--storage", "postgresql+psycopg://postgres@127.0.0.1:1/test", *data],
         ["cannot open storage"]),
    ]:
        message = one_error_line(run_cli(*args))
        assert all(w in message for w in words), message

    assert [(t.number, t.state, t.params, t.value) for t in trials_of(pg_url, study_name)] == before
    study = optuna.load_study(study_name=study_name, storage=storage_for(pg_url))
    assert study.user_attrs["run_budget"] == budget  # the truncated data was found before the study was touched
    assert f"{study_name}-other" not in {s.study_name for s in optuna.get_all_study_summaries(storage_for(pg_url))}


# --- the consistency check itself, and device slots ---------------------------------------------------------------

def test_consistency_check_finds_broken_records(tmp_path, study_name):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=study_name, storage=storage_for(url), direction="maximize")
    assert "study user_attr 'study_file' is missing" in check_consistency(storage_for(url), study_name, 3)
    orphan = study.ask()  # RUNNING, and no worker ever sent a heartbeat for it
    study.tell(study.ask(), 0.5)
    dead = optuna.trial.create_trial(state=TrialState.FAIL)
    study.add_trial(dead)
    for _ in range(2):  # the same dead trial re-queued twice
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={
            "failed_trial": 2, "retry_history": [2]}))
    problems = check_consistency(storage_for(url), study_name, 3)
    assert f"trial {orphan.number} is RUNNING with no heartbeat" in problems
    assert "trial 2 was re-queued 2 times" in problems


def test_device_slots():
    assert device_slots("cpu", 3) == ("cpu", "cpu", "cpu")
    assert device_slots("cpu, cpu", 1) == ("cpu", "cpu")
    with pytest.raises(HPOError, match="must be >= 1"):
        device_slots("cpu", 0)
    with pytest.raises(HPOError, match="unknown device 'tpu'"):
        device_slots("tpu")
    if torch.cuda.is_available():
        assert device_slots("0", 2) == ("cuda:0", "cuda:0")
    else:  # this CPU-only machine: a clear error, not a crash in the first trial
        with pytest.raises(HPOError, match="device 0: CUDA is not available"):
            device_slots("0,1")


def test_sigint_stops_a_command_started_with_sigint_ignored(tmp_path):
    """Background jobs of non-interactive shells (CI, nohup scripts) start with SIGINT ignored."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = hpo_popen("storage-proxy", "--storage", f"sqlite:///{tmp_path / 'p.db'}", "--host", "127.0.0.1",
                      "--port", str(port), cwd=tmp_path,
                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proxy.stdout.readline().startswith("serving ")
    proxy.send_signal(signal.SIGINT)
    out, _ = proxy.communicate(timeout=30)
    assert proxy.returncode == 0 and "storage proxy stopped" in out
