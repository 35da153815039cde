"""`bonescan.gan.build`: every registered architecture honours the generator/discriminator contract."""

import pytest
import torch

from bonescan import gan
from bonescan.gan import available, build, class_dependent_keys, count_parameters

TINY = {"z_dim": 16, "base_channels": 8}


def test_both_paper_architectures_are_registered():
    assert available() == ["acgan", "mu_acgan"]


def test_unknown_architecture_lists_the_available_ones():
    with pytest.raises(ValueError, match="acgan.*mu_acgan"):
        build("stylegan", 3, (32, 16))


@pytest.mark.parametrize("arch", available())
@pytest.mark.parametrize("size", [(64, 16), (64, 32), (32, 32)])  # whole-body 4:1, tall 2:1, square
def test_generator_makes_images_in_range_and_discriminator_returns_two_logit_heads(arch, size):
    torch.manual_seed(0)
    g, d = build(arch, 3, size, **TINY)
    assert (g.z_dim, g.num_classes) == (16, 3)
    z, y = torch.randn(4, g.z_dim), torch.tensor([0, 1, 2, 0])
    x = g(z, y)
    assert x.shape == (4, 1, *size)
    assert x.min() >= -1 and x.max() <= 1
    real_fake, cls = d(x)
    assert real_fake.shape == (4, 1) and cls.shape == (4, 3)


@pytest.mark.parametrize("arch", available())
def test_discriminator_gradients_reach_the_generator(arch):
    g, d = build(arch, 2, (32, 16), **TINY)
    real_fake, cls = d(g(torch.randn(2, 16), torch.tensor([0, 1])))
    (real_fake.sum() + cls.sum()).backward()
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", available())
def test_label_changes_the_generated_image(arch):
    torch.manual_seed(0)
    g, _ = build(arch, 3, (32, 16), **TINY)
    g.eval()
    z = torch.randn(1, 16)
    with torch.no_grad():
        assert not torch.allclose(g(z, torch.tensor([0])), g(z, torch.tensor([2])))


@pytest.mark.parametrize("arch", available())
def test_three_channel_images_are_supported(arch):
    g, d = build(arch, 2, (32, 16), in_chans=3, **TINY)
    x = g(torch.randn(2, 16), torch.tensor([0, 1]))
    assert x.shape == (2, 3, 32, 16)
    assert d(x)[1].shape == (2, 2)


@pytest.mark.parametrize("arch", available())
def test_sizes_not_divisible_by_16_fail_early(arch):
    with pytest.raises(ValueError, match=r"\(40, 16\).*divisible by 16"):
        build(arch, 3, (40, 16), **TINY)


def test_none_options_keep_the_architecture_defaults():
    g_default, _ = build("acgan", 3, (32, 16), z_dim=16)
    g_none, _ = build("acgan", 3, (32, 16), z_dim=16, base_channels=None, spectral_norm=None)
    assert count_parameters(g_default) == count_parameters(g_none)


@pytest.mark.parametrize("arch", available())
def test_spectral_norm_flag_normalises_the_discriminator_only(arch):
    g, d = build(arch, 3, (32, 16), spectral_norm=True, **TINY)
    assert any("parametrizations" in k for k in d.state_dict())
    assert not any("parametrizations" in k for k in g.state_dict())
    assert d(torch.randn(2, 1, 32, 16))[0].shape == (2, 1)


@pytest.mark.parametrize("arch", available())
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_reset_classes_reinitialises_only_class_dependent_weights(arch, spectral_norm):
    torch.manual_seed(0)
    source_g, source_d = build(arch, 4, (32, 16), spectral_norm=spectral_norm, **TINY)
    target_g, target_d = build(arch, 3, (32, 16), spectral_norm=spectral_norm, **TINY)
    for source, target in [(source_g, target_g), (source_d, target_d)]:
        before = {k: v.clone() for k, v in source.state_dict().items()}
        changing = set(class_dependent_keys(source))
        assert changing and len(changing) < len(before)
        source.reset_classes(3)
        after = source.state_dict()
        assert source.num_classes == 3
        for key, value in after.items():
            if key in changing:
                assert value.shape == target.state_dict()[key].shape  # follows the new class count
            else:
                assert torch.equal(value, before[key]), key
        assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in target.state_dict().items()}
    assert source_d(source_g(torch.randn(2, 16), torch.tensor([0, 2])))[1].shape == (2, 3)


@pytest.mark.parametrize("arch", available())
def test_reset_classes_draws_new_class_weights_even_for_the_same_count(arch):
    g, d = build(arch, 3, (32, 16), **TINY)
    for net in (g, d):
        keys = [k for k in class_dependent_keys(net) if k.endswith("weight")]
        before = {k: net.state_dict()[k].clone() for k in keys}
        net.reset_classes(3)
        assert all(not torch.equal(net.state_dict()[k], before[k]) for k in keys)


def test_count_parameters_counts_elements():
    assert gan.count_parameters(torch.nn.Linear(3, 2)) == 8


@pytest.mark.parametrize("arch", available())
def test_one_discriminator_and_one_generator_step_fit_together(arch):
    """The pieces a training loop wires: DiffAugment in both steps, the two losses, EMA of G."""
    torch.manual_seed(0)
    g, d = build(arch, 3, (32, 16), **TINY)
    ema, augment = gan.EMA(g, decay=0.5), gan.DiffAugment("translation,cutout,color")
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-3), torch.optim.Adam(d.parameters(), 1e-3)
    real, y_real = torch.rand(4, 1, 32, 16) * 2 - 1, torch.tensor([0, 1, 2, 1])
    y_fake = torch.tensor([2, 1, 0, 0])
    fake = g(torch.randn(4, 16), y_fake)
    d_loss, d_stats = gan.discriminator_loss(*d(augment(real)), *d(augment(fake.detach())), y_real, y_fake)
    opt_d.zero_grad()
    d_loss.backward()
    assert all(p.grad is None for p in g.parameters())  # the D step does not train G
    opt_d.step()
    g_loss, g_stats = gan.generator_loss(*d(augment(fake)), y_fake)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    ema.update()
    assert torch.isfinite(d_loss) and torch.isfinite(g_loss)
    assert {"d_real_acc", "d_fake_acc", "d_cls_acc_real"} <= d_stats.keys() and "g_fool_rate" in g_stats
    assert not torch.equal(ema.ema_model.state_dict()["label_embedding.weight"], g.label_embedding.weight)
