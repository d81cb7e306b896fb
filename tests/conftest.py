"""Shared fixtures: a tiny CIFAR-format folder written by the tests, the real CIFAR-10 when present, and a
storage fixture that runs every storage test against a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import os
import pickle
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import torch

from cifarnet.config import DataConfig, ModelConfig, TrainConfig

torch.set_num_threads(1)

# The installed `hpo` and `optuna` commands live beside this interpreter (a venv that may not be activated).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

# Tiny models train faster on one thread, and subprocesses (the CLI) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REAL_CIFAR = Path(os.environ.get("CIFAR10_DIR", Path(__file__).resolve().parents[2] / "shared/data/cifar10"))
POSTGRES_URL = os.environ.get("HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# A narrow family member: trains in well under a second per epoch on the tiny fixture.
TINY_MODEL = ModelConfig(widths=(4, 8, 8, 8))
TINY_TRAIN = TrainConfig(model=TINY_MODEL, epochs=2, batch_size=32, lr=0.05, channels_last=False)
TINY_DATA = DataConfig(val_size=40, test_size=None)


def write_cifar_batches(root: Path, per_batch: int = 40, test_images: int = 60, seed: int = 0) -> Path:
    """A CIFAR-10 folder in the official pickle layout; each class has its own colour, so it is learnable."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(30, 225, size=(10, 3))

    def batch(n: int, name: str) -> dict:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        img = palette[labels][:, :, None, None] + rng.normal(0, 25, size=(n, 3, 32, 32))
        data = np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072)
        return {"batch_label": name, "labels": labels.tolist(), "data": data,
                "filenames": [f"{name}_{i}.png" for i in range(n)]}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch, f"training batch {i} of 5"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test_images, "testing batch 1 of 1"), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root


REPO = Path(__file__).resolve().parents[1]
LITTER = ("artifacts/*", "*.lock", "*.db", "runs", "report.html")  # what tests used to leave in the checkout


def _litter() -> set[Path]:
    return {p for pattern in LITTER for p in REPO.glob(pattern)}


_LITTER_BEFORE: set[Path] = set()


def pytest_sessionstart(session):
    _LITTER_BEFORE.update(_litter())


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test wrote into the checkout instead of its temporary folder."""
    new = sorted(_litter() - _LITTER_BEFORE)
    if new:
        print(f"\nerror: tests left files in the checkout: {', '.join(str(p.relative_to(REPO)) for p in new)}")
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
    """Tests write only under their temporary folders: relative defaults (hpo.db, artifacts/, runs/, report.html)
    of in-process calls and of `hpo` subprocesses started without a cwd land in tmp_path, not in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """Root folder holding cifar-10-batches-py/ with 5 x 40 training and 60 test images."""
    return write_cifar_batches(tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture(scope="session")
def real_cifar() -> Path:
    if not (REAL_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.fail(f"real CIFAR-10 expected at {REAL_CIFAR} (set CIFAR10_DIR)")
    return REAL_CIFAR


@pytest.fixture(scope="session")
def real_cifar_data(real_cifar):
    """load_cifar10(real_cifar), loaded once for the session (seconds each time); tests only read it."""
    from cifarnet.data import load_cifar10

    return load_cifar10(real_cifar)


@pytest.fixture
def pg_url(study_name) -> str:
    """The real PostgreSQL server; the studies the test created, named after its study_name, are deleted after.
    Only those: other test runs share the server, and a study one of them created meanwhile is still in use."""
    import optuna

    from tests.helpers import storage_for  # one connection pool for the session (tests.helpers imports this module)

    yield POSTGRES_URL
    storage = storage_for(POSTGRES_URL)
    for name in optuna.get_all_study_names(storage):
        if name.startswith(study_name):
            optuna.delete_study(study_name=name, storage=storage)


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request, tmp_path) -> str:
    """A real SQLite file, or the real PostgreSQL server (studies created by the test are deleted after).
    Tests of what storage does run on both; a test of what the objective or a command does on any storage
    narrows it with @pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def study_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
