"""`hpo retrain` as a command: its defaults come from the study file's [retrain] table, and SIGTERM (from
`timeout`, a scheduler, a container stop) stops it the way Ctrl-C does: one line, exit 143, and the study records
the retrain as interrupted instead of leaving it "running" for ever."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import optuna

from cifarnet.config import TrainConfig
import pytest

from hpo.definition.study_file import load_study_file
from hpo.results.retrain import RetrainOptions, prepare_retrain
from hpo.results.retrain_records import retrain_records
from hpo.running.worker import WorkerOptions, start_study
from tests.hpo.studyfiles import write_study

HPO = str(Path(sys.executable).parent / "hpo")


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_cifar):
    folder = tmp_path_factory.mktemp("sigterm")
    url = f"sqlite:///{folder / 'study.db'}"
    spec = load_study_file(write_study(folder, "sig", url, budget={"epochs": 1},
                                       study={"artifact_dir": str(folder / "artifacts")},
                                       retrain={"target": 0.3, "max_epochs": 2, "train_size": 100,
                                                "tta_shift": 1}), n_trials=2)
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


def test_the_study_files_retrain_table_sets_the_defaults_and_flags_override_them(study, tmp_path):
    plan = prepare_retrain("sig", RetrainOptions(storage=study, out=tmp_path / "a", finalists=False))
    assert (plan.cfg.epochs, plan.target, plan.data.train_size, plan.data.val_size) == (2, 0.3, 100, 0)
    # evaluated with the extra views the table asks for; trained exactly as searched (views train nothing)
    assert plan.cfg.tta_shift == 1 and plan.trial.user_attrs["config"]["tta_shift"] == 0
    assert plan.cfg.replace(tta_shift=0, epochs=1, seed=0) == TrainConfig.from_dict(plan.trial.user_attrs["config"])
    flags = prepare_retrain("sig", RetrainOptions(storage=study, out=tmp_path / "b", target=0.5, max_epochs=3,
                                                  finalists=False))
    assert (flags.cfg.epochs, flags.target, flags.data.train_size) == (3, 0.5, 100)


def test_the_smoke_study_retrains_in_minutes_not_a_quarter_of_an_hour():
    spec = load_study_file(Path(__file__).resolve().parents[2] / "studies" / "smoke.toml")
    # the default 30 epochs of 50k images at batch 16 took ~15 minutes; the smoke study's [retrain] asks for 2
    assert spec.retrain.max_epochs <= 2 and spec.retrain.target < 0.5
