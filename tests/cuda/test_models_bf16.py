"""Every registered classifier under bf16 autocast and channels_last, as training runs it on CUDA.

On a GPU the input is 224 x 224 (the size the multi-scale CNN is benchmarked at); on the CPU stand-in
it is the smallest comfortable size of each model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bonescan.models import available, build

pytestmark = pytest.mark.cuda

NUM_CLASSES = 3


def _input_size(model: torch.nn.Module, on_gpu: bool) -> tuple[int, int]:
    if on_gpu:
        return (224, 224)
    return tuple(max(64, side) for side in getattr(model, "min_input_size", (32, 32)))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", available())
def test_bf16_channels_last_logits_match_fp32_logits_of_the_same_weights(name, device, on_gpu):
    torch.manual_seed(0)
    model = build(name, NUM_CLASSES).to(device).eval()
    x = torch.rand(4, 1, *_input_size(model, on_gpu), device=device)
    with torch.no_grad():
        reference = model(x)  # fp32, contiguous: the CPU path
        model.to(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(x.contiguous(memory_format=torch.channels_last))
    assert low.shape == reference.shape == (4, NUM_CLASSES)
    assert torch.isfinite(low.float()).all()
    # bf16 keeps 8 bits of mantissa: a few per cent of the logits' size after a deep network, not more.
    assert _relative_error(low, reference) < 0.1, f"{name}: bf16 logits far from fp32"


@pytest.mark.parametrize("name", available())
def test_a_bf16_channels_last_training_step_gives_finite_gradients_and_moves_every_trained_weight(
    name, device, on_gpu
):
    torch.manual_seed(0)
    model = build(name, NUM_CLASSES).to(device, memory_format=torch.channels_last).train()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(4, 1, *_input_size(model, on_gpu), device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.tensor([0, 1, 2, 0], device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)  # what bonescan.train does: the loss in fp32
    loss.backward()
    assert torch.isfinite(loss)
    grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
    missing = [k for k, g in grads.items() if g is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"{name}: non-finite gradients in {bad[:5]}"
    optimizer.step()
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p.detach(), before[k])]
    assert not unchanged, f"{name}: the step left {unchanged[:5]} unchanged"
    assert all(g.dtype == torch.float32 for g in grads.values())  # master weights stay fp32
