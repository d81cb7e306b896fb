"""The one Ctrl-C line of `hpo study start` names every trial that was running (each marked failed and queued
again), so a user knows what the next start re-runs."""

from __future__ import annotations

import re
import signal

from optuna.trial import TrialState

from tests.conftest import write_cifar_batches
from tests.helpers import hpo_popen, trials_of, wait_for
from tests.hpo.studyfiles import write_study


def test_ctrl_c_names_the_trials_that_were_running(tmp_path, study_name):
    data = write_cifar_batches(tmp_path / "data", per_batch=100)  # epochs long enough to be interrupted in
    url = f"sqlite:///{tmp_path / 's.db'}"
    path = write_study(tmp_path, study_name, url, budget={"epochs": 20})
    proc = hpo_popen("study", "start", str(path), "--n-trials", "4", "--workers", "2", "--threads", "1",
                     "--data-dir", str(data), "--device", "cpu", cwd=tmp_path)

    def two_training():
        running = [t for t in trials_of(url, study_name) if t.state == TrialState.RUNNING and t.user_attrs.get("curve")]
        return len(running) == 2

    wait_for(two_training, proc, "two trials past their first epoch", timeout_s=240)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    interrupted = sorted(t.number for t in trials_of(url, study_name) if t.user_attrs.get("fail_reason") == "interrupted")
    assert len(interrupted) == 2
    assert line.startswith("interrupted: ") and line.endswith("; run the same command to resume")
    assert re.search(rf"\(trials {interrupted[0]}, {interrupted[1]}\)", line), line
