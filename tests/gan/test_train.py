"""GAN training: finite stats, exact resume after a kill, label re-initialisation, train split only, DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from bonescan.config import GanModelConfig, GanTrainConfig
from bonescan.data import dataset as dataset_module
from bonescan.data.manifest import read_manifest
from bonescan.dicom.read import read_png16, write_png16
from bonescan.gan import build, class_dependent_keys
from bonescan.gan.train import (
    STAT_KEYS,
    _epoch_indices,
    describe_models,
    run_gan_stage,
    train_gan,
    train_step,
    training_parts,
    transfer_weights,
)
from bonescan.gan.weights import GanRun, load_weights, training_rows

TARGET_CLASSES = ["healthy", "metastasis", "benign"]
SOURCE_CLASSES = ["normal", "covid19", "lung_opacity", "viral_pneumonia"]


def _train(root: Path, out: str, params, arch: str = "mu_acgan", **kw):
    gan = params.gan
    rows = read_manifest(root / "target" / "manifest.csv")
    defaults = {"image_size": gan.model.image_size, "seed": 3, "root": root}
    return train_gan(
        rows,
        TARGET_CLASSES,
        arch,
        gan.model,
        gan.train,
        kw.pop("epochs", 2),
        GanRun.under(
            gan.model_copy(update={"models_dir": f"{out}/models", "plots_dir": f"{out}/plots"}),
            "t",
            arch,
            root,
        ),
        **{**defaults, **kw},
    )


def test_training_writes_finite_per_epoch_stats_weights_curves_and_samples(cohorts, make_params):
    params = make_params()
    result = _train(cohorts, "run", params)
    assert result.steps == 6 and result.epochs == 2  # 12 train images, batch 4, 2 epochs
    for epoch in result.history:
        assert set(STAT_KEYS) <= set(epoch)
        assert all(math.isfinite(epoch[k]) for k in STAT_KEYS)
        assert 0.0 <= epoch["d_real_acc"] <= 1.0 and 0.0 <= epoch["d_cls_acc_real"] <= 1.0
    weights = load_weights(result.weights)  # torch.load(weights_only=True) underneath
    assert weights["classes"] == TARGET_CLASSES and weights["step"] == 6
    assert weights["ema"] is not None and weights["config"]["train"]["lr"] == pytest.approx(params.gan.train.lr)
    curves = pd.read_csv(cohorts / "run/plots/t/mu_acgan.csv")  # the DVC plots of Fig. 8
    assert list(curves["epoch"]) == [1, 2] and list(curves.columns) == ["epoch", "step", *STAT_KEYS]
    assert {"g_loss", "d_loss", "d_real_acc", "d_fake_acc", "d_cls_acc_real"} <= set(curves.columns)
    assert curves[list(STAT_KEYS)].notna().all().all()
    assert (cohorts / "run/plots/t/samples/mu_acgan_epoch0002.png").is_file()
    with Image.open(cohorts / "run/plots/t/samples/mu_acgan_final.png") as grid:
        assert grid.size == (2 * 16 + 3 * 2, 3 * 32 + 4 * 2)  # one row per class, samples_per_class columns


def test_fixed_noise_sample_grids_are_saved_every_sample_every_epochs(cohorts, make_params):
    _train(cohorts, "grids", make_params(train={"sample_every": 2}), epochs=3)
    saved = sorted(p.name for p in (cohorts / "grids/plots/t/samples").iterdir())
    assert saved == ["mu_acgan_epoch0002.png", "mu_acgan_final.png"]


class _Killed(Exception):
    pass


def _kill_at(step_to_die: int):
    def callback(step: int, stats: dict[str, float]) -> None:
        if step == step_to_die:
            raise _Killed

    return callback


@pytest.mark.parametrize("arch", ["mu_acgan", "acgan"])  # ACGAN's D has dropout: torch's global RNG matters
def test_killed_run_resumes_from_last_checkpoint_to_identical_weights(cohorts, make_params, arch):
    params = make_params()
    straight = _train(cohorts, "straight", params, arch)
    with pytest.raises(_Killed):  # checkpoints every 2 steps: dies at step 5, the last checkpoint is step 4
        _train(cohorts, "killed", params, arch, step_callback=_kill_at(5))
    resumed = _train(cohorts, "killed", params, arch)
    assert resumed.resumed_from_step == 4  # mid-epoch 2 (3 steps per epoch)
    a, b = load_weights(straight.weights), load_weights(resumed.weights)
    for part in ("generator", "discriminator", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert a["history"] == b["history"]


def test_checkpoint_of_a_run_with_other_settings_is_not_resumed(cohorts, make_params):
    _train(cohorts, "run", make_params(), epochs=1)
    params = make_params(train={"lr": 1e-4})
    again = _train(cohorts, "run", params=params, epochs=1)
    assert again.resumed_from_step is None


def test_finished_checkpoint_is_not_reused_when_the_training_pixels_change(cohorts, make_params):
    params = make_params()
    first = _train(cohorts, "run", params, epochs=1)
    assert _train(cohorts, "run", params, epochs=1).resumed_from_step == first.steps  # same data: reused
    rows = training_rows(read_manifest(cohorts / "target" / "manifest.csv"))
    png = cohorts / rows["path"].iloc[0]  # same image id, same label, other pixels (as after re-ingest)
    write_png16(read_png16(png) * 0.5, png)
    again = _train(cohorts, "run", params, epochs=1)
    assert again.resumed_from_step is None and again.images_seen > 0


def test_fine_tuning_reinitialises_only_class_dependent_parameters():
    torch.manual_seed(0)
    g1, d1 = build("mu_acgan", len(SOURCE_CLASSES), (32, 16), base_channels=8, z_dim=16)
    stage1 = {"arch": "mu_acgan", "generator": g1.state_dict(), "discriminator": d1.state_dict()}
    g2, d2 = build("mu_acgan", len(TARGET_CLASSES), (32, 16), base_channels=8, z_dim=16)
    transfer_weights(stage1, g2, d2)
    for net, old in ((g2, stage1["generator"]), (d2, stage1["discriminator"])):
        dependent = set(class_dependent_keys(net))
        assert dependent  # label embedding / class head
        for key, value in net.state_dict().items():
            if key in dependent:
                assert value.shape != old[key].shape or not torch.equal(value, old[key])
            else:
                assert torch.equal(value, old[key]), f"{key} was not transferred"
    assert g2(torch.randn(2, 16), torch.tensor([0, 2])).shape == (2, 1, 32, 16)


def test_transfer_refuses_weights_of_another_shape():
    g1, d1 = build("mu_acgan", 4, (32, 16), base_channels=8, z_dim=16)
    g2, d2 = build("mu_acgan", 3, (32, 16), base_channels=16, z_dim=16)
    with pytest.raises(ValueError, match="same gan.model"):
        transfer_weights(
            {"arch": "mu_acgan", "generator": g1.state_dict(), "discriminator": d1.state_dict()}, g2, d2
        )


def test_training_rows_keep_only_real_train_images(cohorts):
    manifest = read_manifest(cohorts / "target" / "manifest.csv")
    manifest.loc[0, "synthetic"] = True
    rows = training_rows(manifest)
    assert set(rows["split"]) == {"train"} and not rows["synthetic"].any()
    assert len(rows) == (manifest["split"] == "train").sum() - 1


def test_no_validation_test_or_synthetic_image_reaches_gan_training(cohorts, monkeypatch, make_params):
    manifest = read_manifest(cohorts / "target" / "manifest.csv")
    planted = manifest[manifest["split"] != "train"].copy()
    planted["path"] = [f"nowhere/{i}.png" for i in planted["image_id"]]  # reading one would fail loudly
    synthetic = manifest[manifest["split"] == "train"].head(2).copy()
    synthetic["image_id"] += "-syn"
    synthetic["synthetic"] = True
    synthetic["path"] = "nowhere/synthetic.png"
    rows = pd.concat([manifest[manifest["split"] == "train"], planted, synthetic], ignore_index=True)
    read = []
    original = dataset_module.read_png16
    monkeypatch.setattr(dataset_module, "read_png16", lambda path: read.append(Path(path)) or original(path))
    gan = make_params().gan
    train_gan(
        rows,
        TARGET_CLASSES,
        "acgan",
        gan.model,
        gan.train,
        2,
        GanRun.under(gan, "t", "acgan", cohorts),
        image_size=(32, 16),
        seed=0,
        root=cohorts,
    )
    train_paths = {cohorts / p for p in manifest.loc[manifest["split"] == "train", "path"]}
    assert read and set(read) <= train_paths


def test_gan_stages_never_read_validation_or_test_images(cohorts, monkeypatch, make_params):
    allowed = set()
    for out_dir in ("target", "source"):
        manifest = read_manifest(cohorts / out_dir / "manifest.csv")
        held_out = manifest[manifest["split"] != "train"]
        assert not held_out.empty
        for path in held_out["path"]:
            (cohorts / path).write_bytes(b"not a png")  # reading one would fail the stage
        allowed |= {cohorts / p for p in manifest.loc[manifest["split"] == "train", "path"]}
    read = []
    original = dataset_module.read_png16
    monkeypatch.setattr(dataset_module, "read_png16", lambda path: read.append(Path(path)) or original(path))
    params = make_params()
    run_gan_stage("pretrain", params, root=cohorts)
    run_gan_stage("finetune", params, root=cohorts)
    assert set(read) <= allowed
    target_train = read_manifest(cohorts / "target" / "manifest.csv").query("split == 'train'")["path"]
    assert {cohorts / p for p in target_train} & set(read)  # fine-tuning did read target train images


def test_balanced_sampling_draws_classes_about_equally():
    labels = [0] * 90 + [1] * 9 + [2] * 1
    drawn = [labels[i] for epoch in range(20) for i in _epoch_indices(labels, epoch, 0, True, 0, 1)]
    share = torch.bincount(torch.tensor(drawn), minlength=3).float() / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.05)
    plain = _epoch_indices(labels, 0, 0, False, 0, 1)
    assert sorted(plain) == list(range(100))  # one permutation per epoch without balancing


def test_epoch_order_is_a_function_of_seed_epoch_and_rank():
    labels = [0, 1, 1, 2] * 5
    assert _epoch_indices(labels, 3, 7, True, 0, 2) == _epoch_indices(labels, 3, 7, True, 0, 2)
    assert _epoch_indices(labels, 3, 7, True, 0, 2) != _epoch_indices(labels, 3, 7, True, 1, 2)
    assert _epoch_indices(labels, 3, 7, True, 0, 2) != _epoch_indices(labels, 4, 7, True, 0, 2)


def test_stages_chain_pretrain_to_finetune_with_target_classes(cohorts, make_params):
    params = make_params(archs=["mu_acgan", "acgan"])
    pre = run_gan_stage("pretrain", params, root=cohorts)
    fine = run_gan_stage("finetune", params, root=cohorts)
    assert [r.arch for r in pre] == ["mu_acgan", "acgan"]
    assert load_weights(pre[0].weights)["classes"] == SOURCE_CLASSES
    assert load_weights(fine[0].weights)["classes"] == TARGET_CLASSES
    assert fine[0].steps == 3  # 12 target train images / batch 4; the 8 source images gave 2 steps
    assert pre[0].steps == 2


def test_a_rerun_of_a_finished_stage_resumes_unless_told_not_to(cohorts, make_params):
    params = make_params()
    first = run_gan_stage("pretrain", params, root=cohorts)[0]
    again = run_gan_stage("pretrain", params, root=cohorts)[0]
    assert first.resumed_from_step is None
    assert again.resumed_from_step == first.steps and again.images_seen == 0  # nothing left to train
    fresh = run_gan_stage("pretrain", params, root=cohorts, resume=False)[0]
    assert fresh.resumed_from_step is None and fresh.images_seen > 0
    a, b = load_weights(fresh.weights)["generator"], load_weights(first.weights)["generator"]
    assert all(torch.equal(a[key], b[key]) for key in a)  # deterministic on CPU: the same weights again


def test_describe_models_counts_parameters_of_every_arch(make_params):
    info = describe_models(make_params(archs=["mu_acgan", "acgan"]))
    assert set(info["parameters"]) == {"mu_acgan", "acgan"}
    assert all(v["generator"] > 0 and v["discriminator"] > 0 for v in info["parameters"].values())
    assert info["image_size"] == [32, 16]


def test_without_a_gan_size_the_base_size_is_rounded_up_to_what_the_gans_can_halve_four_times(make_params):
    """28 x 28 images (MedMNIST) need no GAN setting: the GAN works at 32 x 32 and resizes."""
    params = make_params(model={"image_size": None})
    params = params.model_copy(update={"base": params.base.model_copy(update={"image_size": (28, 20)})})
    assert describe_models(params)["image_size"] == [32, 32]


def test_a_gan_size_that_is_not_a_multiple_of_16_names_the_key_and_a_size_that_works(make_params):
    with pytest.raises(ValueError, match=r"gan\.model\.image_size \[28, 16\].*set gan\.model\.image_size: \[32, 16\]"):
        describe_models(make_params(model={"image_size": [28, 16]}))


_DDP_SCRIPT = """
import os
import sys
from pathlib import Path

from bonescan.config import GanModelConfig, GanTrainConfig
from bonescan.data.manifest import read_manifest
from bonescan.gan.train import train_gan
from bonescan.gan.weights import GanRun

root = Path(sys.argv[1])
model = GanModelConfig(image_size=(32, 16), z_dim=16, base_channels=8)
train = GanTrainConfig(batch_size=4, checkpoint_every=2, sample_every=1, samples_per_class=2, device="cpu")
run = GanRun(root / "w.pt", root / "ckpt.pt", root / "h.csv", root / "samples")
classes = ["healthy", "metastasis", "benign"]
result = train_gan(read_manifest(root / "target/manifest.csv"), classes, "mu_acgan", model, train, 2, run,
                   image_size=(32, 16), seed=0, root=root)
(root / f"steps-{os.environ['RANK']}.txt").write_text(str(result.steps))  # one file per rank: stdout interleaves
"""


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes(tmp_path, make_cohort):
    make_cohort(tmp_path, "target", TARGET_CLASSES, {"train": {"healthy": 8, "metastasis": 4, "benign": 4}})
    script = tmp_path / "train_ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = load_weights(tmp_path / "w.pt")  # written by rank 0 only
    # 16 images, 2 processes, balanced draws of ceil(16 / 2) = 8 per process, batch 4: 2 steps per epoch
    assert weights["step"] == 4
    assert [(tmp_path / f"steps-{rank}.txt").read_text() for rank in (0, 1)] == ["4", "4"]
    assert len(weights["history"]) == 2 and all(math.isfinite(h["g_loss"]) for h in weights["history"])
    assert (
        len(load_weights(tmp_path / "ckpt.pt")["rng"]) == 2
    )  # both processes' RNG states, for an exact resume


@pytest.mark.slow
def test_torchrun_stage_trains_every_architecture_in_one_process_group(tmp_path, make_params, make_cohort):
    """`torchrun bonescan gan-pretrain` with both archs: re-creating the group between them used to race."""
    make_cohort(tmp_path, "source", SOURCE_CLASSES, {"train": dict.fromkeys(SOURCE_CLASSES, 4)}, 1)
    params = make_params(archs=["mu_acgan", "acgan"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BONESCAN_TRACKING": "0"}
    bonescan = Path(sys.executable).parent / "bonescan"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(bonescan), "gan-pretrain"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for arch in ("mu_acgan", "acgan"):
        assert load_weights(tmp_path / params.gan.models_dir / "pretrain" / f"{arch}.pt")["step"] > 0


def _step_with_spies(train_cfg: GanTrainConfig, batch: int = 4):
    """One `train_step` on tiny models; returns D's input batch sizes and the labels G was asked for."""
    parts = training_parts("mu_acgan", 3, (32, 16), GanModelConfig(z_dim=8, base_channels=4), train_cfg,
                           torch.device("cpu"))  # fmt: skip
    d_batches: list[int] = []
    g_labels: list[torch.Tensor] = []
    parts.d.register_forward_pre_hook(lambda _m, args: d_batches.append(args[0].shape[0]))
    parts.g.register_forward_pre_hook(lambda _m, args: g_labels.append(args[1].clone()))
    real = torch.rand(batch, 1, 32, 16) * 2 - 1
    stats = train_step(
        parts.g, parts.d, parts.opt_g, parts.opt_d, real, torch.arange(batch) % 3, 3,
        parts.augment, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1), torch.device("cpu"),
        d_fake_class_loss=train_cfg.d_fake_class_loss, mode_seeking=train_cfg.mode_seeking,
    )  # fmt: skip
    assert all(math.isfinite(v) for v in stats.values())
    return d_batches, g_labels


def test_the_generator_step_scores_fakes_in_a_batch_with_real_images():
    # D normalises with batch statistics: fakes scored alone would hide from D what all fakes share
    d_batches, _ = _step_with_spies(GanTrainConfig(), batch=4)
    assert d_batches == [8, 8]  # D phase and G phase: 4 real + 4 generated each


def test_mode_seeking_pairs_two_noises_with_the_same_label():
    _, (labels,) = _step_with_spies(GanTrainConfig(mode_seeking=0.3), batch=5)
    assert torch.equal(labels[:2], labels[2:4])  # pairs (i, i + 2); the odd fifth image draws its own
    _, (labels,) = _step_with_spies(GanTrainConfig(mode_seeking=0.0), batch=5)
    assert len(labels) == 5
