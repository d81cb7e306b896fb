"""What `hpo study ...` prints about the records in a database (issue items 9, 12, 13, 14): text from the
database escaped, `verify -f json`, re-runs named as such, the stored study file, `join` after the run ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

HPO = str(Path(sys.executable).parent / "hpo")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def hpo(*args: str, code: int = 0, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([HPO, *args], capture_output=True, text=True, env=env or ENV, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    return r


# ---- item 9: names and reasons from the database never drive the terminal ----

EVIL_NAME = "evil\x1b[2J\x1b[H\nzzz-forged      99  1.0000        2026-01-01"
EVIL_REASON = "boom\x1b]0;pwned\x07\r\ntrial 9: all fine\x9b31m\u202e"


def _evil_study(url: str) -> None:
    study = optuna.create_study(study_name=EVIL_NAME, storage=url, direction="maximize")
    study.optimize(lambda t: len(t.suggest_categorical("colour", ["red\x1b[31m", "red\x1b[31m"])) / 10, n_trials=1)
    failed = study.ask()
    failed.set_user_attr("fail_reason", EVIL_REASON)
    study.tell(failed, state=TrialState.FAIL)


def _assert_safe(text: str) -> None:
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) < 0xa0 or c == "\u202e" for c in text), repr(text)


def test_database_text_reaches_the_terminal_escaped(tmp_path):
    url = f"sqlite:///{tmp_path / 'evil.db'}"
    _evil_study(url)

    listed = hpo("study", "list", "--storage", url).stdout
    _assert_safe(listed)
    assert len(listed.splitlines()) == 2  # the header and one study: no forged row
    assert listed.splitlines()[1].startswith("evil\\x1b[2J\\x1b[H\\nzzz-forged")

    status = hpo("study", "status", EVIL_NAME, "--storage", url).stdout
    _assert_safe(status)
    assert "trial 1: boom\\x1b]0;pwned\\x07\\r\\ntrial 9: all fine\\x9b31m\\u202e" in status
    assert not any(line.startswith("trial 9") for line in status.splitlines())

    best = hpo("study", "best", EVIL_NAME, "--storage", url).stdout
    _assert_safe(best)
    assert "red\\x1b[31m" in best

    verify = hpo("study", "verify", EVIL_NAME, "--storage", url, code=1).stderr  # not created by hpo
    _assert_safe(verify)
    assert verify.startswith("error: ") and verify.count("\n") == 1

    # JSON keeps the exact text (json escapes control characters itself).
    rows = json.loads(hpo("study", "list", "--storage", url, "-f", "json").stdout)
    assert [r["name"] for r in rows] == [EVIL_NAME]
    record = json.loads(hpo("study", "status", EVIL_NAME, "--storage", url, "-f", "json").stdout)
    assert [1, EVIL_REASON] in record["failures"]


# ---- item 12: `hpo study verify -f json` ----

def test_verify_prints_its_record_as_json(tmp_path):
    from hpo.definition.study_file import load_study_file
    from hpo.running.worker import begin_run
    from tests.hpo.studyfiles import write_study

    url = f"sqlite:///{tmp_path / 'v.db'}"
    begin_run(load_study_file(write_study(tmp_path, "good", url)))
    good = json.loads(hpo("study", "verify", "good", "--storage", url, "-f", "json").stdout)
    assert good == {"study": "good", "storage": url, "consistent": True, "problems": []}

    optuna.create_study(study_name="plain", storage=url)  # no study_file, artifact_dir, run_budget
    r = hpo("study", "verify", "plain", "--storage", url, "--format", "json", code=1)
    bad = json.loads(r.stdout)
    assert bad["consistent"] is False and any("study_file" in p for p in bad["problems"])
    assert r.stderr.startswith("error: study 'plain' is inconsistent: ") and r.stderr.count("\n") == 1


# ---- item 13: a re-run is named as such; the stored study file keeps the file's budget ----

def _baseline_interrupted_then_rerun(tmp_path: Path) -> tuple[str, optuna.Study]:
    """A study whose baseline (trial 0) was interrupted and whose re-run (trial 1) completed, as
    `hpo study start` leaves it after Ctrl-C and a second start (stand-in values, no training)."""
    from hpo.definition.study_file import load_study_file
    from hpo.running.study import INTERRUPTED_REASON, requeue_interrupted
    from hpo.running.worker import begin_run
    from tests.hpo.studyfiles import write_study

    url = f"sqlite:///{tmp_path / 'r.db'}"
    begin_run(load_study_file(write_study(tmp_path, "rerun", url)))
    study = optuna.load_study(study_name="rerun", storage=url)
    first = study.ask()
    first.set_user_attr("fail_reason", INTERRUPTED_REASON)
    study.tell(first, state=TrialState.FAIL)
    assert requeue_interrupted(study) == [0]
    again = study.ask()
    assert again.number == 1 and again.user_attrs["seed_baseline"]
    study.tell(again, 0.5)
    return url, study


def test_status_and_report_name_the_rerun_of_an_interrupted_trial(tmp_path):
    from dashboard.report import build_report

    url, study = _baseline_interrupted_then_rerun(tmp_path)
    status = hpo("study", "status", "rerun", "--storage", url).stdout
    assert "trial 0: interrupted; re-run as trial 1 (complete)" in status
    assert "trials: 1 complete, 0 pruned, 1 failed (1 re-run), 0 running, 0 waiting" in status
    record = json.loads(hpo("study", "status", "rerun", "--storage", url, "-f", "json").stdout)
    assert record["rerun_as"] == {"0": 1} and record["failures"] == [[0, "interrupted; re-run as trial 1 (complete)"]]

    page = build_report(study)
    assert "#0 (original CifarNet): re-run as trial 1 (complete): val_acc 0.5000" in page
    assert "(original CifarNet): fail" not in page


def test_a_lost_worker_trial_names_its_rerun_and_one_without_a_rerun_says_it_may_come(tmp_path):
    from hpo.running.study import requeue_interrupted

    url, study = _baseline_interrupted_then_rerun(tmp_path)
    lost = study.ask()  # trial 2: its worker died (no fail_reason), its re-run is still queued
    study.tell(lost, state=TrialState.FAIL)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={
        "failed_trial": 2, "retry_history": [2]}))
    gone = study.ask()  # trial 3 is the queued re-run; trial 4 fails with no re-run at all
    assert gone.number == 3
    study.tell(study.ask(), state=TrialState.FAIL)
    assert requeue_interrupted(study) == []
    status = hpo("study", "status", "rerun", "--storage", url).stdout
    assert "trial 2: worker lost (no heartbeat); re-run as trial 3 (running)" in status
    assert "trial 4: worker lost (no heartbeat); re-queued when retries were left" in status


def test_start_with_n_trials_keeps_the_files_budget_in_the_stored_study_file(tmp_path, tiny_cifar):
    from tests.hpo.studyfiles import write_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    path = write_study(tmp_path, "budget", url, study={"trials": 3})
    hpo("study", "start", str(path), "--n-trials", "1", "--data-dir", str(tiny_cifar), "--threads", "1",
        "--device", "cpu")
    study = optuna.load_study(study_name="budget", storage=url)
    assert study.user_attrs["study_file"]["study"]["trials"] == 3  # the file's, not the run's
    assert study.user_attrs["run_budget"]["n_trials"] == 1 and len(study.trials) == 1  # the run's own

    # ---- item 14: the run has ended, so `join` has nothing to do and needs no CIFAR-10 folder ----
    no_data = {k: v for k, v in ENV.items() if k != "CIFAR10_DIR"}
    joined = hpo("study", "join", str(path), "--device", "cpu", env=no_data)
    assert "nothing left to do" in joined.stdout and joined.stderr == ""
    assert len(optuna.load_study(study_name="budget", storage=url).trials) == 1


def test_every_error_line_escapes_what_it_quotes(tmp_path):
    """An error quoting a name from a database or a file (here: a study the database does not hold, among
    studies whose names carry escape sequences) stays one safe line."""
    from tests.helpers import run_cli

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="evil\x1b[2J\nforged line", storage=url)
    r = run_cli("study", "status", "missing", "--storage", url)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "\x1b" not in r.stderr
    assert "evil\\x1b[2J\\nforged line" in r.stderr
