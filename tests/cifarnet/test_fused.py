"""The fused ReLU -> BatchNorm2d kernel against the native ops it replaces."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from cifarnet import fused
from cifarnet.config import ModelConfig
from cifarnet.fused import ReLUBatchNorm2d, fuse_relu_batchnorm
from cifarnet.model import build_model, count_params


@pytest.fixture(autouse=True)
def fused_kernel(monkeypatch):
    """The kernel is opt-in (CIFARNET_FUSED=1); these tests opt in, and check it really was built."""
    monkeypatch.setenv("CIFARNET_FUSED", "1")
    monkeypatch.setattr(fused, "_lib_tried", False)
    assert fused.kernel() is not None


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def _native_and_fused(channels: int):
    torch.manual_seed(0)
    native = nn.BatchNorm2d(channels)
    native.weight.data.uniform_(0.5, 1.5)
    native.bias.data.normal_()
    twin = copy.deepcopy(native)
    twin.__class__ = ReLUBatchNorm2d
    return native, twin


def _run(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, relu_first: bool):
    x = x.detach().clone().requires_grad_()
    y = module(torch.relu(x)) if relu_first else module(x)
    y.backward(grad)
    return y.detach(), x.grad, module.weight.grad, module.bias.grad


# 16 and 32 channels are read as 64-wide rows, 48 and 256 as they are, 24 takes the portable (non-vector) body.
@pytest.mark.parametrize("channels,size", [(16, 8), (32, 4), (48, 4), (24, 4), (256, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_native_relu_batchnorm(channels, size, dtype):
    native, twin = _native_and_fused(channels)
    x = torch.randn(8, channels, size, size).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 rounding of outputs and input gradients
    for _ in range(2):  # twice: running statistics follow the same momentum update
        want = _run(native, x, grad, relu_first=True)
        got = _run(twin, x, grad, relu_first=False)
        assert got[0].dtype == dtype and got[0].is_contiguous(memory_format=torch.channels_last)
        for g, w in zip(got, want):
            assert _rel(g, w) < tol
        native.weight.grad = native.bias.grad = twin.weight.grad = twin.bias.grad = None
    assert _rel(twin.running_mean, native.running_mean) < 1e-5
    assert _rel(twin.running_var, native.running_var) < 1e-5
    assert twin.num_batches_tracked.item() == native.num_batches_tracked.item() == 2


def test_nan_propagates_like_native():
    # A NaN activation must reach the loss (the training loop stops on non-finite losses), not vanish in relu.
    _, twin = _native_and_fused(16)
    x = torch.randn(4, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    x[0, 3, 1, 1] = float("nan")
    assert torch.isnan(twin(x)[:, 3]).all()


def test_falls_back_to_native_where_it_cannot_fuse():
    native, twin = _native_and_fused(16)
    x = torch.randn(4, 16, 4, 4)  # NCHW: not rows of channels
    assert torch.equal(twin(x), native(torch.relu(x)))
    native.eval(), twin.eval()
    x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(twin(x), native(torch.relu(x)))


def test_fusing_keeps_parameters_keys_and_results():
    torch.manual_seed(0)
    plain = build_model(ModelConfig())
    model = copy.deepcopy(plain)
    assert fuse_relu_batchnorm(model) == 8  # every Conv -> ReLU -> BN block of the original
    assert count_params(model) == 153_104
    assert list(model.state_dict()) == list(plain.state_dict())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    plain, model = plain.to(memory_format=torch.channels_last), model.to(memory_format=torch.channels_last)
    assert _rel(model(x), plain(x)) < 1e-4  # training mode: the fused kernel (float rounding over 8 layers)
    model.load_state_dict(plain.state_dict())  # the same running statistics
    plain.eval(), model.eval()
    assert torch.equal(model(x), plain(x))  # eval: exactly the native ops
    build_model(ModelConfig()).load_state_dict(model.state_dict())  # a checkpoint loads into the plain model


def test_off_by_default_and_switched_off_by_environment():
    code = "from cifarnet import fused; print(fused.kernel() is None)"
    env = {k: v for k, v in os.environ.items() if k != "CIFARNET_FUSED"}
    for extra in ({}, {"CIFARNET_FUSED": "0"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**env, **extra})
        assert out.stdout.strip() == "True"


def test_no_compiler_warns_once_and_uses_native_ops(tmp_path):
    code = ("import logging, torch; logging.basicConfig(); from cifarnet import fused; "
            "print(fused.kernel() is None); print(fused.kernel() is None)")
    env = {**os.environ, "CC": "no-such-compiler", "PATH": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path),
           "CIFARNET_FUSED": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["True", "True"]
    assert out.stderr.count("fused ReLU+BatchNorm kernel unavailable, using the native ops") == 1
