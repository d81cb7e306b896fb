import numpy as np
import pytest
import torch

from cifarnet.augment import AugParams, TorchAugment, albumentations_pipeline, normalize
from cifarnet.data import load_cifar10


def _images(real_cifar, n=512):
    return load_cifar10(real_cifar).train.images[:n]


def test_strength_zero_is_identity_for_both_backends(tiny_cifar):
    imgs = load_cifar10(tiny_cifar).train.images[:16]
    x = normalize(imgs, torch.device("cpu"))
    assert torch.equal(TorchAugment(0.0)(x, torch.Generator().manual_seed(0)), x)
    pipe = albumentations_pipeline(0.0)
    for img in imgs.numpy():
        assert np.array_equal(pipe(image=img)["image"], img)


@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_outputs_keep_shape_and_dtype(tiny_cifar, strength):
    imgs = load_cifar10(tiny_cifar).train.images[:16]
    x = normalize(imgs, torch.device("cpu"))
    y = TorchAugment(strength)(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype and not torch.equal(x, y)
    out = albumentations_pipeline(strength)(image=imgs[0].numpy())["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_original_settings_at_half_strength():
    a = AugParams.from_strength(0.5)
    assert (a.flip_p, a.affine_p, a.cutout_p, a.hole) == (0.5, 0.5, 0.5, 16)
    assert (a.shift, a.scale, a.rotate) == (0.0625, 0.1, 45.0)
    stronger = AugParams.from_strength(1.0)
    assert stronger.rotate > a.rotate and stronger.hole > a.hole and stronger.affine_p == 1.0


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_backends_agree_in_output_statistics(real_cifar, strength):
    """Per-channel mean/std, the fraction of mean-filled (cutout) pixels and the change from the input agree."""
    imgs = _images(real_cifar)
    x = normalize(imgs, torch.device("cpu"), channels_last=False)
    t = TorchAugment(strength)(x, torch.Generator().manual_seed(0))
    pipe = albumentations_pipeline(strength)
    pipe.set_random_seed(0)
    a = normalize(torch.from_numpy(np.stack([pipe(image=i)["image"] for i in imgs.numpy()])),
                  torch.device("cpu"), channels_last=False)
    for stat in (lambda z: z.mean((0, 2, 3)), lambda z: z.std((0, 2, 3))):
        assert torch.allclose(stat(t), stat(a), atol=0.05), (stat(t), stat(a))
    change_t, change_a = (t - x).abs().mean(), (a - x).abs().mean()
    assert abs(change_t - change_a) / change_a < 0.15, (change_t, change_a)
    # CoarseDropout fills with the mean pixel (~0 after normalising): a similar share of such pixels
    near_zero = lambda z: (z.abs() < 0.02).all(1).float().mean()
    assert abs(near_zero(t) - near_zero(a)) < 0.03, (near_zero(t), near_zero(a))
