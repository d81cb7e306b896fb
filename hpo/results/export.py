"""Export a run (`hpo retrain` or `hpo train`) as a deployable model (ONNX, or a torch.export program `.pt2`)
and prove it computes what PyTorch does.

The exported graph takes raw images, uint8 (B, 32, 32, 3) RGB as stored in the CIFAR files, and returns
(B, 10) log-probabilities: normalisation (and the test-time views' average when the run used tta_flip / tta_shift) is inside the
graph, so a deployment cannot get the preprocessing wrong. The check compares the exported model against the
training code's own path (`cifarnet.augment.normalize` + the model) on a batch of test images.

Each export's sidecar (`<model>.json`) records the sha256 of the weights file it was made from, so an export
that a resumed run has since made outdated is found (`outdated_exports`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarnet.augment import normalize
from cifarnet.config import TrainConfig
from cifarnet.data import CLASSES, MEAN, STD, load_cifar10
from cifarnet.model import build_model
from cifarnet.files import output_file, replacing, write_json_atomic
from cifarnet.train import load_checkpoint
from cifarnet.tta import tta_logp
from hpo.errors import HPOError
from cifarnet.weights import eval_weights

FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}
# TorchScript (torch.jit) is deprecated upstream: the old format name now writes the torch.export program.
ALIASES = {"torchscript": "pt2"}
WEIGHTS = ("best", "final")
# log-probs in float32 through a few dozen convs: graph rewrites reorder sums, so bit-equality is not expected;
# 1e-4 is far below any change in the predicted class.
TOLERANCE = 1e-4
ONNX_OPSET = 17


class ExportError(HPOError):
    """The run folder cannot be exported, or the exported model disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the deployable model
    format: str  # "onnx" | "pt2"
    weights: Path  # which weights file of the run was exported
    max_abs_diff: float  # max |log-prob(exported) - log-prob(PyTorch)| on the check batch
    tolerance: float
    batch: int  # images in the check batch
    batch_source: str  # "CIFAR-10 test images (<dir>)" or "seeded random images"
    epoch: int | None = None  # the epoch those weights are from (None: a weights file that does not say)
    epochs: int = 0  # the run's schedule
    test_acc: float | None = None  # the run's test accuracy at `epoch`
    weights_sha256: str = ""  # of the weights file as exported: a resumed run that rewrites it outdates the export

    @property
    def unfinished(self) -> bool:
        """A `hpo train` run stopped before its schedule ended (interrupted): partly trained weights."""
        return self.weights.name == "checkpoint.pt" and self.epoch is not None and self.epoch < self.epochs

    def describe_weights(self) -> str:
        epoch = f": epoch {self.epoch} of {self.epochs}" if self.epoch is not None else ""
        accuracy = f", test_acc {self.test_acc:.4f}" if self.test_acc is not None else ""
        return f"weights {self.weights.name}{epoch}{accuracy}"


class DeployModel(nn.Module):
    """uint8 (B, 32, 32, 3) RGB -> (B, 10) log-probabilities; the preprocessing travels with the weights."""

    def __init__(self, model: nn.Module, tta_flip: bool, tta_shift: int = 0):
        super().__init__()
        self.model, self.tta_flip, self.tta_shift = model, tta_flip, tta_shift
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std  # (B, 3, 32, 32)
        return tta_logp(self.model, x, self.tta_flip, self.tta_shift)  # (B, 10)


def load_run_model(run_dir: str | Path, weights: str = "best") -> tuple[nn.Module, TrainConfig, Path, dict]:
    """The evaluated weights of a run in a model in eval mode: a retrain's `best.pt` / `final.pt`, or, in a
    folder written by `hpo train` (no such files), the last finished epoch of its `checkpoint.pt`; and the
    epoch and test accuracy they are from."""
    if weights not in WEIGHTS:
        raise ExportError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    run_dir = Path(run_dir)
    path, checkpoint = run_dir / f"{weights}.pt", run_dir / "checkpoint.pt"
    if path.is_file():
        state = load_checkpoint(path)
        config, state_dict = state.get("config"), state.get("state_dict")
        trained = {"epoch": state.get("epoch"), "test_acc": state.get("test_acc")}
    elif checkpoint.is_file() and not any((run_dir / f"{w}.pt").exists() for w in WEIGHTS):
        path, state = checkpoint, load_checkpoint(checkpoint)
        config, state_dict = state["config"], eval_weights(state)
        trained = {"epoch": state["epoch"], "test_acc": state["history"][-1].get("test_acc")}
    else:
        raise ExportError(f"{path.resolve()} not found: RUN_DIR must be a run folder written by `hpo retrain` "
                          f"(best.pt, final.pt) or `hpo train` (checkpoint.pt)")
    cfg = TrainConfig.from_dict(config)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state_dict)
    except (KeyError, RuntimeError, TypeError, AttributeError) as e:  # e.g. a checkpoint.pt copied over best.pt
        raise ExportError(f"{path} holds no weights for its config ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'state_dict'})") from None
    return model.eval(), cfg, path, trained


def check_batch(data_dir: str | None, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """The first `n` CIFAR-10 test images when a data folder is known, else seeded random images."""
    if data_dir is not None or os.environ.get("CIFAR10_DIR"):
        test = load_cifar10(data_dir).test
        return test.images[:n], f"CIFAR-10 test images ({data_dir or os.environ['CIFAR10_DIR']})"
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=gen), "seeded random images"


@torch.no_grad()
def reference_logp(model: nn.Module, images: torch.Tensor, tta_flip: bool, tta_shift: int = 0) -> torch.Tensor:
    """What the training code computes at evaluation time (cifarnet.train.evaluate's path), in float32."""
    return tta_logp(model, normalize(images, torch.device("cpu"), channels_last=False), tta_flip, tta_shift)


def export_model(run_dir: str | Path, fmt: str, *, weights: str = "best", out: Path | None = None,
                 data_dir: str | None = None, batch: int = 64) -> ExportResult:
    """Write the deployable model (default RUN_DIR/model.onnx or model.pt2) and check it; `fmt` "torchscript"
    (deprecated) writes the pt2 program."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)} (torchscript: the old name of pt2), "
                          f"got {fmt!r}")
    model, cfg, weights_path, trained = load_run_model(run_dir, weights)
    out = output_file(out if out is not None else Path(run_dir) / FORMATS[fmt])  # before the export's work
    images, source = check_batch(data_dir, batch)
    deploy = DeployModel(model, cfg.tta_flip, cfg.tta_shift).eval()
    # Written and checked under a temporary name, renamed only once the check passed: a failed or interrupted
    # export leaves no model file (and no sidecar) behind that could be mistaken for a checked one.
    with replacing(out) as tmp:
        _WRITERS[fmt](deploy, images[[0, -1]], tmp)  # two rows even for --batch 1: a batch of 1 is not traced as N
        got = torch.from_numpy(np.asarray(_RUNNERS[fmt](tmp, images)))
        diff = (got - reference_logp(model, images, cfg.tta_flip, cfg.tta_shift)).abs().max().item()
        if not diff < TOLERANCE:
            raise ExportError(f"exported {fmt} model differs from PyTorch by {diff:.3g} (tolerance {TOLERANCE:g}); "
                              f"nothing written")
        result = ExportResult(out, fmt, weights_path, diff, TOLERANCE, len(images), source, epochs=cfg.epochs,
                              weights_sha256=_sha256(weights_path), **trained)
        write_json_atomic(_describe(result, cfg), _sidecar(out))
    return result


def outdated_exports(run_dir: str | Path) -> list[str]:
    """The exports in `run_dir` (each found by its sidecar) whose weights file has changed since they were
    written, e.g. by `hpo retrain --resume` or `hpo train --resume`, one line each naming the command that
    writes it again. A sidecar from before weights_sha256 was recorded is compared by modification time."""
    lines = []
    for sidecar in sorted(Path(run_dir).glob("*.json")):
        model = sidecar.with_suffix("")
        try:
            record = json.loads(sidecar.read_text())
            weights = Path(run_dir) / Path(record["weights"]).name
            fmt = ALIASES.get(record["format"], record["format"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not an export's sidecar (metrics.json, ...)
        if not model.is_file() or fmt not in FORMATS:
            continue
        if not weights.is_file():
            changed = "is gone"
        elif record.get("weights_sha256"):
            changed = "has changed since" if _sha256(weights) != record["weights_sha256"] else ""
        else:
            changed = "is newer" if weights.stat().st_mtime > model.stat().st_mtime else ""
        if changed:
            epoch = f" (epoch {record['epoch']})" if record.get("epoch") is not None else ""
            again = (f" --weights {weights.stem}" if weights.stem == "final" else "") + (
                f" --out {model}" if model.name != FORMATS[fmt] else "")
            lines.append(f"{model} is outdated: exported from {weights.name}{epoch}, which {changed}; "
                         f"`hpo export {run_dir} --format {fmt}{again}` writes it again")
    return lines


def _sidecar(model: Path) -> Path:
    return model.with_name(model.name + ".json")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _describe(result: ExportResult, cfg: TrainConfig) -> dict:
    return {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()},
            "input": "uint8 (B, 32, 32, 3) RGB, as in the CIFAR-10 files", "output": "(B, 10) log-probabilities",
            "classes": list(CLASSES), "tta_flip": cfg.tta_flip, "tta_shift": cfg.tta_shift, "config": cfg.to_dict()}


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # dynamo=False: the torch.export-based exporter needs onnxscript, which is not installed here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["images"], output_names=["log_probs"],
                          dynamic_axes={"images": {0: "batch"}, "log_probs": {0: "batch"}})
    import onnx

    onnx.checker.check_model(str(path))


def _run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # a check, not a benchmark: stay polite on shared cores
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(["log_probs"], {"images": images.numpy()})[0]


def _write_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """An ExportedProgram (torch.export; TorchScript's torch.jit is deprecated upstream) with a dynamic batch:
    `torch.export.load(path).module()(images)` runs it, AOTInductor compiles it for C++ deployments."""
    program = torch.export.export(model, (example,), dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    buffer = io.BytesIO()  # through a buffer: torch logs a warning for a file name not ending in .pt2 (tmp, -o)
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())


@torch.no_grad()
def _run_pt2(path: Path, images: torch.Tensor) -> np.ndarray:
    return torch.export.load(io.BytesIO(path.read_bytes())).module()(images).numpy()


_WRITERS = {"onnx": _write_onnx, "pt2": _write_pt2}
_RUNNERS = {"onnx": _run_onnx, "pt2": _run_pt2}
