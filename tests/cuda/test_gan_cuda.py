"""Both GAN architectures on CUDA: paper-size training steps under bf16 autocast, and exact resume.

On a GPU the steps run at the paper preset (`GAN_PAPER_PRESET`: full 256 x 96 images, default
widths, z_dim 128, batch 2); on the CPU stand-in at 32 x 16 with the test widths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bonescan.config import GAN_PAPER_PRESET, GanConfig, GanModelConfig, GanTrainConfig
from bonescan.data.manifest import read_manifest
from bonescan.gan import available, count_parameters
from bonescan.gan.train import train_gan, train_step, training_parts
from bonescan.gan.weights import GanRun, load_weights
from tests.png_cohorts import SIZE, write_cohort

pytestmark = pytest.mark.cuda

CLASSES = ["healthy", "metastasis", "benign"]
PAPER_SIZE = (256, 96)  # base.image_size, which the paper preset trains at


def _paper_like(on_gpu: bool) -> tuple[GanModelConfig, GanTrainConfig, tuple[int, int]]:
    train = GanTrainConfig(**GAN_PAPER_PRESET["train"])
    if on_gpu:
        return GanModelConfig(**GAN_PAPER_PRESET["model"]), train, PAPER_SIZE
    return GanModelConfig(image_size=SIZE, z_dim=16, base_channels=8), train, SIZE


@pytest.mark.parametrize("arch", available())
def test_paper_preset_training_steps_are_finite_and_train_both_networks(arch, device, on_gpu):
    model_cfg, train_cfg, size = _paper_like(on_gpu)
    torch.manual_seed(0)
    parts = training_parts(arch, len(CLASSES), size, model_cfg, train_cfg, device)
    expected_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    assert parts.memory_format == expected_format
    before_g = [p.detach().clone() for p in parts.g.parameters()]
    before_d = [p.detach().clone() for p in parts.d.parameters()]
    noise, aug = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    real = (torch.rand(train_cfg.batch_size, 1, *size) * 2 - 1).to(device, memory_format=parts.memory_format)
    labels = torch.arange(train_cfg.batch_size).remainder(len(CLASSES)).to(device)
    for _ in range(3):
        stats = train_step(
            parts.g, parts.d, parts.opt_g, parts.opt_d, real, labels, len(CLASSES), parts.augment, noise, aug,
            device, d_fake_class_loss=train_cfg.d_fake_class_loss, mode_seeking=train_cfg.mode_seeking,
        )  # fmt: skip
        parts.ema.update()
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert any(not torch.equal(p, q) for p, q in zip(parts.g.parameters(), before_g, strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(parts.d.parameters(), before_d, strict=True))
    assert all(torch.isfinite(p).all() for p in (*parts.g.parameters(), *parts.d.parameters()))
    if on_gpu:
        assert count_parameters(parts.g) > 1_000_000  # the paper's widths, not the demo's
    with torch.no_grad():
        images = parts.ema.ema_model(
            torch.randn(3, parts.g.z_dim, device=device), torch.arange(3, device=device)
        )
    assert images.shape == (3, 1, *size)
    assert images.float().abs().max() <= 1.0 and torch.isfinite(images).all()


class _Killed(Exception):
    pass


def _train(root: Path, out: str, arch: str, train_cfg: GanTrainConfig, step_callback=None):
    model_cfg = GanModelConfig(image_size=SIZE, z_dim=16, base_channels=8)
    gan_dirs = GanConfig().model_copy(update={"models_dir": f"{out}/models", "plots_dir": f"{out}/plots"})
    return train_gan(
        read_manifest(root / "target" / "manifest.csv"), CLASSES, arch, model_cfg, train_cfg, 2,
        GanRun.under(gan_dirs, "t", arch, root), image_size=SIZE, seed=3, root=root, step_callback=step_callback,
    )  # fmt: skip


@pytest.mark.parametrize("arch", available())
def test_a_killed_cuda_gan_run_resumes_to_the_weights_of_an_uninterrupted_run(
    arch, device, deterministic, tmp_path
):
    write_cohort(tmp_path, "target", CLASSES, {"train": {"healthy": 6, "metastasis": 4, "benign": 2}})
    train_cfg = GanTrainConfig(batch_size=4, checkpoint_every=2, sample_every=1, samples_per_class=2,
                               device=device.type)  # fmt: skip
    straight = _train(tmp_path, "straight", arch, train_cfg)

    def die_at_step_5(step: int, stats: dict) -> None:
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):  # checkpoints every 2 steps: the last one before dying is step 4
        _train(tmp_path, "killed", arch, train_cfg, die_at_step_5)
    resumed = _train(tmp_path, "killed", arch, train_cfg)
    assert resumed.resumed_from_step == 4
    a, b = load_weights(straight.weights), load_weights(resumed.weights)
    for part in ("generator", "discriminator", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{arch} {part}.{key} differs after a resume"
