"""The CifarNet family: one builder, a ModelConfig per member; the default is the original network.

Original (153,104 parameters): blocks are Conv -> ReLU -> BN; "pool" is a 3x3 stride-2 conv followed by a
1x1 conv (no max-pool); block 3 adds a residual around the dilated 3b; AvgPool(4); 1x1 conv without bias.
The switches answer the original author's open questions: how each stage downsamples, depthwise-separable or
plain convs per stage, which blocks carry a residual, the activation and where BatchNorm sits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cifarnet.config import ModelConfig

NUM_CLASSES = 10
IMAGE_SIZE = 32


def _act_and_norm(cout: int, cfg: ModelConfig) -> list[nn.Module]:
    act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU(inplace=True)
    bn = nn.BatchNorm2d(cout)
    return [act, bn] if cfg.norm_order == "act_bn" else [bn, act]


def _conv_block(cin: int, cout: int, cfg: ModelConfig, dilation: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
    return nn.Sequential(conv, *_act_and_norm(cout, cfg))


def _separable_block(cin: int, cout: int, cfg: ModelConfig, depthwise: bool) -> nn.Sequential:
    if not depthwise:
        return _conv_block(cin, cout, cfg)
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin),  # depthwise 3x3
        nn.Conv2d(cin, cout, 1),  # pointwise
        *_act_and_norm(cout, cfg),
    )


def _downsample(c: int, kind: str, size: int) -> nn.Module:
    """Halve a (c, size, size) map. The original's learned strided conv + 1x1 conv is linear end to end (no
    activation between them), so the 1x1 adds parameters and a different optimisation path, not expressiveness."""
    if kind == "conv1x1":
        return nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.Conv2d(c, c, 1))
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1))
    if kind == "maxpool":
        return nn.MaxPool2d(2)
    return nn.Sequential(nn.Conv2d(c, c, 3, dilation=size // 4))  # "dilated": no padding, size - 2 * size/4


class CifarNet(nn.Module):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3, c4 = cfg.widths
        dw2, dw3, dw4 = cfg.depthwise
        self.block1a = _conv_block(3, c1, cfg)
        self.block1b = _conv_block(c1, c1, cfg)
        self.pool1 = _downsample(c1, cfg.downsample[0], IMAGE_SIZE)
        self.block2a = _separable_block(c1, c2, cfg, dw2)
        self.block2b = _conv_block(c2, c2, cfg)
        self.pool2 = _downsample(c2, cfg.downsample[1], IMAGE_SIZE // 2)
        self.block3a = _separable_block(c2, c3, cfg, dw3)
        self.block3b = _conv_block(c3, c3, cfg, dilation=cfg.dilation)
        self.pool3 = _downsample(c3, cfg.downsample[2], IMAGE_SIZE // 4)
        self.block4a = _separable_block(c3, c4, cfg, dw4)
        self.block4b = _separable_block(c4, 2 * c4, cfg, dw4)
        self.gap = nn.AvgPool2d(4)
        self.classifier = nn.Conv2d(2 * c4, NUM_CLASSES, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 32, 32) normalised
        cfg = self.cfg
        x = self.block1a(x)  # (B, c1, 32, 32)
        x = self.pool1(_maybe_residual(self.block1b, x, cfg.residual_all))  # (B, c1, 16, 16)
        x = self.block2a(x)  # (B, c2, 16, 16)
        x = self.pool2(_maybe_residual(self.block2b, x, cfg.residual_all))  # (B, c2, 8, 8)
        x = self.block3a(x)  # (B, c3, 8, 8)
        x = self.pool3(_maybe_residual(self.block3b, x, cfg.residual))  # (B, c3, 4, 4)
        x = self.block4b(self.block4a(x))  # (B, 2*c4, 4, 4)
        x = self.classifier(self.gap(x))  # (B, 10, 1, 1)
        return F.log_softmax(x.flatten(1).float(), dim=1)  # (B, 10) log-probabilities


def _maybe_residual(block: nn.Module, x: torch.Tensor, residual: bool) -> torch.Tensor:
    return x + block(x) if residual else block(x)


def build_model(cfg: ModelConfig = ModelConfig()) -> CifarNet:
    return CifarNet(cfg)


WHITEN_IMAGES = 5000  # images whose 3x3 patches estimate the covariance (more changes the filters by <1%)
WHITEN_EPS = 5e-4  # added to each eigenvalue, as airbench does: keeps near-zero directions from blowing up


@torch.no_grad()
def whiten_first_conv(model: CifarNet, images: torch.Tensor) -> None:
    """Set block1a's 3x3 conv to a patch-PCA whitening of `images` (uint8 (N, 32, 32, 3)) and freeze it.

    Filters come in +- pairs of the covariance's leading eigenvectors scaled by 1/sqrt(eigenvalue + eps), so
    after the activation both signs of each whitened direction survive (airbench's first layer, here on the
    original's own first conv and its padding). Channels beyond 2 x 27 keep their random init, frozen too.
    The bias stays trainable."""
    from cifarnet.augment import normalize  # augment builds on data; the model module stays light to import

    conv = model.block1a[0]
    x = normalize(images[:WHITEN_IMAGES], torch.device("cpu"), channels_last=False)  # (N, 3, 32, 32)
    patches = F.unfold(x, 3).transpose(1, 2).reshape(-1, 27).double()  # (N * 900, 27)
    patches = patches - patches.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))  # ascending
    order = eigenvalues.argsort(descending=True)
    filters = eigenvectors[:, order].T / (eigenvalues[order, None] + WHITEN_EPS).sqrt()  # (27, 27)
    filters = torch.cat([filters, -filters], 1).reshape(-1, 27)  # +v1, -v1, +v2, -v2, ...
    n = min(conv.out_channels, len(filters))
    conv.weight[:n] = filters[:n].view(n, 3, 3, 3).to(conv.weight.dtype)
    conv.weight.requires_grad_(False)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_params_of(cfg: ModelConfig) -> int:
    """Parameters of the member `cfg`, built on the meta device: no memory, no initialisation."""
    with torch.device("meta"):
        return count_params(build_model(cfg))


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
        else:  # AvgPool2d, MaxPool2d
            k = stride = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            macs = 0
        rf += (k - 1) * jump
        jump *= stride
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(LayerRow(names[module], type(module).__name__, tuple(out.shape[1:]), params, macs))

    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d))]
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
        cfg.describe(),
        f"parameters: {stats.params:,}",
        f"MACs per image: {stats.macs:,}",
        f"receptive field: {stats.receptive_field} px",
    ]
    return "\n".join(lines)

