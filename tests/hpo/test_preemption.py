"""Preemption-safe trials (hpo.running.checkpoints) on the real PostgreSQL and a real SQLite file: a trial whose worker
is SIGKILLed at epoch k continues at epoch k in its re-run and ends with exactly the metrics of an uninterrupted
run (CPU, fp32, one thread); finished trials' checkpoints are removed or kept as the study file says."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cifarnet.train import load_checkpoint
from hpo.results.consistency import check_consistency
from hpo.definition.study_file import load_study_file
from hpo.running.worker import WorkerOptions, start_study
from tests.conftest import write_cifar_batches
from tests.helpers import hpo_popen, run_cli, storage_for, trials_of, wait_for
from tests.hpo.studyfiles import write_study

EPOCHS = 6
# What must match exactly between the resumed and the uninterrupted run (timings differ, of course).
METRICS = ("epoch", "train_loss", "train_acc", "train_images", "val_acc", "val_loss", "lr")


@pytest.fixture(scope="module")
def slower_cifar(tmp_path_factory) -> Path:
    """5 x 200 training images: an epoch lasts long enough (~60 steps) to stop the worker in the middle."""
    return write_cifar_batches(tmp_path_factory.mktemp("cifar1000"), per_batch=200)


def start(path: Path, data: Path, cwd: Path) -> subprocess.Popen:
    return hpo_popen("study", "start", str(path), "--n-trials", "1", "--threads", "1", "--device", "cpu",
                     "--data-dir", str(data), cwd=cwd)


def curve(trial: optuna.trial.FrozenTrial) -> list[dict]:
    return [{k: m[k] for k in METRICS} for m in trial.user_attrs["curve"]]


def test_sigkilled_trial_resumes_at_its_last_epoch_with_the_uninterrupted_metrics(tmp_path, slower_cifar, pg_url,
                                                                                  study_name):
    killed, whole = f"{study_name}-killed", f"{study_name}-whole"
    budget = {"epochs": EPOCHS}
    paths = {name: write_study(tmp_path, name, pg_url, budget=budget, study={"artifact_dir": str(tmp_path / name)})
             for name in (killed, whole)}
    reference = start(paths[whole], slower_cifar, tmp_path)  # the same trial 0, never interrupted
    victim = start(paths[killed], slower_cifar, tmp_path)
    wait_for(lambda: [t for t in trials_of(pg_url, killed) if len(t.user_attrs.get("curve", [])) >= 2], victim,
             "trial 0 finished 2 epochs")
    victim.send_signal(signal.SIGSTOP)  # freeze it, read what it had checkpointed, then kill it
    store = tmp_path / killed
    k = load_checkpoint(store / trials_of(pg_url, killed)[0].user_attrs["checkpoint"])["epoch"]
    victim.kill()
    victim.communicate()
    assert 2 <= k < EPOCHS
    time.sleep(4)  # its heartbeat goes stale after the grace period (3 s): the next worker fails and re-runs it

    rerun = start(paths[killed], slower_cifar, tmp_path)
    assert rerun.wait(timeout=120) == 0, rerun.communicate()
    assert reference.wait(timeout=120) == 0, reference.communicate()

    dead, resumed = trials_of(pg_url, killed)
    assert dead.state == TrialState.FAIL and resumed.state == TrialState.COMPLETE
    assert resumed.system_attrs["retry_history"] == [0] and resumed.params == dead.params
    assert resumed.user_attrs["resumed_from_trial"] == 0 and resumed.user_attrs["resumed_at_epoch"] == k
    # Epochs 1..k were not trained again: the re-run carries the dead attempt's records, timings included.
    assert [m["epoch"] for m in resumed.user_attrs["curve"]] == list(range(1, EPOCHS + 1))
    assert resumed.user_attrs["curve"][:2] == dead.user_attrs["curve"][:2]
    uninterrupted = trials_of(pg_url, whole)[0]
    assert curve(resumed) == curve(uninterrupted)
    assert resumed.intermediate_values == uninterrupted.intermediate_values and resumed.value == uninterrupted.value
    assert (store / "checkpoints").is_dir() and not list((store / "checkpoints").glob("**/*.pt"))
    assert check_consistency(storage_for(pg_url), killed) == []


@pytest.mark.parametrize("keep", [False, True])
def test_finished_trials_checkpoints_are_removed_unless_kept(tmp_path, tiny_cifar, study_name, keep):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = write_study(tmp_path, study_name, url, budget={"epochs": 2}, workers={"keep_checkpoints": keep})
    spec = load_study_file(path, n_trials=2)
    start_study(spec, WorkerOptions(data_dir=str(tiny_cifar), threads=1, device="cpu", out=open(os.devnull, "w")))
    trials = optuna.load_study(study_name=study_name, storage=url).trials
    assert [t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials] == [True, True]
    store = Path(spec.artifact_dir)
    kept = sorted(p.name for p in (store / "checkpoints").glob("*/*.pt"))  # checkpoints/<study uid>/trial-N.pt
    assert kept == (["trial-0.pt", "trial-1.pt"] if keep else [])
    if keep:
        for t in trials:  # the last epoch each trial finished (a pruned one stops early)
            assert load_checkpoint(store / t.user_attrs["checkpoint"])["epoch"] == len(t.user_attrs["curve"])


def test_checkpoints_live_in_the_store_whatever_the_working_directory(tmp_path, tiny_cifar, study_name):
    """A SQLite study stores its artifact folder relative to the database; a worker started from another folder
    must still checkpoint into it (it once wrote `artifacts/...` under its own working directory)."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    url = f"sqlite:///{home / 'study.db'}"
    path = write_study(home, study_name, url, budget={"epochs": 2}, workers={"keep_checkpoints": True})
    proc = run_cli("study", "start", str(path), "--n-trials", "1", "--threads", "1", "--device", "cpu",
                   "--data-dir", str(tiny_cifar), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name=study_name, storage=url)
    assert not Path(study.user_attrs["artifact_dir"]).is_absolute()  # stored relative to the database
    trial = study.trials[0]
    checkpoint = home / study.user_attrs["artifact_dir"] / trial.user_attrs["checkpoint"]
    assert load_checkpoint(checkpoint)["epoch"] == len(trial.user_attrs["curve"])
    assert list(elsewhere.iterdir()) == []
