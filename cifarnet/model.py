"""The CifarNet family: one builder, a ModelConfig per member; the default is the original network.

Original (153,104 parameters): blocks are Conv -> ReLU -> BN; "pool" is a 3x3 stride-2 conv followed by a
1x1 conv (no max-pool); block 3 adds a residual around the dilated 3b; AvgPool(4); 1x1 conv without bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cifarnet.config import ModelConfig

NUM_CLASSES = 10
IMAGE_SIZE = 32


def _conv_relu_bn(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True), nn.BatchNorm2d(cout)
    )


def _separable_relu_bn(cin: int, cout: int, depthwise: bool) -> nn.Sequential:
    if not depthwise:
        return _conv_relu_bn(cin, cout)
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin),  # depthwise 3x3
        nn.Conv2d(cin, cout, 1),  # pointwise
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(cout),
    )


def _pool(c: int) -> nn.Sequential:
    # The original downsamples with a learned strided conv + 1x1 conv instead of max-pooling.
    return nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.Conv2d(c, c, 1))


class CifarNet(nn.Module):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3, c4 = cfg.widths
        dw = cfg.depthwise
        self.block1a = _conv_relu_bn(3, c1)
        self.block1b = _conv_relu_bn(c1, c1)
        self.pool1 = _pool(c1)
        self.block2a = _separable_relu_bn(c1, c2, dw)
        self.block2b = _conv_relu_bn(c2, c2)
        self.pool2 = _pool(c2)
        self.block3a = _separable_relu_bn(c2, c3, dw)
        self.block3b = _conv_relu_bn(c3, c3, dilation=cfg.dilation)
        self.pool3 = _pool(c3)
        self.block4a = _separable_relu_bn(c3, c4, dw)
        self.block4b = _separable_relu_bn(c4, 2 * c4, dw)
        self.gap = nn.AvgPool2d(4)
        self.classifier = nn.Conv2d(2 * c4, NUM_CLASSES, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 32, 32) normalised
        x = self.pool1(self.block1b(self.block1a(x)))  # (B, c1, 16, 16)
        x = self.pool2(self.block2b(self.block2a(x)))  # (B, c2, 8, 8)
        x = self.block3a(x)  # (B, c3, 8, 8)
        x = x + self.block3b(x) if self.cfg.residual else self.block3b(x)
        x = self.pool3(x)  # (B, c3, 4, 4)
        x = self.block4b(self.block4a(x))  # (B, 2*c4, 4, 4)
        x = self.classifier(self.gap(x))  # (B, 10, 1, 1)
        return F.log_softmax(x.flatten(1).float(), dim=1)  # (B, 10) log-probabilities


def build_model(cfg: ModelConfig = ModelConfig()) -> CifarNet:
    return CifarNet(cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    out_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int  # multiply-adds per image (convolutions; BN/ReLU/pooling are negligible and not counted)
    receptive_field: int  # pixels, of the classifier's input after global pooling (capped by nothing)
    layers: tuple[LayerRow, ...]


def model_stats(cfg: ModelConfig = ModelConfig()) -> ModelStats:
    """Parameters, MACs per image and receptive field, measured by running one image through the model."""
    model = build_model(cfg).eval()
    rows: list[LayerRow] = []
    rf, jump = 1, 1  # receptive field and input-pixel stride of the current feature map

    def hook(module: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal rf, jump
        if isinstance(module, nn.Conv2d):
            k = module.dilation[0] * (module.kernel_size[0] - 1) + 1
            stride = module.stride[0]
            macs = out.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        else:  # AvgPool2d
            k = stride = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            macs = 0
        rf += (k - 1) * jump
        jump *= stride
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(LayerRow(names[module], type(module).__name__, tuple(out.shape[1:]), params, macs))

    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.AvgPool2d))]
    with torch.no_grad():
        model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    for h in handles:
        h.remove()
    return ModelStats(count_params(model), sum(r.macs for r in rows), rf, tuple(rows))


def format_summary(cfg: ModelConfig = ModelConfig(), stats: ModelStats | None = None) -> str:
    """The layer table printed by `hpo model summary` (`stats`: model_stats(cfg), if already measured)."""
    stats = stats or model_stats(cfg)
    bn_params = stats.params - sum(r.params for r in stats.layers)
    lines = [f"{'layer':<22}{'type':<10}{'output':<16}{'params':>10}{'MACs':>13}"]
    for r in stats.layers:
        shape = "x".join(map(str, r.out_shape))
        lines.append(f"{r.name:<22}{r.kind:<10}{shape:<16}{r.params:>10,}{r.macs:>13,}")
    lines += [
        f"{'(batch norm)':<48}{bn_params:>10,}",
        f"widths={list(cfg.widths)} dilation={cfg.dilation} residual={cfg.residual} depthwise={cfg.depthwise}",
        f"parameters: {stats.params:,}",
        f"MACs per image: {stats.macs:,}",
        f"receptive field: {stats.receptive_field} px",
    ]
    return "\n".join(lines)
