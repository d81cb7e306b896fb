"""open_storage: real SQLite and PostgreSQL open alike; bad URLs give one clear line, from the library and
the installed CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hpo.errors import StorageError
from hpo.storage import Heartbeat, display_url, open_storage

HPO = str(Path(sys.executable).parent / "hpo")
STUDIES = Path(__file__).resolve().parents[2] / "studies"


def test_open_storage_creates_schema_with_heartbeat(storage_url, study_name):
    storage = open_storage(storage_url, Heartbeat(interval=5, grace_period=15, max_retry=1))
    assert storage.get_heartbeat_interval() == 5
    assert isinstance(storage.get_heartbeat_stale_trial_callback(),
                      optuna.storages.RetryHeartbeatStaleTrialCallback)
    optuna.create_study(storage=storage, study_name=study_name)
    assert study_name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(storage_url))}


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
    r = subprocess.run([HPO, *args, "--data-dir", str(tiny_cifar)] if args[1] == "start" else [HPO, *args],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and not r.stdout
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "storage" in r.stderr
