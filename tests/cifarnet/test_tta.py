import math

import torch

from cifarnet.config import ModelConfig
from cifarnet.model import build_model
from cifarnet.tta import translate, tta_logp, views


def test_translate_moves_content_and_reflects_the_border():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    down_right = translate(x, 1, 1)
    assert down_right.shape == x.shape
    assert torch.equal(down_right[:, :, 1:, 1:], x[:, :, :-1, :-1])
    assert torch.equal(down_right[:, :, 0, 1:], x[:, :, 1, :-1])  # reflected row, as F.pad(mode="reflect")
    assert torch.equal(translate(x, -2, -2)[:, :, :-2, :-2], x[:, :, 2:, 2:])
    assert translate(x, 0, 0) is x


def test_views_and_their_average():
    x = torch.randn(4, 3, 32, 32)
    assert len(views(x)) == 1 and len(views(x, flip=True)) == 2
    assert len(views(x, shift=1)) == 3 and len(views(x, flip=True, shift=1)) == 6
    model = build_model(ModelConfig(widths=(4, 8, 8, 8))).eval()
    with torch.no_grad():
        assert torch.equal(tta_logp(model, x), model(x))
        logp = tta_logp(model, x, flip=True, shift=1)
        expected = torch.stack([model(v).exp() for v in views(x, True, 1)]).mean(0).log()
        plain = model(x)
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-5)
    assert torch.allclose(logp.exp().sum(1), torch.ones(4), atol=1e-5)  # still log-probabilities
    assert not math.isclose(float((logp - plain).abs().max()), 0.0)
