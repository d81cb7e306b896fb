import json
import subprocess

import pytest
import torch

from cifarnet.config import ModelConfig
from cifarnet.model import build_model, count_params, model_stats

FAMILY = {
    "original": ModelConfig(),
    "narrow": ModelConfig(widths=(8, 16, 24, 32)),
    "wide-dilation4": ModelConfig(widths=(24, 48, 96, 160), dilation=4),
    "plain-no-residual": ModelConfig(depthwise=False, residual=False, dilation=1),
    "dilation3": ModelConfig(dilation=3),
}


def test_default_is_the_original_153104_parameters():
    assert count_params(build_model()) == 153_104
    assert model_stats().params == 153_104


@pytest.mark.parametrize("name", FAMILY)
def test_family_member_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(FAMILY[name])
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)  # log-probabilities
    out.mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_stats_respond_to_config():
    base = model_stats()
    assert model_stats(ModelConfig(depthwise=False)).params > base.params
    assert model_stats(ModelConfig(dilation=4)).receptive_field > base.receptive_field
    assert model_stats(ModelConfig(dilation=1)).receptive_field < base.receptive_field
    assert model_stats(ModelConfig(widths=(32, 64, 128, 256))).macs > 3 * base.macs
    # dilation never changes the parameter count or the 8x8 map size ("same" padding)
    assert model_stats(ModelConfig(dilation=3)).params == base.params


def test_receptive_field_of_original():
    # 3x3 convs at strides 1,1,2,2,4,4,8..., AvgPool(4) at stride 8: hand-derived value
    assert model_stats().receptive_field == 107


@pytest.mark.parametrize("bad", [dict(widths=(16, 32, 64)), dict(dilation=0), dict(dilation=5), dict(widths=(0, 1, 1, 1))])
def test_bad_model_config_rejected(bad):
    from cifarnet.errors import ConfigError

    with pytest.raises(ConfigError):
        ModelConfig(**bad)


def test_cli_model_summary_prints_parameter_count(tmp_path):
    out = subprocess.run(["hpo", "model", "summary"], capture_output=True, text=True, check=True).stdout
    assert "parameters: 153,104" in out
    assert "block3b.0" in out and "receptive field: 107 px" in out
    cfg = tmp_path / "run.toml"
    cfg.write_text("[model]\nwidths = [8, 16, 32, 64]\n")
    out = subprocess.run(["hpo", "model", "summary", "--config", str(cfg)], capture_output=True, text=True,
                         check=True).stdout
    assert f"parameters: {model_stats(ModelConfig(widths=(8, 16, 32, 64))).params:,}" in out
    record = json.loads(subprocess.run(["hpo", "model", "summary", "--config", str(cfg), "-f", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    stats = model_stats(ModelConfig(widths=(8, 16, 32, 64)))
    assert record["model"]["widths"] == [8, 16, 32, 64] and record["params"] == stats.params
    assert (record["macs"], record["receptive_field"]) == (stats.macs, stats.receptive_field)
    assert [row["name"] for row in record["layers"]] == [row.name for row in stats.layers]


def test_cli_model_summary_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[model]\nwidht = [8, 16, 32, 64]\n")
    r = subprocess.run(["hpo", "model", "summary", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "unknown key(s) in [model]: widht" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
