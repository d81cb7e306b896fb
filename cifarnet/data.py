"""CIFAR-10 from the standard `cifar-10-batches-py` layout, held in memory as uint8 tensors.

Files are validated by shape, dtype and labels, never by md5 (copies rebuilt from PNGs differ in order).
Searches tune on a seeded, stratified validation split carved from the 50k training images; the test set
is only for final figures.
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarnet.config import DataConfig
from cifarnet.errors import DataError

ENV_VAR = "CIFAR10_DIR"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)  # per-channel training-set mean, [0, 1] scale
STD = (0.2470, 0.2435, 0.2616)
LAYOUT_HINT = f"expected {BATCH_DIR}/ with {', '.join(TRAIN_FILES)}, {TEST_FILE}"


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # (N, 32, 32, 3) uint8, HWC like the files: permuting gives channels_last for free
    labels: torch.Tensor  # (N,) int64 in 0..9

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray | torch.Tensor) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index])


@dataclass(frozen=True)
class CIFAR10:
    train: ImageSet  # the 50k training images (validation is carved from these)
    test: ImageSet  # the 10k test images


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The folder holding the batch files: `data_dir`, else $CIFAR10_DIR; either it or its parent works."""
    raw = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if not raw:
        raise DataError(f"no CIFAR-10 folder given: pass --data-dir or set {ENV_VAR} ({LAYOUT_HINT})")
    path = Path(raw).expanduser()
    if (path / BATCH_DIR).is_dir():
        path = path / BATCH_DIR
    if not path.is_dir():
        raise DataError(f"CIFAR-10 folder not found: {path.resolve()} ({LAYOUT_HINT})")
    missing = [f for f in (*TRAIN_FILES, TEST_FILE) if not (path / f).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 folder {path} is missing {', '.join(missing)} ({LAYOUT_HINT})")
    return path


def download_cifar10(root: str | os.PathLike) -> Path:
    """Fetch the official archive with torchvision (needs internet); returns the batch folder."""
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    try:
        TorchvisionCIFAR10(str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types; the user needs one line
        raise DataError(f"download of CIFAR-10 into {root} failed: {e}") from None
    return Path(root) / BATCH_DIR


# The only globals a CIFAR-10 batch needs: numpy's array reconstructors (numpy 1 and 2 module names, pickle
# protocols 0-5) and, for bytes pickled at protocols 0-2, codecs.encode. Everything else in a batch is dicts,
# lists, ints, str and bytes, which pickle builds without a global.
BATCH_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only BATCH_GLOBALS, so a crafted batch file cannot call anything else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in BATCH_GLOBALS:
            raise _RefusedGlobal(f"refused global {module}.{name} (a CIFAR-10 batch holds only numpy arrays, "
                                 f"lists, numbers and strings)")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
        data, labels = batch["data"], batch["labels"]
    except _RefusedGlobal as e:
        raise DataError(f"{path} is not a CIFAR-10 batch: {e}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError,
            MemoryError) as e:
        raise DataError(f"{path} is not a CIFAR-10 batch (truncated or corrupt: {type(e).__name__}: {e})") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {getattr(data, 'dtype', None)} {shape}")
    labels = _check_labels(labels, len(data))
    if labels is None:
        raise DataError(f"{path}: 'labels' must be {len(data)} integers in 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes R, G, B -> (N, H, W, C)
    return np.ascontiguousarray(images), labels


def _check_labels(labels: object, n: int) -> np.ndarray | None:
    """`labels` as (n,) int64 when it is a flat list of n ints (or a 1-D integer array) in 0..9, else None.
    Checked before numpy sees it: a pickle can share one list many times over, so a 31 KB list of nested lists
    would expand into gigabytes inside np.asarray."""
    if isinstance(labels, (list, tuple)) and len(labels) == n:
        if all((type(x) is int or isinstance(x, np.integer)) and 0 <= x <= 9 for x in labels):
            return np.array(labels, dtype=np.int64)
    elif isinstance(labels, np.ndarray) and labels.shape == (n,) and labels.dtype.kind in "iu":
        if labels.min(initial=0) >= 0 and labels.max(initial=0) <= 9:
            return labels.astype(np.int64)
    return None


def _read_set(folder: Path, files: tuple[str, ...]) -> ImageSet:
    parts = [_read_batch(folder / f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels))


@functools.lru_cache(maxsize=2)
def _load_cached(folder: Path) -> CIFAR10:
    return CIFAR10(train=_read_set(folder, TRAIN_FILES), test=_read_set(folder, (TEST_FILE,)))


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = False) -> CIFAR10:
    """Load (and cache per process) CIFAR-10; with `download`, fetch it first if the folder lacks it."""
    if download:
        root = Path(data_dir or os.environ.get(ENV_VAR) or "data")
        try:
            resolve_data_dir(root)
        except DataError:
            download_cifar10(root)
    return _load_cached(resolve_data_dir(data_dir).resolve())


def balanced_indices(labels: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """`n` indices with classes as equal as possible (seeded); sorted, so subsets are stable."""
    labels_np = labels.numpy()
    classes = np.unique(labels_np)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels_np == c)) for c in classes]
    if n > len(labels_np):
        raise DataError(f"asked for {n} images but only {len(labels_np)} are available")
    quota = np.full(len(classes), n // len(classes))
    quota[rng.permutation(len(classes))[: n % len(classes)]] += 1
    # A class short of its quota hands the remainder to the others (only on tiny or skewed data).
    short = sum(max(0, q - len(p)) for q, p in zip(quota, per_class))
    chosen = [p[: min(q, len(p))] for q, p in zip(quota, per_class)]
    if short:
        rest = np.concatenate([p[len(c):] for p, c in zip(per_class, chosen)])
        chosen.append(rng.permutation(rest)[:short])
    return np.sort(np.concatenate(chosen))


def make_splits(data: CIFAR10, cfg: DataConfig) -> Splits:
    """Validation split and class-balanced subsets, all seeded by `cfg.split_seed`."""
    train = data.train
    val = None
    if cfg.val_size:
        val_idx = balanced_indices(train.labels, cfg.val_size, cfg.split_seed)
        keep = np.setdiff1d(np.arange(len(train)), val_idx)
        val, train = train.take(val_idx), train.take(keep)
    if cfg.train_size is not None and cfg.train_size < len(train):
        train = train.take(balanced_indices(train.labels, cfg.train_size, cfg.split_seed + 1))
    test = data.test
    if cfg.test_size == 0:
        test = None
    elif cfg.test_size is not None and cfg.test_size < len(test):
        test = test.take(balanced_indices(test.labels, cfg.test_size, cfg.split_seed + 2))
    return Splits(train=train, val=val, test=test)
