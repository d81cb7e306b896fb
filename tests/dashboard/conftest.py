"""A real study on a real SQLite file for the dashboard tests: CifarNet trials trained on the tiny CIFAR
fixture with the conventional user_attrs, notes and learning-curve artifacts, plus a real retrain run.

Interim: runs the trials with plain optuna until `hpo study start` lands; then it calls that instead."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore

from cifarnet.config import DataConfig
from cifarnet.data import load_cifar10, make_splits
from cifarnet.model import model_stats
from cifarnet.run import train_to_dir
from cifarnet.train import RunOptions, train
from dashboard.notes import annotate_trial
from hpo.space import contains, seed_params, suggest_config
from hpo.storage import open_storage
from hpo.studyfile import load_study_file

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "studies/smoke.toml"
EPOCHS = 5  # enough for the tiny set's colours to be learned, so trials differ and the pruner acts
MAX_PARAMS = 12_000  # below the widest corner of smoke's space, so a wide config is rejected (a failed trial)


@dataclasses.dataclass(frozen=True)
class DemoStudy:
    name: str
    storage: str  # sqlite URL of the study database
    artifact_dir: Path
    db: Path


def _objective(spec, splits, store):
    def objective(trial: optuna.Trial) -> float:
        cfg = suggest_config(spec.space, trial, spec.base)
        stats = model_stats(cfg.model)
        for key, value in {"config": cfg.to_dict(), "data": dataclasses.asdict(spec.data), "params_count": stats.params,
                           "macs": stats.macs, "receptive_field": stats.receptive_field, "device": "cpu"}.items():
            trial.set_user_attr(key, value)
        curve: list[dict] = []

        def report(epoch: int, metrics: dict) -> None:
            curve.append(metrics)
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("epoch_times", [m["train_time_s"] for m in curve])
            trial.report(metrics["val_acc"], epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned()

        try:
            if stats.params > MAX_PARAMS:
                trial.set_user_attr("fail_reason", f"rejected: {stats.params:,} parameters > max_params {MAX_PARAMS:,}")
                raise ValueError(trial.user_attrs["fail_reason"])
            result = train(cfg, splits, report, RunOptions(device="cpu", progress=False))
            return max(m["val_acc"] for m in result.history)
        finally:
            annotate_trial(trial.study, trial, store)
    return objective


def _run_trials_and_retrain(study, spec, store, data_dir: Path, run_dir: Path) -> None:
    splits = make_splits(load_cifar10(data_dir), spec.data)
    study.optimize(_objective(spec, splits, store), n_trials=10, catch=(ValueError,))
    best = study.best_trial
    cfg = suggest_config(spec.space, optuna.trial.FixedTrial(best.params), spec.base).replace(epochs=3)
    _, record = train_to_dir(cfg, DataConfig(val_size=0, test_size=60), run_dir, data_dir=str(data_dir),
                             opts=RunOptions(device="cpu", progress=False))
    study.set_user_attr("retrain", {"status": "done", "trial": best.number, "run_dir": str(run_dir),
                                    "final_test_acc": record["epochs"][-1]["test_acc"]})


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory, tiny_cifar) -> DemoStudy:
    root = tmp_path_factory.mktemp("demo_study")
    db = root / "study.db"
    spec = load_study_file(SMOKE, storage=f"sqlite:///{db}")
    spec = dataclasses.replace(spec, base=spec.base.replace(epochs=EPOCHS))
    store_dir = Path(spec.artifact_dir)
    store_dir.mkdir(parents=True)
    store = FileSystemArtifactStore(store_dir)
    study = optuna.create_study(study_name=spec.name, storage=open_storage(spec.storage), direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0))
    for key, value in {"study_file": spec.raw, "target_accuracy": spec.target_accuracy,
                       "artifact_dir": str(store_dir)}.items():
        study.set_user_attr(key, value)
    seed = seed_params(spec.space, spec.base)
    study.enqueue_trial({k: v for k, v in seed.items() if not contains(spec.space, {k: v})},
                        user_attrs={"seed_baseline": True})
    study.enqueue_trial({"width1": 8, "width2": 16, "width3": 16, "width4": 16})  # too big: rejected
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only oversubscribe them (10x slower here)
    try:
        _run_trials_and_retrain(study, spec, store, tiny_cifar, root / "retrain")
    finally:
        torch.set_num_threads(threads)
    return DemoStudy(spec.name, spec.storage, store_dir, db)
