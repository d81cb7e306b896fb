"""The `hpo` command as a new user meets it (issue 13): one CLI style, one-line errors, paths relative to the
study file, Ctrl-C, overwrites, a busy port, and the small texts around them. Through its entry point in this
process (`hpo` below), and as a process of its own where the process is the point: what start-up imports,
Ctrl-C, a server stopped by a signal, a worker killed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cifarnet.config import to_toml
from hpo.definition.paths import resolve_artifact_dir
from hpo.storage import open_storage
from hpo.running.study import create_or_resume
from hpo.definition.study_file import load_study_file
from hpo.running.worker import begin_run
from tests.conftest import TINY_DATA, TINY_TRAIN
from tests.helpers import ENV, CliResult, hpo_popen, hpo_run, one_error_line, run_cli
from tests.hpo.studyfiles import write_study


def hpo(*args: str, cwd: Path | None = None, code: int = 0) -> CliResult:
    """`hpo ARGS` through its entry point in this process (tests.helpers.run_cli), ending with exit code `code`."""
    r = run_cli(*args, cwd=cwd)
    assert "Traceback" not in r.stderr and "╭" not in r.stderr, r.stderr  # never a traceback or a boxed panel
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    return r


def process_hpo(*args: str) -> subprocess.CompletedProcess:
    """`hpo ARGS` as a process of its own (what it imports at start-up is the point), ending with exit code 0."""
    r = hpo_run(*args)
    assert "Traceback" not in r.stderr and "╭" not in r.stderr, r.stderr
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def run_toml(folder: Path) -> Path:
    path = folder / "tiny-run.toml"
    path.write_text(to_toml(TINY_TRAIN, TINY_DATA))
    return path


# ---- one CLI style (issue 12) ----

def test_help_and_version_load_no_torch():
    code = "import sys, hpo.cli; print(sorted(m for m in ('torch', 'optuna', 'plotly') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    assert process_hpo("--version").stdout.startswith("hpo ")
    top = process_hpo("--help").stdout
    commands = [line.split()[0] for line in top.split("Commands:")[1].splitlines() if line.strip()]
    assert "worker" not in commands and "storage-proxy" in commands  # the old name is a hidden alias
    assert "join" in process_hpo("study", "--help").stdout


def test_inspection_commands_do_not_load_torch(tmp_path, study_name):
    """One fresh process runs every command in turn: torch is still not loaded after the last one, so none of
    them loaded it (each command's exit code and whether torch was loaded after it are printed as JSON)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    begin_run(load_study_file(write_study(tmp_path, study_name, url)))
    code = ("import json, sys; from hpo.cli import main\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    try:\n        main(args + ['--storage', sys.argv[2]])\n"
            "    except SystemExit as e:\n"
            "        print(json.dumps([args, e.code, 'torch' in sys.modules]), file=sys.stderr)\n")
    commands = [(["study", "status", study_name], 0), (["study", "list"], 0), (["study", "verify", study_name], 0),
                (["study", "best", study_name], 1), (["study", "summary", study_name], 0),
                (["report", study_name, "-o", "r.html"], 0)]
    r = subprocess.run([sys.executable, "-c", code, json.dumps([args for args, _ in commands]), url],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    ran = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("[[")]
    assert [(args, exit_code, False) for args, exit_code in commands] == [tuple(x) for x in ran], r.stderr


def test_defaults_copied_to_keep_help_light_match_the_library():
    from hpo.commands.distributed import GRPC_DEFAULT_PORT
    from hpo.storage import GRPC_DEFAULT_PORT as LIBRARY_PORT

    assert GRPC_DEFAULT_PORT == LIBRARY_PORT


def test_shared_options_read_their_environment_variables(tmp_path, monkeypatch):
    train_help = hpo("train", "--help").stdout
    assert "CIFAR10_DIR" in train_help and "[model]" in train_help and ", , ." not in train_help
    assert "HPO_STORAGE" in hpo("study", "list", "--help").stdout
    assert "--workers" not in hpo("study", "join", "--help").stdout  # item 11: --threads no longer names it
    db = tmp_path / "env.db"
    optuna.create_study(study_name="from-env", storage=f"sqlite:///{db}")
    monkeypatch.setenv("HPO_STORAGE", f"sqlite:///{db}")
    r = hpo("study", "list", "-f", "json")
    assert [row["name"] for row in json.loads(r.stdout)] == ["from-env"]


# ---- item 1: summary of a study with no finished trial ----

@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)  # what is printed: any storage does
def test_summary_of_a_study_whose_only_trial_was_interrupted(tmp_path, storage_url, study_name):
    spec = load_study_file(write_study(tmp_path, study_name, storage_url))
    study = create_or_resume(spec, open_storage(storage_url))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "interrupted"}))
    out = tmp_path / "summary.json"
    r = hpo("study", "summary", study_name, "--storage", storage_url, "-o", str(out))
    assert "0 complete" in r.stdout and "best: none yet" in r.stdout
    assert json.loads(out.read_text())["trials"]["complete"] == 0


# ---- item 3: paths in a study file are relative to the study file ----

def test_study_file_paths_resolve_against_its_folder_from_any_cwd(tmp_path):
    home, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (home / "studies").mkdir(parents=True)
    elsewhere.mkdir()
    path = write_study(home / "studies", "rel", "sqlite:///../hpo.db", study={"artifact_dir": "../arts"})
    spec = load_study_file(path)
    assert spec.storage == f"sqlite:///{home / 'hpo.db'}" and spec.artifact_dir == str(home / "arts")
    # --storage on the command line stays relative to the current folder.
    assert load_study_file(path, storage="sqlite:///x.db").storage == "sqlite:///x.db"

    checked = hpo("study", "check", str(path), "-f", "json", cwd=elsewhere).stdout
    assert json.loads(checked)["storage"] == f"sqlite:///{home / 'hpo.db'}"
    missing = one_error_line(hpo("study", "status", str(path), cwd=elsewhere, code=1))
    assert f"no study database at {home / 'hpo.db'}" in missing  # the absolute path, not "hpo.db"
    create_or_resume(spec)  # the study exists now: the same command from elsewhere finds it
    assert "study rel (sqlite:///" in hpo("study", "status", str(path), cwd=elsewhere).stdout
    # `hpo study list` in a folder without a database says so and leaves no empty hpo.db behind.
    assert f"no study database at {elsewhere / 'hpo.db'}" in one_error_line(
        hpo("study", "list", cwd=elsewhere, code=1))
    assert not (elsewhere / "hpo.db").exists()


def test_dashboard_on_a_study_file_from_another_folder(tmp_path):
    """The issue's case: `hpo dashboard /abs/path/studies/x.toml` from elsewhere serves the file's database."""
    (tmp_path / "studies").mkdir()
    path = write_study(tmp_path / "studies", "served", "sqlite:///../hpo.db")
    create_or_resume(load_study_file(path))
    (tmp_path / "elsewhere").mkdir()
    proc = hpo_popen("dashboard", str(path), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path / "elsewhere")
    try:
        assert proc.stdout.readline().startswith("optuna-dashboard on http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert not (tmp_path / "elsewhere" / "hpo.db").exists()


def test_a_copied_study_keeps_its_artifacts_beside_its_database(tmp_path):
    original = tmp_path / "machine-a"
    original.mkdir()
    spec = load_study_file(write_study(original, "copied", "sqlite:///study.db"))
    create_or_resume(spec)
    stored = optuna.load_study(study_name="copied", storage=spec.storage).user_attrs["artifact_dir"]
    assert stored == "artifacts/copied"  # relative to the database's folder, not machine A's absolute path
    copy = tmp_path / "machine-b"
    copy.mkdir()
    (copy / "study.db").write_bytes((original / "study.db").read_bytes())
    assert resolve_artifact_dir(stored, f"sqlite:///{copy / 'study.db'}") == copy / "artifacts" / "copied"


def test_two_slash_sqlite_url_says_four_for_an_absolute_path(tmp_path):
    message = one_error_line(hpo("study", "list", "--storage", "sqlite://tmp/x.db", cwd=tmp_path, code=1))
    assert "four (sqlite:////tmp/x.db)" in message


# ---- item 4 (CLI part): Ctrl-C is one error line; a stale RUNNING trial is flagged ----

def _interrupt_after(args: list[str], wait_for: str | None, delay: float = 0.0) -> subprocess.CompletedProcess:
    proc = hpo_popen(*args)
    if wait_for is None:
        time.sleep(delay)
    else:
        for line in proc.stdout:
            if line.startswith(wait_for):
                break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_ctrl_c_in_train_is_one_error_line(tmp_path, tiny_cifar):
    args = ["train", "--config", str(run_toml(tmp_path)), "--epochs", "50", "--data-dir", str(tiny_cifar),
            "--out", str(tmp_path / "run"), "--device", "cpu"]
    r = _interrupt_after(args, wait_for="epoch 1/50")
    assert r.returncode == 130 and "Traceback" not in r.stderr
    assert r.stderr.startswith("interrupted: ") and r.stderr.count("\n") == 1 and "--resume" in r.stderr


def test_ctrl_c_while_starting_prints_no_traceback(tmp_path, tiny_cifar):
    # Half a second in, `hpo train` is still importing (typer, then torch inside the command).
    r = _interrupt_after(["train", "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "run")], None, 0.5)
    assert r.returncode == 130 and "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr
    assert r.stderr == "interrupted: stopped before finishing\n" and r.stderr.count("\n") == 1


def test_status_flags_a_running_trial_whose_heartbeat_is_stale(tmp_path, storage_url, study_name):
    begin_run(load_study_file(write_study(tmp_path, study_name, storage_url)))  # as `hpo study start`; grace 3 s
    # A worker with optuna's heartbeat thread, stuck in its trial, then killed (no handler, no cleanup).
    worker = subprocess.Popen([sys.executable, "-c", (
        "import time, optuna; from hpo.storage import open_storage; from hpo.definition.study_file import WorkerSpec; "
        f"s = open_storage({storage_url!r}, WorkerSpec(heartbeat_interval=1, grace_period=3, max_retry=1)); "
        f"optuna.load_study(study_name={study_name!r}, storage=s).optimize(lambda t: time.sleep(600), n_trials=1)")],
        env=ENV)
    try:
        for _ in range(600):
            running = optuna.load_study(study_name=study_name, storage=storage_url).get_trials(
                states=(TrialState.RUNNING,))
            if running:
                break
            time.sleep(0.1)
        assert running, "the worker never started its trial"
        time.sleep(1.5)  # a heartbeat or two
        assert "stale" not in hpo("study", "status", study_name, "--storage", storage_url).stdout
    finally:
        worker.kill()
        worker.wait()
    time.sleep(4.5)  # past the grace period without a heartbeat
    r = hpo("study", "status", study_name, "--storage", storage_url)
    assert f"stale: trial {running[0].number} is RUNNING with a heartbeat" in r.stdout
    stale = json.loads(hpo("study", "status", study_name, "--storage", storage_url, "-f", "json").stdout)
    assert len(stale["stale_running"]) == 1
    verify = one_error_line(hpo("study", "verify", study_name, "--storage", storage_url, code=1))
    assert f"trial {running[0].number} is RUNNING with a heartbeat" in verify


# ---- items 6 and 7: one device check, flag values checked as flags ----

@pytest.mark.parametrize("args", [
    ["train", "--device", "gpu"],
    ["retrain", "somestudy", "--device", "gpu", "--out", "never"],
    ["study", "start", "studies/smoke.toml", "--device", "gpu"],
    ["study", "join", "studies/smoke.toml", "--device", "gpu"],
])
def test_one_device_check_everywhere(tmp_path, args):
    message = one_error_line(hpo(*args, code=2), code=2)
    assert "unknown device 'gpu' (use cpu, auto, cuda, cuda:N or a GPU index N)" in message
    assert not (tmp_path / "never").exists()  # retrain checked before creating its run folder


@pytest.mark.parametrize("args, flag", [
    (["export", "run", "--batch", "0"], "--batch"),
    (["study", "start", "s.toml", "--n-trials", "0"], "--n-trials"),
    (["study", "start", "s.toml", "--workers", "0"], "--workers"),
    (["train", "--subset", "5"], "--subset"),
    (["export", "run", "--format", "pdf"], "--format"),
    (["study", "best", "x", "-f", "yaml"], "--format"),
])
def test_bad_flag_values_are_one_usage_line(tmp_path, args, flag):
    message = one_error_line(hpo(*args, code=2), code=2)
    assert f"Invalid value for '{flag}'" in message or f"Invalid value for '-f' / '{flag}'" in message


def test_train_subset_larger_than_the_data_is_refused(tmp_path, tiny_cifar):
    r = hpo("train", "--config", str(run_toml(tmp_path)), "--subset", "100000", "--data-dir", str(tiny_cifar),
            "--out", str(tmp_path / "run"), "--device", "cpu", code=1)
    assert "train_size 100000 is more than the 160 training images left" in one_error_line(r)


# ---- items 8 and 10: overwrites, resume with a changed config, export of a `hpo train` folder ----

def test_train_refuses_to_overwrite_and_names_the_changed_field_then_exports(tmp_path, tiny_cifar):
    run = tmp_path / "run"
    base = ["train", "--config", str(run_toml(tmp_path)), "--epochs", "1", "--data-dir", str(tiny_cifar),
            "--device", "cpu", "-o", str(run)]
    hpo(*base)
    assert "--resume" in one_error_line(hpo(*base, code=1))  # like retrain: never silently overwritten
    changed = one_error_line(hpo(*base, "--resume", "--seed", "5", code=1))
    assert "different config (seed 0 -> 5)" in changed
    exported = hpo("export", str(run), "--batch", "4", "--format", "torchscript")
    assert "weights checkpoint.pt" in exported.stdout and (run / "model.pt2").is_file()


# ---- item 9: a busy port ----

def test_dashboard_on_a_busy_port_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    optuna.create_study(study_name="d", storage=url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = hpo("dashboard", "--storage", url, "--host", "127.0.0.1", "--port", str(port), code=1)
    assert f"port {port} is in use" in one_error_line(r) and "--port 0" in r.stderr


# ---- item 11: small texts ----

@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)  # what is printed: any storage does
def test_study_list_has_column_headers(tmp_path, storage_url, study_name):
    create_or_resume(load_study_file(write_study(tmp_path, study_name, storage_url)))
    lines = hpo("study", "list", "--storage", storage_url).stdout.splitlines()
    assert lines[0].split() == ["study", "trials", "best", "val_acc", "started"]
    assert any(line.startswith(study_name) for line in lines[1:])


def test_join_after_the_run_ended_says_nothing_is_left(tmp_path, tiny_cifar):
    path = write_study(tmp_path, "done", f"sqlite:///{tmp_path / 'done.db'}", study={"trials": 1})
    data = ["--data-dir", str(tiny_cifar), "--threads", "1", "--device", "cpu"]
    hpo("study", "start", str(path), *data)
    joined = hpo("study", "join", str(path), *data)
    assert "nothing left to do" in joined.stdout
    assert hpo("study", "verify", str(path)).stdout == "study done: consistent\n"
    assert "nothing left to do" in hpo("worker", str(path), *data).stdout  # the old name still works


def test_join_on_a_missing_database_creates_nothing(tmp_path, tiny_cifar):
    path = write_study(tmp_path, "elsewhere", f"sqlite:///{tmp_path / 'typo.db'}")
    err = one_error_line(hpo("study", "join", str(path), "--data-dir", str(tiny_cifar), code=1))
    assert f"no study database at {tmp_path / 'typo.db'}" in err
    assert not (tmp_path / "typo.db").exists()


def test_grpc_proxy_storage_warns_that_heartbeats_are_off(tmp_path, tiny_cifar):
    path = write_study(tmp_path, "proxied", "grpc://127.0.0.1:1")
    # A process of its own (gRPC stays out of the test process, which forks many more), waiting 1 s instead of
    # CONNECT_TIMEOUT_S (10) for the proxy that is not there.
    code = "import sys, hpo.storage.proxy as p; p.CONNECT_TIMEOUT_S = 1; from hpo.cli import main; main(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, "study", "start", str(path), "--data-dir", str(tiny_cifar)],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 1 and "cannot reach the storage proxy at grpc://127.0.0.1:1 within 1 s" in r.stderr
    assert r.stderr.startswith("warning: through the gRPC storage proxy optuna keeps no heartbeats")
    assert "keeps no heartbeats" in r.stderr and "Traceback" not in r.stderr


# ---- item 12: tests write only under their temporary folders ----

def test_tests_run_in_their_temporary_folder(tmp_path):
    assert Path.cwd() == tmp_path  # tests/conftest.py: relative defaults (hpo.db, artifacts/, runs/) land here
