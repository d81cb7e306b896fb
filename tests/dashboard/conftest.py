"""A real study on a real SQLite file for the dashboard tests: `hpo study start studies/smoke.toml` on the tiny
CIFAR fixture (trial 0 the seed baseline, median pruning, an over-budget rejection), its trials annotated by
the workers with notes and per-epoch tables, and a real `hpo retrain` of the best trial (both through the CLI's
entry point, in this process)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import optuna
import pytest

from hpo.definition.paths import resolve_artifact_dir
from hpo.definition.study_file import load_study_file
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "studies/smoke.toml"
N_TRIALS = 12  # more than smoke's 6: enough complete trials (>= 4) for the importance chart, and pruned ones
PRUNER_STARTUP = 5  # smoke's median pruner waits for 2 complete trials; 5 lets the first few finish


@dataclasses.dataclass(frozen=True)
class DemoStudy:
    name: str
    storage: str  # sqlite URL of the study database
    artifact_dir: Path
    db: Path
    study_file: Path  # the study TOML it was started from (its storage is `storage`)


def _demo_study_file(folder: Path, url: str) -> Path:
    """studies/smoke.toml on `url`, its pruner starting later (the study file is data: only that line differs)."""
    text, n = re.subn(r"(\[pruner\][^\[]*?n_startup_trials\s*=\s*)\d+", rf"\g<1>{PRUNER_STARTUP}", SMOKE.read_text())
    assert n == 1, "studies/smoke.toml has no [pruner] n_startup_trials any more; update this fixture"
    path = folder / "demo.toml"
    path.write_text(re.sub(r'(?m)^storage = "[^"]*"', f'storage = "{url}"', text, count=1))
    return path


def _hpo(*args: str) -> None:
    r = run_cli(*args)  # one torch thread, as tests/conftest.py set it for this process
    assert r.returncode == 0, f"hpo {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory, tiny_cifar) -> DemoStudy:
    root = tmp_path_factory.mktemp("demo_study")
    db = root / "study.db"
    url = f"sqlite:///{db}"
    study_file = _demo_study_file(root, url)
    _hpo("study", "start", str(study_file), "--n-trials", str(N_TRIALS), "--threads", "1",
         "--data-dir", str(tiny_cifar), "--device", "cpu")
    spec = load_study_file(study_file)
    study = optuna.load_study(study_name=spec.name, storage=url)
    store_dir = resolve_artifact_dir(study.user_attrs["artifact_dir"], url)  # stored relative to the database
    store_dir.mkdir(parents=True, exist_ok=True)  # the workers annotated every trial on the live trial
    _hpo("retrain", spec.name, "--storage", url, "--max-epochs", "3", "--target", "0.99", "--out",
         str(root / "retrain"), "--data-dir", str(tiny_cifar), "--device", "cpu")
    return DemoStudy(spec.name, url, store_dir, db, study_file)
