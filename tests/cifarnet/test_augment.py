import numpy as np
import pytest
import torch

from cifarnet.augment import AugParams, TorchAugment, albumentations_pipeline, normalize
from cifarnet.data import load_cifar10


def _images(real_cifar_data, n=512):
    return real_cifar_data.train.images[:n].clone()  # a copy: the session's data stays as loaded


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
def test_backends_agree_in_output_statistics(real_cifar_data, strength):
    """Per-channel mean/std, the fraction of mean-filled (cutout) pixels and the change from the input agree."""
    imgs = _images(real_cifar_data)
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


def test_flip_p_is_independent_of_strength(tiny_cifar):
    """flip_p overrides the strength-tied flip: strength 0 + flip_p 0.5 mirrors about half the images, nothing else."""
    assert AugParams.from_strength(0.2).flip_p == 0.2  # the original mapping stays the default
    assert AugParams.from_strength(0.2, flip_p=0.5).flip_p == 0.5
    assert AugParams.from_strength(0.0, flip_p=0.0).is_identity
    with pytest.raises(ValueError, match="flip probability"):
        AugParams.from_strength(0.2, flip_p=1.5)
    imgs = load_cifar10(tiny_cifar).train.images[:200]
    x = normalize(imgs, torch.device("cpu"))
    y = TorchAugment(0.0, flip_p=0.5)(x, torch.Generator().manual_seed(0))
    same, mirrored = (y == x).flatten(1).all(1), (y == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 70 < int(mirrored.sum()) < 130
    pipe = albumentations_pipeline(0.0, flip_p=1.0)
    assert np.array_equal(pipe(image=imgs[0].numpy())["image"], imgs[0].numpy()[:, ::-1])


@pytest.mark.parametrize("strength,flip_p", [(0.5, None), (1.0, None), (0.2, 0.5), (0.0, 0.5), (0.3, 0.0)])
def test_uint8_path_matches_normalised_path(tiny_cifar, strength, flip_p):
    """The training loop's from_uint8 (flip on uint8, then normalise) gives the batch __call__ gives."""
    imgs = load_cifar10(tiny_cifar).train.images[:64]
    aug, cpu = TorchAugment(strength, flip_p), torch.device("cpu")
    a = aug(normalize(imgs, cpu), torch.Generator().manual_seed(3))
    b = aug.from_uint8(imgs, torch.Generator().manual_seed(3), cpu)
    assert b.is_contiguous(memory_format=torch.channels_last) and b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    if strength or flip_p:
        assert not torch.equal(b, normalize(imgs, cpu))


def test_normalize_matches_the_definition(tiny_cifar):
    from cifarnet.data import MEAN, STD

    imgs = load_cifar10(tiny_cifar).train.images[:8]
    ref = (imgs.permute(0, 3, 1, 2).double() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1)
    for cl in (True, False):
        x = normalize(imgs, torch.device("cpu"), channels_last=cl)
        torch.testing.assert_close(x.double(), ref, rtol=0, atol=1e-5)
        assert x.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
