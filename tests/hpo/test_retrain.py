"""Retraining a study's trial: exact config replay, stop at target, resume after a kill, artifacts, CLI errors.

The study under test is built with plain optuna on a real database, trials carrying the conventional user_attrs
(config from hpo.space.suggest_config, exactly as the objective writes it) and the study's "study_file".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from cifarnet.config import TrainConfig, load_run_file
from cifarnet.train import load_checkpoint
from hpo.retrain import RetrainError, RetrainOptions, prepare_retrain, retrain_best
from hpo.space import suggest_config
from hpo.storage import open_storage
from hpo.studyfile import spec_from_dict
from tests.conftest import TINY_TRAIN

HPO = str(Path(sys.executable).parent / "hpo")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the CLI in a subprocess: one thread too, see one_thread
TIMING_KEYS = ("train_time_s", "eval_time_s", "images_per_s")  # the only metrics allowed to differ between runs
VALUES = {0: 0.31, 1: 0.42, 2: 0.37}  # search values of the COMPLETE trials: trial 1 is the best


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on shared cores: one thread is ~10x faster than two threads fighting other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_study(url: str, name: str, root: Path) -> optuna.Study:
    """Trials 0-2 COMPLETE, 3 PRUNED, 4 FAIL; user_attrs as the objective writes them (no training here)."""
    raw = {
        "study": {"name": name, "storage": url, "trials": 5, "artifact_dir": str(root / "artifacts")},
        "budget": {"epochs": 2, "val_size": 40},
        "train": {k: v for k, v in TINY_TRAIN.to_dict().items() if k != "epochs"},
        "space": {"lr": {"low": 0.02, "high": 0.2, "log": True}, "width4": {"choices": [8, 12]},
                  "label_smoothing": {"low": 0.0, "high": 0.1}},
    }
    spec = spec_from_dict(raw)
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("study_file", spec.raw)
    study.set_user_attr("artifact_dir", spec.artifact_dir)

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest_config(spec.space, trial, spec.base)
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("data", spec.data.__dict__)
        if trial.number == 3:
            trial.set_user_attr("pruned_at_epoch", 1)
            raise optuna.TrialPruned()
        if trial.number == 4:
            trial.set_user_attr("fail_reason", "RuntimeError: boom")
            raise RuntimeError("boom")
        return VALUES[trial.number]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=5, catch=(RuntimeError,))
    return study


@pytest.fixture
def sqlite_study(tmp_path, study_name) -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return make_study(url, study_name, tmp_path), url


def _options(url: str, data: Path, out: Path, **kw) -> RetrainOptions:
    return RetrainOptions(storage=url, out=out, data_dir=str(data), device="cpu", progress=False, **kw)


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_replay_gives_the_searched_config_with_only_epochs_and_seed_changed(sqlite_study, tiny_cifar, tmp_path):
    study, url = sqlite_study
    trial = study.trials[2]  # not the best: an explicitly chosen trial
    plan = prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "run", trial=2, max_epochs=7))
    stored = TrainConfig.from_dict(trial.user_attrs["config"])
    assert plan.trial.number == 2
    assert plan.cfg.epochs == 7  # the schedule is sized for --max-epochs
    assert plan.cfg.replace(epochs=stored.epochs) == stored
    assert plan.cfg.lr == trial.params["lr"] and plan.cfg.model.widths[3] == trial.params["width4"]
    assert plan.data.val_size == 0 and plan.data.test_size is None and plan.data.train_size is None
    assert prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "r2")).trial.number == 1  # best
    assert prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "r3", seed=5)).cfg.seed == 5


def test_replay_refuses_a_trial_whose_stored_config_differs(sqlite_study, tiny_cifar, tmp_path):
    study, url = sqlite_study
    good = study.trials[0]
    tampered = {**good.user_attrs["config"], "weight_decay": 0.01}
    study.add_trial(optuna.trial.create_trial(params=good.params, distributions=good.distributions, value=0.1,
                                              user_attrs={"config": tampered}))
    with pytest.raises(RetrainError, match="differs in: weight_decay"):
        prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "run", trial=5))


def test_stops_at_first_epoch_reaching_target_and_writes_the_run_folder(sqlite_study, tiny_cifar, tmp_path):
    study, url = sqlite_study
    out = tmp_path / "run"
    result = retrain_best(study.study_name, _options(url, tiny_cifar, out, target=0.25, max_epochs=10))
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    accs = [h["test_acc"] for h in history]
    assert result.status == "reached" and result.trial == 1
    assert result.epochs_to_target == result.epochs_run == len(history) < 10
    assert accs[-1] >= 0.25 and all(a < 0.25 for a in accs[:-1])
    cfg, data = load_run_file(out / "config.toml")
    assert cfg.epochs == 10 and data.val_size == 0  # schedule sized for max epochs, not for where it stopped
    assert "sized for --max-epochs 10" in json.loads((out / "retrain.json").read_text())["schedule"]
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,") and len(csv_lines) == len(history) + 1
    html = (out / "learning_curve.html").read_text()
    assert "<script src=" not in html and "Plotly.newPlot" in html  # plotly.js inlined: works offline
    best = load_checkpoint(out / "best.pt")
    assert best["test_acc"] == max(accs) and best["epoch"] == accs.index(max(accs)) + 1
    assert load_checkpoint(out / "final.pt")["epoch"] == len(history)
    # Resuming a finished run (e.g. killed between its last checkpoint and the end) trains nothing more.
    again = retrain_best(study.study_name, _options(url, tiny_cifar, out, target=0.25, max_epochs=10, resume=True))
    assert (again.epochs_run, again.epochs_to_target, again.final_test_acc) == (
        result.epochs_run, result.epochs_to_target, result.final_test_acc)


def test_retrain_killed_mid_run_resumes_to_the_same_result_as_an_uninterrupted_one(sqlite_study, tiny_cifar,
                                                                                   tmp_path):
    study, url = sqlite_study
    straight = retrain_best(study.study_name, _options(url, tiny_cifar, tmp_path / "a", target=1.0, max_epochs=6))
    args = [HPO, "retrain", study.study_name, "--storage", url, "--target", "1.0", "--max-epochs", "6",
            "--out", str(tmp_path / "b"), "--data-dir", str(tiny_cifar), "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**ENV, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith("epoch 1/6"):
            proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: like a lost machine
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] < 6  # it really was cut short
    assert optuna.load_study(study_name=study.study_name, storage=url).user_attrs["retrain"]["status"] == "running"
    with pytest.raises(RetrainError, match="--resume"):  # a fresh run must not overwrite the checkpoint
        prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "b", target=1.0, max_epochs=6))
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    assert "resuming its checkpoint" in done.stdout and "MISSED target 1" in done.stdout
    assert f"final {straight.final_test_acc:.4f}, best {straight.best_test_acc:.4f}" in done.stdout
    _assert_same_run(tmp_path / "a", tmp_path / "b")


def _assert_same_run(a: Path, b: Path) -> None:
    ha = json.loads((a / "metrics.json").read_text())["epochs"]
    hb = json.loads((b / "metrics.json").read_text())["epochs"]
    assert _comparable(ha) == _comparable(hb)
    for name in ("final.pt", "best.pt"):
        wa, wb = load_checkpoint(a / name), load_checkpoint(b / name)
        assert wa["epoch"] == wb["epoch"]
        assert all(torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])


def test_outcome_and_artifacts_are_stored_in_the_study(storage_url, study_name, tiny_cifar, tmp_path):
    make_study(storage_url, study_name, tmp_path)
    out = tmp_path / "run"
    result = retrain_best(study_name, _options(storage_url, tiny_cifar, out, target=1.0, max_epochs=2))
    assert result.status == "missed" and result.epochs_to_target is None and result.epochs_run == 2
    assert "MISSED" in result.summary()
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    record = study.user_attrs["retrain"]
    assert record["status"] == "missed" and record["trial"] == 1 and record["run_dir"] == str(out.resolve())
    assert record["epochs_to_target"] is None and record["epochs_run"] == 2
    assert record["best_test_acc"] == result.best_test_acc and record["final_test_acc"] == result.final_test_acc
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    metas = {m.filename: m for m in optuna.artifacts.get_all_artifact_meta(study)}
    assert set(metas) == set(record["artifacts"]) == {
        f"retrain-trial1-{n}" for n in ("final.pt", "best.pt", "config.toml", "metrics.json", "metrics.csv",
                                        "learning_curve.html")}
    for filename, meta in metas.items():
        assert record["artifacts"][filename] == meta.artifact_id
        copy = tmp_path / "download" / filename
        copy.parent.mkdir(exist_ok=True)
        optuna.artifacts.download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(copy))
        assert copy.read_bytes() == (out / filename.removeprefix("retrain-trial1-")).read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--trial", "99"], "has no trial 99 (trials are 0..4)"),
    (["--trial", "3"], "trial 3 of study '{name}' is PRUNED, not COMPLETE"),
    ([], "no study named 'no-such-study'"),
])
def test_cli_bad_input_is_one_clear_line(sqlite_study, tiny_cifar, tmp_path, extra, message):
    study, url = sqlite_study
    name = "no-such-study" if not extra else study.study_name
    r = subprocess.run([HPO, "retrain", name, "--storage", url, "--data-dir", str(tiny_cifar),
                        "--out", str(tmp_path / "run"), *extra], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 1
    assert r.stderr.strip() == r.stderr.strip().splitlines()[0]  # one line, no traceback
    assert r.stderr.startswith("error: ") and message.format(name=study.study_name) in r.stderr
    assert not (tmp_path / "run").exists()
