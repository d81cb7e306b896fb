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
