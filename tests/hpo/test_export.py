"""Exported models (ONNX, TorchScript) compute what PyTorch computes, preprocessing and TTA included."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import hpo.results.export
from cifarnet.data import load_cifar10, make_splits
from cifarnet.train import RunOptions, evaluate, load_checkpoint, train
from hpo.results.export import TOLERANCE, ExportError, export_model, load_run_model
from cifarnet.weights import save_weights
from tests.conftest import TINY_DATA, TINY_TRAIN
from tests.helpers import run_cli

RECIPES = {
    "plain": TINY_TRAIN.replace(epochs=1),
    # EMA weights and mirror TTA: the exported graph must carry both to score what training reported.
    "ema+tta": TINY_TRAIN.replace(epochs=1, ema_decay=0.9, tta_flip=True),
    "tta-shift": TINY_TRAIN.replace(epochs=1, tta_flip=True, tta_shift=1),
    # With "plain" and "ema+tta" (SGD): every optimizer/EMA combination's weights file loads (weights_only).
    "adamw": TINY_TRAIN.replace(epochs=1, optimizer="adamw", lr=0.003),
    "adamw+ema": TINY_TRAIN.replace(epochs=1, optimizer="adamw", lr=0.003, ema_decay=0.9),
}


@pytest.fixture(scope="module")
def runs(tiny_cifar, tmp_path_factory) -> dict[str, Path]:
    """Run folders as `hpo retrain` leaves them (best.pt), one per recipe, from one epoch on the tiny set."""
    splits = make_splits(load_cifar10(tiny_cifar), TINY_DATA)
    folders = {}
    for name, cfg in RECIPES.items():
        out = folders[name] = tmp_path_factory.mktemp(f"run-{name}")
        train(cfg, splits, opts=RunOptions(device="cpu", checkpoint=out / "checkpoint.pt", progress=False))
        save_weights(load_checkpoint(out / "checkpoint.pt"), out / "best.pt")
    return folders


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_matches_pytorch_on_test_images(runs, recipe, fmt, tiny_cifar):
    run_dir = runs[recipe]
    result = export_model(run_dir, fmt, data_dir=str(tiny_cifar))
    assert result.path.is_file() and result.batch == 60 and "CIFAR-10 test images" in result.batch_source
    assert result.max_abs_diff < TOLERANCE == 1e-4
    sidecar = json.loads(result.path.with_name(result.path.name + ".json").read_text())
    assert sidecar["max_abs_diff"] == result.max_abs_diff and sidecar["output"] == "(B, 10) log-probabilities"

    # The deployable model scores the test set exactly as training's own evaluation does.
    model, cfg, _, _ = load_run_model(run_dir)
    test = load_cifar10(tiny_cifar).test
    expected = evaluate(model, test, "cpu", tta_flip=cfg.tta_flip, tta_shift=cfg.tta_shift, channels_last=False)["acc"]
    logp = _run_exported(result.path, fmt, test.images)
    assert logp.shape == (60, 10) and np.isfinite(logp).all()
    assert (logp.argmax(1) == test.labels.numpy()).mean() == pytest.approx(expected)


def _run_exported(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy()})[0]
    model = torch.export.load(str(path)).module()
    with torch.no_grad():
        return model(images).numpy()


def test_export_refuses_a_folder_without_weights(tmp_path):
    with pytest.raises(ExportError, match="best.pt not found"):
        export_model(tmp_path, "onnx")
    with pytest.raises(ExportError, match="--format must be one of onnx, pt2"):
        export_model(tmp_path, "tflite")


def test_cli_export_prints_the_difference_and_tolerance(runs, tmp_path, monkeypatch):
    out = tmp_path / "model.pt"
    monkeypatch.delenv("CIFAR10_DIR", raising=False)  # no data folder: random check images
    r = run_cli("export", str(runs["ema+tta"]), "--format", "torchscript", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "seeded random images" in r.stdout and "(tolerance 0.0001): OK" in r.stdout
    assert "weights best.pt: epoch 1 of 1, test_acc " in r.stdout and "stopped at epoch" not in r.stderr
    bad = run_cli("export", str(tmp_path / "nope"))
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_export_says_which_epoch_it_ships_and_warns_of_an_unfinished_run(tiny_cifar, tmp_path):
    """A `hpo train` run stopped after epoch 1 of 2 (interrupted) exports with its epoch and test accuracy
    named, in the output and the sidecar, and a warning that the weights are partly trained."""
    splits = make_splits(load_cifar10(tiny_cifar), TINY_DATA)
    opts = RunOptions(device="cpu", checkpoint=tmp_path / "checkpoint.pt", progress=False)
    history = train(TINY_TRAIN.replace(epochs=2), splits, report=lambda epoch, metrics: True, opts=opts).history
    r = run_cli("export", str(tmp_path), "--format", "torchscript")
    assert r.returncode == 0, r.stderr
    assert f"weights checkpoint.pt: epoch 1 of 2, test_acc {history[0]['test_acc']:.4f}" in r.stdout
    assert r.stderr.startswith(f"warning: {tmp_path} stopped at epoch 1 of its 2 (interrupted)"), r.stderr
    sidecar = json.loads((tmp_path / "model.pt2.json").read_text())
    assert (sidecar["epoch"], sidecar["epochs"], sidecar["test_acc"]) == (1, 2, history[0]["test_acc"])


def test_failed_export_check_leaves_no_files(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(hpo.results.export, "TOLERANCE", 0.0)  # no difference is below 0: the check must fail
    out = tmp_path / "exported" / "model.onnx"
    out.parent.mkdir()
    with pytest.raises(ExportError, match="differs from PyTorch .* nothing written"):
        export_model(runs["plain"], "onnx", out=out)
    assert list(out.parent.iterdir()) == []


class _RunsCode:
    """Unpickling this calls os.system: what a crafted weights file does under torch.load(weights_only=False)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_weights_file_is_refused_and_runs_nothing(tmp_path):
    marker, run_dir = tmp_path / "marker", tmp_path / "run"
    run_dir.mkdir()
    torch.save({"config": TINY_TRAIN.to_dict(), "state_dict": {}, "x": _RunsCode(marker)}, run_dir / "best.pt")
    r = run_cli("export", str(run_dir))  # were it unpickled here, the marker would be touched here too
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {run_dir / 'best.pt'} is not a checkpoint written by cifarnet: refused")
    assert not marker.exists() and not (run_dir / "model.onnx").exists()
