"""`hpo export --format pt2` (issue item 15): a torch.export ExportedProgram instead of deprecated TorchScript,
`torchscript` kept as a deprecated alias, and an export that a resumed run has made outdated is flagged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from cifarnet.data import load_cifar10, make_splits
from cifarnet.train import RunOptions, load_checkpoint, train
from hpo.results.export import TOLERANCE, export_model, load_run_model, outdated_exports, reference_logp
from tests.conftest import TINY_DATA, TINY_TRAIN

HPO = str(Path(sys.executable).parent / "hpo")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(cfg, tiny_cifar: Path, run: Path, stop_after_first_epoch: bool = False, resume: bool = False) -> None:
    """A `hpo train`-style run folder (checkpoint.pt); stopped after its first epoch, as an interrupted run."""
    splits = make_splits(load_cifar10(tiny_cifar), TINY_DATA)
    report = (lambda epoch, metrics: True) if stop_after_first_epoch else None
    train(cfg, splits, report=report, opts=RunOptions(device="cpu", checkpoint=run / "checkpoint.pt",
                                                     progress=False, resume=resume))


def test_pt2_is_an_exported_program_that_computes_what_training_does(tiny_cifar, tmp_path):
    cfg = TINY_TRAIN.replace(epochs=1, tta_flip=True, tta_shift=1)  # the test-time views travel in the graph
    _train(cfg, tiny_cifar, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # torch.jit (TorchScript) warns: it must not be used
        result = export_model(tmp_path, "pt2", data_dir=str(tiny_cifar), batch=1)
    assert result.path == tmp_path / "model.pt2" and result.format == "pt2" and result.max_abs_diff < TOLERANCE

    program = torch.export.load(str(result.path))
    assert isinstance(program, torch.export.ExportedProgram)
    model, cfg, _, _ = load_run_model(tmp_path)
    images = load_cifar10(tiny_cifar).test.images
    for n in (1, 7, len(images)):  # exported from a batch of 1 and still any batch size
        with torch.no_grad():
            got = program.module()(images[:n])
        assert got.shape == (n, 10)
        assert (got - reference_logp(model, images[:n], cfg.tta_flip, cfg.tta_shift)).abs().max() < TOLERANCE
    sidecar = json.loads((tmp_path / "model.pt2.json").read_text())
    assert sidecar["format"] == "pt2" and len(sidecar["weights_sha256"]) == 64


def test_torchscript_is_a_deprecated_alias_that_writes_the_pt2_program(tiny_cifar, tmp_path):
    _train(TINY_TRAIN.replace(epochs=1), tiny_cifar, tmp_path)
    r = subprocess.run([HPO, "export", str(tmp_path), "--format", "torchscript", "--batch", "4"],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path / 'model.pt2'} (pt2, " in r.stdout and "OK" in r.stdout
    assert r.stderr.startswith("note: --format torchscript is deprecated") and r.stderr.count("\n") == 1
    assert "--format pt2" in r.stderr and not (tmp_path / "model.torchscript.pt").exists()
    assert isinstance(torch.export.load(str(tmp_path / "model.pt2")), torch.export.ExportedProgram)


def test_an_export_a_resumed_run_has_outdated_is_flagged_until_exported_again(tiny_cifar, tmp_path):
    cfg = TINY_TRAIN.replace(epochs=2)
    _train(cfg, tiny_cifar, tmp_path, stop_after_first_epoch=True)
    export_model(tmp_path, "pt2", batch=4)  # the weights of epoch 1 of 2
    export_model(tmp_path, "onnx", batch=4, out=tmp_path / "deploy" / "m.onnx")  # elsewhere: not this folder's
    assert outdated_exports(tmp_path) == []

    _train(cfg, tiny_cifar, tmp_path, resume=True)  # `hpo train --resume`: epoch 2 rewrites checkpoint.pt
    [line] = outdated_exports(tmp_path)
    assert line == (f"{tmp_path / 'model.pt2'} is outdated: exported from checkpoint.pt (epoch 1), which has "
                    f"changed since; `hpo export {tmp_path} --format pt2` writes it again")

    # Exporting another format says so too; exporting it again replaces it and the warning goes.
    r = subprocess.run([HPO, "export", str(tmp_path), "--format", "onnx", "--batch", "4"], capture_output=True,
                       text=True, timeout=300, env={k: v for k, v in ENV.items() if k != "CIFAR10_DIR"})
    assert r.returncode == 0 and r.stderr == f"warning: {line}\n", r.stderr
    again = subprocess.run([HPO, "export", str(tmp_path), "--format", "pt2", "--batch", "4"], capture_output=True,
                           text=True, timeout=300, env=ENV)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert outdated_exports(tmp_path) == [] and "weights checkpoint.pt: epoch 2 of 2" in again.stdout


@pytest.mark.parametrize("recorded", ["sha256", "mtime"])
def test_a_rewritten_weights_file_outdates_its_export_whatever_the_sidecar_records(tiny_cifar, tmp_path, recorded):
    """Sidecars written before weights_sha256 existed are compared by modification time."""
    _train(TINY_TRAIN.replace(epochs=1), tiny_cifar, tmp_path)
    export_model(tmp_path, "onnx", batch=4)
    sidecar = tmp_path / "model.onnx.json"
    if recorded == "mtime":
        record = json.loads(sidecar.read_text())
        del record["weights_sha256"]
        sidecar.write_text(json.dumps(record))
    assert outdated_exports(tmp_path) == []
    checkpoint = tmp_path / "checkpoint.pt"
    state = load_checkpoint(checkpoint)
    state["history"][-1]["test_acc"] = -1.0  # same epoch, other bytes: what counts is the file, not the number
    torch.save(state, checkpoint)
    later = (tmp_path / "model.onnx").stat().st_mtime + 5
    os.utime(checkpoint, (later, later))
    assert len(outdated_exports(tmp_path)) == 1
