"""SIGTERM (from `timeout`, a scheduler, a container stop) stops `hpo retrain` the way Ctrl-C does: one line,
exit 143, and the study records the retrain as interrupted instead of leaving it "running" for ever."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hpo.definition.study_file import load_study_file
from hpo.results.retrain_records import retrain_records
from hpo.running.worker import WorkerOptions, start_study
from tests.hpo.studyfiles import write_study

HPO = str(Path(sys.executable).parent / "hpo")


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_cifar):
    folder = tmp_path_factory.mktemp("sigterm")
    url = f"sqlite:///{folder / 'study.db'}"
    spec = load_study_file(write_study(folder, "sig", url, budget={"epochs": 1},
                                       study={"artifact_dir": str(folder / "artifacts")}), n_trials=2)
    start_study(spec, WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1, out=io.StringIO()))
    return url


def test_sigterm_records_the_retrain_as_interrupted(study, tiny_cifar, tmp_path):
    args = [HPO, "retrain", "sig", "--storage", study, "--target", "1.0", "--max-epochs", "40", "--no-finalists",
            "--out", str(tmp_path / "run"), "--data-dir", str(tiny_cifar), "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/40"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    assert err.startswith("interrupted: ") and err.count("\n") == 1 and "--resume" in err
    [record] = retrain_records(optuna.load_study(study_name="sig", storage=study))
    assert record["status"] == "interrupted"
