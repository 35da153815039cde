"""EMA of network weights (GAN generator, classifier)."""

import pytest
import torch
from torch import nn

from bonescan.ema import EMA


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _moved(decay: float) -> tuple[nn.Module, EMA, dict[str, torch.Tensor]]:
    """A network, its EMA, and the averaged weights before the network's parameters moved by +1."""
    torch.manual_seed(0)
    model = _net()
    ema = EMA(model, decay=decay)
    start = {k: v.clone() for k, v in ema.ema_model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model, ema, start


def test_update_moves_parameters_by_one_minus_decay_and_copies_buffers():
    model, ema, start = _moved(decay=0.9)
    model.train()
    model(torch.randn(8, 3))  # changes BN running statistics (buffers)
    ema.update()
    for name, p in model.named_parameters():
        expected = 0.9 * start[name] + 0.1 * p.detach()
        assert torch.allclose(ema.ema_model.state_dict()[name], expected)
    for name, b in model.named_buffers():
        assert torch.equal(ema.ema_model.state_dict()[name], b)


def test_ema_model_is_a_frozen_eval_copy_that_leaves_the_model_alone():
    model = _net()
    ema = EMA(model, decay=0.5)
    assert ema.ema_model is not model and not ema.ema_model.training
    assert all(not p.requires_grad for p in ema.ema_model.parameters())
    before = [p.clone() for p in model.parameters()]
    ema.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())


def test_state_dict_round_trips():
    ema = EMA(_net())
    other = EMA(_net())
    other.load_state_dict(ema.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(ema.state_dict().values(), other.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_decay_outside_unit_interval_is_rejected(decay):
    with pytest.raises(ValueError, match="decay"):
        EMA(_net(), decay)


def test_warm_up_decay_grows_towards_the_configured_decay():
    ema = EMA(_net(), decay=0.99)
    assert ema.decay_at(None) == 0.99
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(10_000) == 0.99
    assert [ema.decay_at(s) for s in (1, 10, 100)] == sorted(ema.decay_at(s) for s in (1, 10, 100))


def test_a_warm_up_step_moves_parameters_by_one_minus_its_decay():
    model, ema, start = _moved(decay=0.999)
    ema.update(step=1)
    for name, p in model.named_parameters():
        expected = (2 / 11) * start[name] + (9 / 11) * p.detach()
        assert torch.allclose(ema.ema_model.state_dict()[name], expected)
