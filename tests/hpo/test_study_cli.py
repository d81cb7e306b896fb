"""The `hpo study ...` / `hpo worker` commands on real storage (SQLite file and PostgreSQL): start -> best as
JSON, K parallel workers (a process of their own each), and a killed worker's trial re-run."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tests.dashboard_api import dashboard_trials
from tests.helpers import ENV, HPO, CliResult, hpo_run, run_cli, storage_for, trials_of, wait_for
from tests.hpo.studyfiles import write_study


def hpo(*args: str) -> CliResult:
    """`hpo ARGS` through its entry point in this process (tests.helpers.run_cli), succeeding."""
    r = run_cli(*args)
    assert "Traceback" not in r.stderr
    assert r.returncode == 0, r.stderr
    return r


def test_start_then_best_as_json(tmp_path, tiny_cifar, storage_url, study_name):
    # Resuming is the same start_study call, tested in-process (test_study.py).
    path = write_study(tmp_path, study_name, storage_url)
    first = hpo("study", "start", str(path), "--n-trials", "2", "--data-dir", str(tiny_cifar), "--threads", "1")
    assert first.stdout.count(" done: ") == 2 and "ETA" in first.stdout  # one line per finished trial
    trials = trials_of(storage_url, study_name)
    assert [t.number for t in trials] == [0, 1] and trials[0].user_attrs["seed_baseline"]
    _assert_annotated(storage_url, study_name)

    best = json.loads(hpo("study", "best", study_name, "--storage", storage_url, "--format", "json").stdout)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert best["val_acc"] == max(t.value for t in done) and best["trial"] in [t.number for t in done]
    assert best["config"]["model"]["widths"][0] == best["params"]["width1"]


def _assert_annotated(url: str, name: str) -> None:
    """Every finished trial has its optuna-dashboard note and per-epoch table (written by the workers)."""
    study = optuna.load_study(study_name=name, storage=storage_for(url))
    artifact_dir = Path(study.user_attrs["artifact_dir"])
    assert study.metric_names == ["val_acc"]
    for t in dashboard_trials(storage_for(url), name):
        assert t["note"]["body"].startswith(f"## Trial {t['number']}: ")
        files = {a["filename"]: a["artifact_id"] for a in t["artifacts"]}
        assert set(files) == {"curve.csv"}
        assert (artifact_dir / files["curve.csv"]).read_text().startswith("epoch,")


def test_parallel_workers_share_one_storage(tmp_path, tiny_cifar, storage_url, study_name):
    path = write_study(tmp_path, study_name, storage_url, budget={"epochs": 3})
    r = hpo_run("study", "start", str(path), "--n-trials", "4", "--workers", "2", "--threads", "1",
                "--data-dir", str(tiny_cifar), cwd=tmp_path)  # spawns its 2 workers
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "locked" not in r.stdout + r.stderr
    trials = trials_of(storage_url, study_name)
    finished = [t for t in trials if t.state.is_finished()]
    assert 4 <= len(finished) == len(trials) <= 5  # no lock (like MaxTrialsCallback): up to workers - 1 more
    assert len({t.user_attrs["worker"] for t in finished if "worker" in t.user_attrs}) == 2
    assert sum(bool(t.user_attrs.get("seed_baseline")) for t in trials) == 1


def test_killed_worker_trial_is_failed_and_rerun(tmp_path, tiny_cifar, storage_url, study_name):
    # Long enough (15 epochs) to be caught running; heartbeat 1 s, grace period 2 s.
    path = write_study(tmp_path, study_name, storage_url, budget={"epochs": 15}, workers={"grace_period": 2})
    data = ["--data-dir", str(tiny_cifar), "--threads", "1"]
    proc = subprocess.Popen([HPO, "study", "start", str(path), "--n-trials", "1", *data], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.txt", "w"), env=ENV)
    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING and t.user_attrs.get("curve")
                             for t in trials_of(storage_url, study_name)), proc, "a trial finished an epoch", 60)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(3)  # let its heartbeat go stale (grace period 2 s)

    r = hpo("study", "join", str(path), *data)  # joins the run and finds the dead trial
    killed, rerun = trials_of(storage_url, study_name)
    assert killed.state == TrialState.FAIL and "fail_reason" not in killed.user_attrs
    assert rerun.state == TrialState.COMPLETE and rerun.params == killed.params
    assert rerun.system_attrs["failed_trial"] == 0 and rerun.user_attrs["seed_baseline"]
    assert "trial 0: worker lost (no heartbeat)" in r.stdout
