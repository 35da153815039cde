"""DiffAugment (Zhao et al. 2020): shape-preserving, differentiable, seedable."""

import pytest
import torch

from bonescan.gan.diffaugment import DiffAugment, cutout, parse_policy, translation


def _images(b=4, c=1, h=32, w=16):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("policy", ["translation", "cutout", "color", "translation,cutout,color"])
@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_keeps_shape_and_lets_gradients_through(policy, channels):
    x = _images(c=channels).requires_grad_(True)
    out = DiffAugment(policy)(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_empty_policy_is_the_identity():
    x = _images()
    assert torch.equal(DiffAugment("")(x), x)
    assert parse_policy("") == ()


def test_same_generator_seed_gives_the_same_augmentation():
    x, augment = _images(), DiffAugment("translation,cutout,color")
    a = augment(x, generator=torch.Generator().manual_seed(7))
    b = augment(x, generator=torch.Generator().manual_seed(7))
    c = augment(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_global_seed_makes_augmentation_reproducible():
    x, augment = _images(), DiffAugment("translation,cutout,color")
    torch.manual_seed(3)
    a = augment(x)
    torch.manual_seed(3)
    assert torch.equal(a, augment(x))


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="'rotate'.*color"):
        DiffAugment("translation,rotate")


def test_translation_shifts_content_by_at_most_the_ratio_and_fills_the_border():
    x = torch.full((64, 1, 32, 16), -1.0)
    x[:, :, 16, 8] = 1.0  # one bright pixel in the middle
    out = translation(x, torch.Generator().manual_seed(0), ratio=0.125, fill=-1.0)
    rows, cols = (out[:, 0] == 1.0).nonzero()[:, 1:].T
    assert len(rows) == 64  # the pixel survives every shift, exactly once
    assert (rows - 16).abs().max() <= 4 and (cols - 8).abs().max() <= 2
    assert (rows != 16).any() and (cols != 8).any()
    assert set(out.unique().tolist()) == {-1.0, 1.0}  # border filled with the background, no grey


def test_cutout_blanks_at_most_half_of_each_side_with_the_fill_value():
    x = torch.ones(32, 1, 32, 16)
    out = cutout(x, torch.Generator().manual_seed(0), ratio=0.5, fill=-1.0)
    blanked = (out == -1.0).sum(dim=(1, 2, 3))
    assert (blanked > 0).all() and (blanked <= 16 * 8).all()
    assert (blanked == 16 * 8).any()  # an unclipped rectangle is exactly half by half


def test_color_on_one_channel_is_a_per_image_brightness_and_contrast_change():
    x = _images(b=3)
    out = DiffAugment("color")(x, generator=torch.Generator().manual_seed(0))
    for xi, oi in zip(x.flatten(1), out.flatten(1), strict=True):
        design = torch.stack([xi, torch.ones_like(xi)], dim=1)
        gain, offset = torch.linalg.lstsq(design, oi.unsqueeze(1)).solution.squeeze(1)
        assert torch.allclose(design @ torch.stack([gain, offset]), oi, atol=1e-5)
        assert 0.5 <= gain <= 1.5
