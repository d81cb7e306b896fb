import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarnet.config import DataConfig
from cifarnet.data import balanced_indices, load_cifar10, make_splits
from cifarnet.errors import DataError
from tests.conftest import write_cifar_batches
from tests.helpers import one_error_line, run_cli


def test_loads_fixture_layout(tiny_cifar):
    data = load_cifar10(tiny_cifar)
    assert data.train.images.shape == (200, 32, 32, 3) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (60, 32, 32, 3)
    assert data.train.labels.dtype == torch.int64 and set(data.train.labels.tolist()) == set(range(10))


def test_accepts_batch_folder_or_parent_and_env(tiny_cifar, monkeypatch):
    a = load_cifar10(tiny_cifar / "cifar-10-batches-py")
    monkeypatch.setenv("CIFAR10_DIR", str(tiny_cifar))
    b = load_cifar10()
    assert torch.equal(a.train.images, b.train.images)


def test_pixel_order_matches_file_layout(tmp_path):
    root = write_cifar_batches(tmp_path)
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    img = load_cifar10(root).train.images[0]
    # rows of the file are R plane, then G, then B
    assert img[0, 0, 0] == raw["data"][0, 0] and img[0, 0, 1] == raw["data"][0, 1024]
    assert img[0, 0, 2] == raw["data"][0, 2048] and img[0, 1, 0] == raw["data"][0, 1]


def test_real_cifar10(real_cifar_data):
    data = real_cifar_data  # load_cifar10(real_cifar)
    assert data.train.images.shape == (50_000, 32, 32, 3) and data.test.images.shape == (10_000, 32, 32, 3)
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    mean = data.train.images.float().mean((0, 1, 2)) / 255
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-3)


def test_validation_split_is_stratified_seeded_and_disjoint(real_cifar_data):
    data = real_cifar_data
    s1 = make_splits(data, DataConfig(train_size=1000, val_size=500, test_size=300, split_seed=3))
    s2 = make_splits(data, DataConfig(train_size=1000, val_size=500, test_size=300, split_seed=3))
    assert len(s1.train) == 1000 and len(s1.val) == 500 and len(s1.test) == 300
    assert torch.bincount(s1.val.labels).tolist() == [50] * 10
    assert torch.bincount(s1.train.labels).tolist() == [100] * 10
    assert torch.equal(s1.val.images, s2.val.images) and torch.equal(s1.train.labels, s2.train.labels)
    # the validation images never appear in the training subset
    full = make_splits(data, DataConfig(val_size=500, split_seed=3))
    assert len(full.train) == 49_500
    other = make_splits(data, DataConfig(train_size=1000, val_size=500, test_size=0, split_seed=4))
    assert other.test is None and not torch.equal(other.val.images, s1.val.images)


def test_balanced_indices_handles_uneven_counts():
    labels = torch.tensor([0] * 3 + [1] * 20)
    idx = balanced_indices(labels, 10, seed=0)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10
    assert (labels[idx] == 0).sum() == 3  # class 0 gives all it has, class 1 fills the rest


@pytest.mark.parametrize("problem", ["missing_dir", "missing_file", "truncated", "bad_shape"])
def test_bad_data_folder_raises_data_error(tmp_path, problem):
    root = write_cifar_batches(tmp_path / "d")
    batch3 = root / "cifar-10-batches-py" / "data_batch_3"
    if problem == "missing_dir":
        root = tmp_path / "nowhere"
    elif problem == "missing_file":
        batch3.unlink()
    elif problem == "truncated":
        batch3.write_bytes(batch3.read_bytes()[:5000])
    else:
        with open(batch3, "wb") as f:
            pickle.dump({"data": np.zeros((10, 100), np.uint8), "labels": [0] * 10}, f)
    with pytest.raises(DataError) as e:
        load_cifar10(root)
    assert "cifar-10-batches-py" in str(e.value) or "data_batch_3" in str(e.value)


def test_cli_bad_data_dir_is_one_clear_line(tmp_path):
    r = run_cli("train", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert one_error_line(r).startswith("error: CIFAR-10 folder not found")  # exit 1, one line, no traceback


def test_cli_data_check(tiny_cifar, tmp_path):
    r = run_cli("data", "check", "--data-dir", str(tiny_cifar))
    assert r.returncode == 0, r.stderr
    assert "train: 200 images, per class [20, 20, 20, 20, 20, 20, 20, 20, 20, 20]" in r.stdout
    r = run_cli("data", "check", "--data-dir", str(tiny_cifar), "-f", "json")
    assert r.returncode == 0 and json.loads(r.stdout) == {
        "folder": str(tiny_cifar / "cifar-10-batches-py"), "train": {"images": 200, "per_class": [20] * 10},
        "test": {"images": 60, "per_class": [6] * 10}}
    r = run_cli("data", "check", "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "is missing data_batch_1" in r.stderr and "Traceback" not in r.stderr


class _RunsCode:
    """Unpickling this calls os.system: what a crafted batch file would do with a plain pickle.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_crafted_batch_is_refused_and_runs_nothing(tmp_path, protocol):
    root = write_cifar_batches(tmp_path / "d")
    marker = tmp_path / "marker"
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((10, 3072), np.uint8), "labels": [0] * 10, "x": _RunsCode(marker)}, f,
                    protocol=protocol)
    with pytest.raises(DataError, match=r"data_batch_2 is not a CIFAR-10 batch: refused global (posix|os)\.system"):
        load_cifar10(root)
    assert not marker.exists()
    r = run_cli("data", "check", "--data-dir", str(root))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    """The restricted unpickler still reads numpy arrays, lists, str and bytes as each protocol writes them."""
    root = write_cifar_batches(tmp_path / "d")
    folder = root / "cifar-10-batches-py"
    for name in ("data_batch_1", "test_batch"):
        with open(folder / name, "rb") as f:
            batch = pickle.load(f)
        batch["batch_label"] = batch["batch_label"].encode()  # bytes, as in the official Python 2 files
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    data = load_cifar10(root)
    assert len(data.train) == 200 and len(data.test) == 60


def test_batches_pickled_by_numpy_1_load(tmp_path):
    """The official files name numpy 1's module (numpy.core.multiarray), which numpy 2 no longer writes."""
    root = write_cifar_batches(tmp_path / "d")
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f)
    raw = pickle.dumps(batch, protocol=2)  # GLOBAL opcodes: "module\nname\n" text, so renaming is safe
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert len(load_cifar10(root).test) == 60
