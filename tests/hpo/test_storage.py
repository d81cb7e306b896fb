"""open_storage: real SQLite and PostgreSQL open alike; bad URLs give one clear line, from the library and
the CLI."""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hpo.errors import StorageError
from hpo.storage import display_url, interrupts_between_storage_calls, open_storage
from hpo.storage.optuna_internals import MISSING_CALLS, RETRIED_CALLS, ReconnectingRDBStorage
from hpo.definition.study_file import WorkerSpec
from tests.conftest import POSTGRES_URL
from tests.helpers import one_error_line, run_cli

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def test_open_storage_creates_schema_with_heartbeat(storage_url, study_name):
    storage = open_storage(storage_url, WorkerSpec(heartbeat_interval=5, grace_period=15, max_retry=1))
    assert storage.get_heartbeat_interval() == 5
    assert isinstance(storage.get_heartbeat_stale_trial_callback(),
                      optuna.storages.RetryHeartbeatStaleTrialCallback)
    optuna.create_study(storage=storage, study_name=study_name)
    assert study_name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(storage_url))}


def test_two_workers_failing_the_same_stale_trial_queue_one_rerun(storage_url, study_name):
    """Two workers' stale-trial checks race for a dead worker's trial: the one that fails it second must get
    optuna's UpdateFinishedTrialError (fail_stale_trials then skips the trial), not True, or it queues a second
    re-run. CI saw it: tests/hpo/test_distributed.py::test_six_workers_two_killed_end_with_n_to_n_plus_5_trials
    failed with a killed trial re-run twice."""
    spec = WorkerSpec(heartbeat_interval=1, grace_period=1, max_retry=2)
    first, second = open_storage(storage_url, spec), open_storage(storage_url, spec)
    study = optuna.create_study(storage=first, study_name=study_name)
    with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize", "experimental"
        warnings.simplefilter("ignore")
        dead = study.ask()  # RUNNING with a heartbeat; then its worker is gone
        time.sleep(2.5)
        optuna.storages.fail_stale_trials(study)  # the first worker's check fails it and queues its re-run
    trial_id = second.get_trial_id_from_study_id_trial_number(second.get_study_id_from_name(study_name),
                                                              dead.number)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # the second worker's, a moment late
        second.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    trials = optuna.load_study(study_name=study_name, storage=second).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]


def test_every_retried_storage_call_exists_in_this_optuna():
    """The dropped-connection retry wraps optuna's RDBStorage methods by name, some of them the private ones
    its trial cache calls: a name a newer optuna renamed would silently lose its retry, so it fails here."""
    assert [name for name in RETRIED_CALLS if not hasattr(optuna.storages.RDBStorage, name)] == []
    assert MISSING_CALLS == ()  # what the module found at import, and logged a warning for
    assert all(name in vars(ReconnectingRDBStorage) for name in RETRIED_CALLS)


def test_opening_survives_connections_being_terminated():
    """CI saw `hpo study start` exit 1 with "cannot open storage ...: (psycopg.errors.AdminShutdown) terminating
    connection due to administrator command": the server ended a session while a new engine was still setting
    it up, where the driver's error reaches SQLAlchemy unwrapped and is not marked a disconnect, so the open was
    not retried. Here the server ends each of the first two connections of an open during its setup (in a pool
    `connect` hook that then uses it, as session-setup hooks do); the open must retry and succeed.
    Deterministic: an earlier version terminated connections on a 0.25 s timer, and on a slow CI machine an open
    attempt could outlast every gap between kills (it failed there for that reason alone)."""
    app = f"hpo-test-{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, poolclass=sqlalchemy.pool.NullPool)
    kills: list[int] = []

    def end_session_during_setup(dbapi_connection, connection_record) -> None:
        info = dbapi_connection.info
        if info.parameter_status("application_name") == app and len(kills) < 2:
            with admin.connect() as conn:  # the timeout makes pg_terminate_backend wait until the session is gone
                conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": info.backend_pid})
            kills.append(info.backend_pid)
            dbapi_connection.execute("SET TIME ZONE 'UTC'")  # raises AdminShutdown

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", end_session_during_setup)
    try:
        storage = open_storage(f"{POSTGRES_URL}?application_name={app}")  # as `hpo study start` does
        storage.get_all_studies()
        storage.engine.dispose()
    finally:
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "connect", end_session_during_setup)
    assert len(kills) == 2


@pytest.mark.parametrize("url, message", [
    ("not a url", "malformed storage URL"),
    ("nosuchdb://host/x", "no database driver for 'nosuchdb'"),
    ("sqlite:////no/such/folder/x.db", "folder /no/such/folder does not exist"),
    ("postgresql+psycopg://postgres:secret@127.0.0.1:1/test", "cannot open storage"),
])
def test_bad_storage_url_is_one_clear_error(url, message):
    with pytest.raises(StorageError, match=message) as err:
        open_storage(url)
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_display_url_hides_password():
    assert display_url("postgresql+psycopg://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"


@pytest.mark.parametrize("args", [
    ["study", "start", str(STUDIES / "smoke.toml"), "--storage", "nosuchdb://x"],
    ["study", "list", "--storage", "postgresql+psycopg://postgres@127.0.0.1:1/test"],
    ["storage-proxy", "--storage", "not a url"],
])
def test_cli_bad_storage_url_one_line_exit_1(tmp_path, tiny_cifar, args):
    # `hpo worker` with an unreachable server: tests/hpo/test_distributed.py (bad input).
    r = run_cli(*args, "--data-dir", str(tiny_cifar)) if args[1] == "start" else run_cli(*args)
    assert "storage" in one_error_line(r) and not r.stdout  # exit 1, one line, no traceback


READ_ONLY_COMMANDS = [["study", "list"], ["study", "status", "s"], ["study", "best", "s"], ["study", "verify", "s"],
                      ["report", "s", "-o", "report.html"]]


def test_read_only_commands_leave_an_unrelated_sqlite_file_unchanged(tmp_path):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('not an optuna database')")
    conn.close()
    before = db.read_bytes()
    for args in READ_ONLY_COMMANDS:
        r = run_cli(*args, "--storage", f"sqlite:///{db}")
        assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "holds no optuna studies" in r.stderr, r.stderr
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_read_only_commands_name_a_postgresql_database_that_does_not_exist():
    """The server's own words, not "holds no optuna studies": the database itself is missing (a typo)."""
    missing = str(sqlalchemy.engine.make_url(POSTGRES_URL).set(database=f"no_such_db_{uuid.uuid4().hex[:8]}")
                  .render_as_string(hide_password=False))
    for args in READ_ONLY_COMMANDS[:2]:
        r = run_cli(*args, "--storage", missing)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "does not exist" in r.stderr and "holds no optuna studies" not in r.stderr, r.stderr


def test_a_corrupt_sqlite_database_is_reported_once(tmp_path, study_name):
    db = tmp_path / "study.db"
    study = optuna.create_study(study_name=study_name, storage=open_storage(f"sqlite:///{db}"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=20)
    optuna.storages.RDBStorage(f"sqlite:///{db}").engine.dispose()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(db.read_bytes())
    data[3 * page_size:4 * page_size] = bytes(range(256)) * (page_size // 256)  # a b-tree page overwritten
    db.write_bytes(bytes(data))
    for args in (READ_ONLY_COMMANDS[1], ["study", "list"]):
        r = run_cli(*args[:2], study_name, "--storage", f"sqlite:///{db}") if len(args) > 2 else run_cli(
            *args, "--storage", f"sqlite:///{db}")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "database disk image is malformed" in r.stderr, r.stderr
    with pytest.raises(StorageError, match="database disk image is malformed"):
        open_storage(f"sqlite:///{db}")  # a worker refuses it too, before touching it


def test_an_interrupt_that_lands_in_a_finalizer_is_not_lost():
    """Python only prints an exception raised inside a finalizer or weakref callback ("Exception ignored in"),
    so a Ctrl-C (or Ray's cancel) that arrived while one ran was lost: a cancelled Ray worker ran on and the
    driver waited for it, its traceback on the driver's stderr."""
    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # the handler runs at the next bytecode: still in here
            sum(range(1000))

    with pytest.raises(KeyboardInterrupt):
        with interrupts_between_storage_calls():
            Finalized()  # dropped at once
            time.sleep(5)  # without the fix the interrupt is gone and this runs to its end
