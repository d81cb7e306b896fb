import json

import pytest
import torch

from cifarnet.config import ModelConfig
from cifarnet.model import build_model, count_params, model_stats
from tests.helpers import one_error_line, run_cli

FAMILY = {
    "original": ModelConfig(),
    "narrow": ModelConfig(widths=(8, 16, 24, 32)),
    "wide-dilation4": ModelConfig(widths=(24, 48, 96, 160), dilation=4),
    "plain-no-residual": ModelConfig(depthwise=False, residual=False, dilation=1),
    "dilation3": ModelConfig(dilation=3),
    "stride-conv-alone": ModelConfig(downsample="conv"),
    "maxpool": ModelConfig(downsample="maxpool"),
    "dilated-downsampling": ModelConfig(downsample="dilated"),
    "mixed-downsampling": ModelConfig(downsample=("maxpool", "conv", "dilated")),
    "plain-stage2-only": ModelConfig(depthwise=(False, True, True)),
    "residual-all": ModelConfig(residual_all=True),
    "gelu-bn-first": ModelConfig(activation="gelu", norm_order="bn_act"),
    "frontier-like": ModelConfig(widths=(32, 64, 96, 96), downsample="maxpool", depthwise=(False, False, True),
                                 activation="gelu", norm_order="bn_act", residual_all=True, dilation=1),
}
# The original's downsampling steps after stages of 16, 32 and 64 channels: a 3x3 conv and a 1x1 conv, with biases.
STRIDE_CONVS = sum(9 * c * c + c for c in (16, 32, 64))
ONE_BY_ONES = sum(c * c + c for c in (16, 32, 64))
# (name, type, output shape, parameters) of every row of the original's layer table: the network as published.
ORIGINAL_LAYERS = [
    ("block1a.0", "Conv2d", (16, 32, 32), 448), ("block1b.0", "Conv2d", (16, 32, 32), 2320),
    ("pool1.0", "Conv2d", (16, 16, 16), 2320), ("pool1.1", "Conv2d", (16, 16, 16), 272),
    ("block2a.0", "Conv2d", (16, 16, 16), 160), ("block2a.1", "Conv2d", (32, 16, 16), 544),
    ("block2b.0", "Conv2d", (32, 16, 16), 9248), ("pool2.0", "Conv2d", (32, 8, 8), 9248),
    ("pool2.1", "Conv2d", (32, 8, 8), 1056), ("block3a.0", "Conv2d", (32, 8, 8), 320),
    ("block3a.1", "Conv2d", (64, 8, 8), 2112), ("block3b.0", "Conv2d", (64, 8, 8), 36928),
    ("pool3.0", "Conv2d", (64, 4, 4), 36928), ("pool3.1", "Conv2d", (64, 4, 4), 4160),
    ("block4a.0", "Conv2d", (64, 4, 4), 640), ("block4a.1", "Conv2d", (128, 4, 4), 8320),
    ("block4b.0", "Conv2d", (128, 4, 4), 1280), ("block4b.1", "Conv2d", (256, 4, 4), 33024),
    ("gap", "AvgPool2d", (256, 1, 1), 0), ("classifier", "Conv2d", (10, 1, 1), 2560),
]


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


def test_the_original_layer_table_is_unchanged():
    stats = model_stats()
    assert [(r.name, r.kind, r.out_shape, r.params) for r in stats.layers] == ORIGINAL_LAYERS
    assert stats.params - sum(r.params for r in stats.layers) == 2 * (16 * 2 + 32 * 2 + 64 * 2 + 128 + 256)  # BatchNorm weights + biases
    modules = build_model()
    assert [type(m).__name__ for m in modules.block1a] == ["Conv2d", "ReLU", "BatchNorm2d"]  # ReLU before BN


@pytest.mark.parametrize("downsample, params", [
    ("conv1x1", 153_104), ("conv", 153_104 - ONE_BY_ONES), ("dilated", 153_104 - ONE_BY_ONES),
    ("maxpool", 153_104 - STRIDE_CONVS - ONE_BY_ONES),
])
def test_downsampling_switch_parameter_counts_and_maps(downsample, params):
    model = build_model(ModelConfig(downsample=downsample))
    assert count_params(model) == params
    x = torch.randn(2, 3, 32, 32)
    x = model.pool1(model.block1b(model.block1a(x)))
    assert x.shape == (2, 16, 16, 16)  # every option halves the map
    x = model.pool2(model.block2b(model.block2a(x)))
    assert x.shape == (2, 32, 8, 8)


def test_per_stage_switches_change_only_their_stage():
    plain2 = count_params(build_model(ModelConfig(depthwise=(False, True, True))))
    # block2a becomes a plain 3x3 conv (16 -> 32) instead of depthwise (16 x 9 + 16) + pointwise (16 x 32 + 32)
    assert plain2 - 153_104 == (9 * 16 * 32 + 32) - (9 * 16 + 16 + 16 * 32 + 32)
    only_last = count_params(build_model(ModelConfig(downsample=("conv1x1", "conv1x1", "maxpool"))))
    assert 153_104 - only_last == 9 * 64 * 64 + 64 + 64 * 64 + 64
    assert ModelConfig(depthwise=False).depthwise == (False, False, False)  # one value sets every stage
    assert ModelConfig(downsample="conv").downsample == ("conv",) * 3


def test_activation_and_norm_order_switches_keep_the_parameters():
    gelu = build_model(ModelConfig(activation="gelu", norm_order="bn_act"))
    assert count_params(gelu) == 153_104
    assert [type(m).__name__ for m in gelu.block1a] == ["Conv2d", "BatchNorm2d", "GELU"]
    assert count_params(build_model(ModelConfig(residual_all=True, residual=False))) == 153_104


def test_residuals_are_added_where_configured():
    torch.manual_seed(0)
    model = build_model(ModelConfig(residual_all=True)).eval()
    x = torch.randn(2, 16, 32, 32)
    # residual_all adds block1b's input to its output (same shape), the original does not
    plain = build_model(ModelConfig()).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        a = model.pool1(x + model.block1b(x))
        b = plain.pool1(plain.block1b(x))
        assert not torch.allclose(a, b)
        assert torch.allclose(model(torch.zeros(1, 3, 32, 32)).exp().sum(), torch.tensor(1.0))


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


@pytest.mark.parametrize("bad", [dict(widths=(16, 32, 64)), dict(dilation=0), dict(dilation=5), dict(widths=(0, 1, 1, 1)),
                                 dict(downsample="avgpool"), dict(downsample=("conv", "conv")),
                                 dict(depthwise=(True, False)), dict(activation="tanh"), dict(norm_order="bn")])
def test_bad_model_config_rejected(bad):
    from cifarnet.errors import ConfigError

    with pytest.raises(ConfigError):
        ModelConfig(**bad)


def _ok(r):
    assert r.returncode == 0, r.stderr
    return r


def test_cli_model_summary_prints_parameter_count(tmp_path):
    out = _ok(run_cli("model", "summary")).stdout
    assert "parameters: 153,104" in out
    assert "block3b.0" in out and "receptive field: 107 px" in out
    cfg = tmp_path / "run.toml"
    cfg.write_text("[model]\nwidths = [8, 16, 32, 64]\n")
    out = _ok(run_cli("model", "summary", "--config", str(cfg))).stdout
    assert f"parameters: {model_stats(ModelConfig(widths=(8, 16, 32, 64))).params:,}" in out
    record = json.loads(_ok(run_cli("model", "summary", "--config", str(cfg), "-f", "json")).stdout)
    stats = model_stats(ModelConfig(widths=(8, 16, 32, 64)))
    assert record["model"]["widths"] == [8, 16, 32, 64] and record["params"] == stats.params
    assert (record["macs"], record["receptive_field"]) == (stats.macs, stats.receptive_field)
    assert [row["name"] for row in record["layers"]] == [row.name for row in stats.layers]


def test_cli_model_summary_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[model]\nwidht = [8, 16, 32, 64]\n")
    r = run_cli("model", "summary", "--config", str(cfg))
    assert "unknown key(s) in [model]: widht" in one_error_line(r)  # exit 1, one line, no traceback


def test_run_files_and_stored_configs_take_per_stage_switches_as_one_value_or_a_list():
    from cifarnet.config import TrainConfig
    from cifarnet.errors import ConfigError

    one = TrainConfig.from_dict({"model": {"depthwise": True, "downsample": "maxpool"}}).model
    assert one.depthwise == (True, True, True) and one.downsample == ("maxpool",) * 3  # as older files wrote them
    listed = TrainConfig.from_dict({"model": {"depthwise": [False, True, True]}}).model
    assert listed.depthwise == (False, True, True)
    for bad in ({"depthwise": 1}, {"depthwise": [True, "x", True]}, {"downsample": 2}, {"widths": True}):
        with pytest.raises(ConfigError):
            TrainConfig.from_dict({"model": bad})
