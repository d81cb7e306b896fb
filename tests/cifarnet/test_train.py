import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from cifarnet.config import TrainConfig
from cifarnet.data import load_cifar10, make_splits
from cifarnet.errors import CheckpointError, ConfigError, NonFiniteLossError
from cifarnet.train import RunOptions, load_checkpoint, lr_factor, train
from tests.conftest import TINY_DATA, TINY_TRAIN
from tests.helpers import run_cli

from cifarnet.config import ModelConfig

TINY_MODEL_8 = ModelConfig(widths=(8, 8, 8, 8))  # 8 whitening filters: 4 +- pairs


@pytest.fixture
def splits(tiny_cifar):
    return make_splits(load_cifar10(tiny_cifar), TINY_DATA)


def test_report_called_once_per_epoch_with_metrics(splits):
    calls = []
    result = train(TINY_TRAIN.replace(epochs=3), splits, lambda e, m: calls.append((e, m)))
    assert [e for e, _ in calls] == [1, 2, 3]
    assert {"train_loss", "val_acc", "test_acc", "images_per_s", "lr"} <= set(calls[0][1])
    assert len(result.history) == 3 and not result.stopped_early


def test_same_seed_same_metrics_other_seed_differs(splits):
    a = train(TINY_TRAIN, splits).history
    b = train(TINY_TRAIN, splits).history
    c = train(TINY_TRAIN.replace(seed=1), splits).history
    key = lambda h: [(m["train_loss"], m["val_acc"], m["test_loss"]) for m in h]
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_learns_the_tiny_task(splits):
    h = train(TINY_TRAIN.replace(epochs=4, aug_strength=0.0), splits).history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["val_acc"] > 0.3  # 10 classes: chance is 0.1


def test_report_returning_true_stops_early(splits):
    result = train(TINY_TRAIN.replace(epochs=4), splits, lambda e, m: e == 2)
    assert len(result.history) == 2 and result.stopped_early


@pytest.mark.parametrize("variant", [
    dict(), dict(aug_backend="albumentations"), dict(optimizer="adamw", lr=0.003, schedule="cosine"),
    dict(ema_decay=0.9, tta_flip=True, label_smoothing=0.1, schedule="linear"), dict(bf16=True, channels_last=True),
])
def test_recipe_variants_resume_to_identical_result(tmp_path, splits, variant):
    cfg = TINY_TRAIN.replace(epochs=3, **variant)
    opts = RunOptions(checkpoint=tmp_path / "ck.pt", loader_workers=0)
    full = train(cfg, splits, opts=RunOptions(loader_workers=0)).history

    class Interrupt(Exception):
        pass

    def crash_after_2(epoch, metrics):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, splits, crash_after_2, opts)
    resumed = train(cfg, splits, opts=RunOptions(**{**opts.__dict__, "resume": True})).history
    strip = lambda h: [{k: v for k, v in m.items() if "time" not in k and "per_s" not in k} for m in h]
    assert strip(resumed) == strip(full)


def test_resume_refuses_other_config(tmp_path, splits):
    opts = RunOptions(checkpoint=tmp_path / "ck.pt")
    train(TINY_TRAIN.replace(epochs=1), splits, opts=opts)
    with pytest.raises(ConfigError, match="different config"):
        train(TINY_TRAIN.replace(epochs=1, lr=0.01), splits, opts=RunOptions(checkpoint=tmp_path / "ck.pt", resume=True))


def test_non_finite_loss_stops_with_specific_error(tmp_path, splits):
    cfg = TINY_TRAIN.replace(lr=1e12, momentum=0.0, weight_decay=0.0)
    ck = tmp_path / "ck.pt"
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg, splits, opts=RunOptions(checkpoint=ck))
    assert e.value.epoch == 1 and "non-finite" in str(e.value)
    assert not ck.exists()  # no checkpoint of diverged weights


def test_schedules_warm_up_and_end_near_zero():
    for schedule in ("onecycle", "cosine", "linear"):
        cfg = TrainConfig(schedule=schedule, warmup_frac=0.2)
        f = [lr_factor(cfg, s, 100) for s in range(100)]
        assert max(f) == pytest.approx(1.0) and f[-1] < 0.05
    assert lr_factor(TrainConfig(schedule="onecycle"), 0, 100) < 0.1


def test_cuda_request_without_cuda_is_a_clear_error(splits):
    if torch.cuda.is_available():
        pytest.xfail("this check is for CPU-only machines; CUDA is present")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(TINY_TRAIN, splits, opts=RunOptions(device="cuda"))


def test_cli_train_writes_metrics_and_checkpoint(tmp_path, tiny_cifar):
    cfg = tmp_path / "run.toml"
    cfg.write_text("epochs = 2\nbatch_size = 32\nlr = 0.05\n[model]\nwidths = [4, 8, 8, 8]\n[data]\nval_size = 40\n")
    out = tmp_path / "out"
    r = run_cli("train", "--config", str(cfg), "--data-dir", str(tiny_cifar), "--out", str(out), "--seed", "3",
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("epoch ") == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3 and len(metrics["epochs"]) == 2 and metrics["hardware"]["device"] == "cpu"
    assert metrics["config"]["model"]["widths"] == [4, 8, 8, 8] and metrics["data"]["val_images"] == 40
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 2 and ck["config"] == metrics["config"]
    assert (out / "config.toml").read_text().startswith("epochs = 2")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_every_optimizer_and_ema_checkpoint_resumes_with_weights_only_loading(tmp_path, splits, optimizer,
                                                                               ema_decay):
    """Checkpoints hold only tensors and plain data, so `weights_only=True` loads each recipe's and resumes it."""
    cfg = TINY_TRAIN.replace(optimizer=optimizer, ema_decay=ema_decay, lr=0.003 if optimizer == "adamw" else 0.05)
    opts = RunOptions(checkpoint=tmp_path / "ck.pt")
    first = train(cfg, splits, lambda epoch, m: True, opts)  # stops after epoch 1 of 2
    state = load_checkpoint(tmp_path / "ck.pt")
    assert state["epoch"] == 1 and (state["ema"] is not None) == bool(ema_decay)
    resumed = train(cfg, splits, opts=RunOptions(checkpoint=tmp_path / "ck.pt", resume=True))
    assert [m["epoch"] for m in resumed.history] == [1, 2] and resumed.history[0] == first.history[0]


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint does under torch.load(weights_only=False)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _train_resume(tmp_path, tiny_cifar, out):
    cfg = tmp_path / "run.toml"
    cfg.write_text("epochs = 1\nbatch_size = 32\n[model]\nwidths = [4, 8, 8, 8]\n[data]\nval_size = 40\n")
    return run_cli("train", "--config", str(cfg), "--data-dir", str(tiny_cifar), "--out", str(out), "--resume",
                   "--device", "cpu")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, tiny_cifar, writer):
    marker, out = tmp_path / "marker", tmp_path / "out"
    out.mkdir()
    crafted = {"config": TINY_TRAIN.to_dict(), "payload": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(crafted, out / "checkpoint.pt")
    else:  # torch.load also reads plain pickles (its legacy format)
        (out / "checkpoint.pt").write_bytes(pickle.dumps(crafted))
    with pytest.raises(CheckpointError, match="checkpoint.pt is not a checkpoint written by cifarnet: refused"):
        load_checkpoint(out / "checkpoint.pt")
    r = _train_resume(tmp_path, tiny_cifar, out)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert str(out / "checkpoint.pt") in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_checkpoint_is_one_clear_line_naming_the_file(tmp_path, tiny_cifar, splits, damage):
    out = tmp_path / "out"
    train(TINY_TRAIN.replace(epochs=1), splits, opts=RunOptions(checkpoint=out / "checkpoint.pt"))
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2] if damage == "truncated" else b"")
    r = _train_resume(tmp_path, tiny_cifar, out)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {ck} is truncated or not a checkpoint")


def test_whiten_sets_the_first_conv_to_a_frozen_patch_whitening(splits):
    from cifarnet.augment import normalize
    from cifarnet.model import whiten_first_conv, build_model

    model = build_model(TINY_MODEL_8)
    before = model.block1a[0].weight.clone()
    whiten_first_conv(model, splits.train.images)
    w = model.block1a[0].weight
    assert not w.requires_grad and not torch.equal(w, before)
    assert torch.allclose(w[0::2], -w[1::2])  # +- pairs
    # the filters decorrelate the patches: their responses have (near) unit variance and no covariance
    x = normalize(splits.train.images, torch.device("cpu"), channels_last=False)
    out = torch.nn.functional.conv2d(x, w[0::2]).transpose(0, 1).reshape(4, -1).double()
    cov = torch.cov(out)
    assert torch.allclose(cov, torch.eye(4, dtype=torch.float64), atol=0.05)


def test_whitened_weights_stay_fixed_through_training_and_decay(splits):
    cfg = TINY_TRAIN.replace(model=TINY_MODEL_8, whiten=True, weight_decay=0.1, epochs=1)
    from cifarnet.model import build_model, whiten_first_conv

    reference = build_model(cfg.model)
    whiten_first_conv(reference, splits.train.images)
    result = train(cfg, splits)
    assert torch.equal(result.model.block1a[0].weight, reference.block1a[0].weight)
    assert not torch.equal(result.model.block1a[0].bias, reference.block1a[0].bias)  # the bias trains


def test_alternate_flip_mirrors_each_image_in_every_other_epoch(splits, monkeypatch):
    from cifarnet.augment import TorchAugment

    seen: list[torch.Tensor] = []
    original = TorchAugment.from_uint8

    def spy(self, images, gen, device, channels_last=True, flip=None):
        seen.append(flip.clone())
        return original(self, images, gen, device, channels_last, flip)

    monkeypatch.setattr(TorchAugment, "from_uint8", spy)
    cfg = TINY_TRAIN.replace(alternate_flip=True, aug_strength=0.0, epochs=3, batch_size=len(splits.train))
    train(cfg, splits)
    e0, e1, e2 = seen  # one batch holding every image per epoch, in each epoch's own order
    assert e0.sum() == len(splits.train) // 2  # exactly half mirrored
    assert e0.sum() + e1.sum() == len(splits.train)
    assert e0.sum() == e2.sum()


def test_alternate_flip_needs_the_torch_backend():
    with pytest.raises(ConfigError, match="alternate_flip needs aug_backend"):
        TINY_TRAIN.replace(alternate_flip=True, aug_backend="albumentations")


def test_norm_lr_scale_gives_batchnorm_and_biases_their_own_learning_rate(splits):
    from cifarnet.train import _Trainer

    trainer = _Trainer(TINY_TRAIN.replace(norm_lr_scale=8.0, lr=0.05), splits, RunOptions())
    conv_group, norm_group = trainer.optimizer.param_groups
    assert conv_group["lr"] == pytest.approx(0.05 * lr_factor(trainer.cfg, 0, trainer.total_steps))
    assert norm_group["lr"] == pytest.approx(8 * conv_group["lr"])
    assert all(p.ndim > 1 for p in conv_group["params"]) and all(p.ndim <= 1 for p in norm_group["params"])
    # the default keeps one group, as before the knob existed (older checkpoints resume)
    assert len(_Trainer(TINY_TRAIN, splits, RunOptions()).optimizer.param_groups) == 1


@pytest.mark.parametrize("variant", [dict(whiten=True), dict(alternate_flip=True), dict(norm_lr_scale=4.0)])
def test_recipe_knobs_resume_to_identical_result(tmp_path, splits, variant):
    cfg = TINY_TRAIN.replace(model=TINY_MODEL_8, epochs=2, **variant)
    full = train(cfg, splits).history
    ck = tmp_path / "ck.pt"
    train(cfg, splits, lambda e, m: True, RunOptions(checkpoint=ck))  # stops after epoch 1
    resumed = train(cfg, splits, opts=RunOptions(checkpoint=ck, resume=True)).history
    assert [m["val_loss"] for m in resumed] == [m["val_loss"] for m in full]


def test_bf16_runs_in_fp32_where_the_device_has_no_native_bf16(splits, monkeypatch):
    import cifarnet.train as train_module

    fp32 = train(TINY_TRAIN.replace(epochs=1), splits)
    monkeypatch.setattr(train_module, "native_bf16", lambda device: False)
    emulated = train(TINY_TRAIN.replace(epochs=1, bf16=True), splits)
    assert emulated.extra["precision"] == "fp32"
    assert emulated.history[0]["val_loss"] == fp32.history[0]["val_loss"]  # the same computation as bf16 = false
    monkeypatch.setattr(train_module, "native_bf16", lambda device: True)
    native = train(TINY_TRAIN.replace(epochs=1, bf16=True), splits)
    assert native.extra["precision"] == "bf16" and native.history[0]["val_loss"] != fp32.history[0]["val_loss"]


def test_evaluating_only_the_last_epoch(splits):
    h = train(TINY_TRAIN.replace(epochs=3), splits, opts=RunOptions(evaluate_every_epoch=False)).history
    assert ["val_acc" in m for m in h] == [False, False, True]
    assert h[-1]["val_acc"] == train(TINY_TRAIN.replace(epochs=3), splits).history[-1]["val_acc"]
