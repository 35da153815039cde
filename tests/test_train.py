"""Classifier training (both transfer stages): exact resume, DDP, the saved-model contract, presets.

Cohorts are written here as 32x16 16-bit PNGs; the model is the small soft_threshold_net (it has
dropout and BatchNorm, so an exact resume needs the RNG state and the running statistics back).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.models as tvm
from pydantic import ValidationError
from torch import Tensor
from torch.utils.data import TensorDataset

import bonescan.train as train_mod
from bonescan import classifier_file
from bonescan.config import (
    AugmentConfig,
    ClassifierConfig,
    IngestConfig,
    LossConfig,
    Preprocessing,
    TrainConfig,
)
from bonescan.data.manifest import read_manifest, write_manifest
from bonescan.losses import drw_weights
from bonescan.models import build
from bonescan.models.pretrained import hub_checkpoint_path
from bonescan.train import (
    RunOptions,
    build_criterion,
    build_optimizer,
    build_scheduler,
    finetune_classifier,
    fit,
    make_loader,
    pretrain_classifier,
    prior_shift_rule,
    train_one_epoch,
    validate,
    within_step_budget,
    write_history,
)
from tests.png_cohorts import SIZE, write_cohort

CLASSES = ["healthy", "metastasis", "benign"]
SOURCE_CLASSES = ["normal", "covid19", "lung_opacity", "viral_pneumonia"]
LEARNED = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr")  # not timings
NO_AUGMENT = AugmentConfig(mode="none")


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: one intra-op thread is ~20x faster than two fighting other processes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root with an imbalanced target cohort (12 train, 5 val) and a 4-class source cohort."""
    write_cohort(
        tmp_path,
        "target",
        CLASSES,
        {
            "train": {"healthy": 6, "metastasis": 4, "benign": 2},
            "val": {"healthy": 2, "metastasis": 2, "benign": 1},
        },
    )
    write_cohort(
        tmp_path, "source", SOURCE_CLASSES, {"train": dict.fromkeys(SOURCE_CLASSES, 2), "val": {"normal": 2}}
    )
    return tmp_path


def _cfg(finetune: dict | None = None, **overrides) -> ClassifierConfig:
    data = dict(
        model="soft_threshold_net",
        pretrain_source="none",
        manifest="target/manifest.csv",
        device="cpu",
        pretrain={"epochs": 1, "batch_size": 4},
        finetune={"epochs": 2, "batch_size": 4, **(finetune or {})},
    )
    return ClassifierConfig(**{**data, **overrides})


def _pretrain(cfg: ClassifierConfig, root: Path):
    return pretrain_classifier(
        cfg, "source/manifest.csv", SOURCE_CLASSES, SIZE, CLASSES, SIZE, root=root, progress=False
    )


def _finetune(cfg: ClassifierConfig, root: Path, augment: AugmentConfig = NO_AUGMENT, **kwargs):
    return finetune_classifier(cfg, augment, CLASSES, SIZE, root=root, progress=False, **kwargs)


class Killed(RuntimeError):
    """Stands for a SIGKILL after an epoch's checkpoint was written."""


def _kill_after(epoch: int):
    def callback(stats):
        if stats.epoch == epoch:
            raise Killed(f"killed after epoch {epoch}")

    return callback


def _learned(history: list[dict]) -> list[dict]:
    return [{k: row[k] for k in LEARNED} for row in history]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- resume


def test_a_killed_finetuning_run_resumes_to_the_weights_and_history_of_an_uninterrupted_run(project):
    # Online augmentation and dropout both draw from torch's RNG: the resume must restore it.
    cfg = _cfg({"epochs": 3, "loss": {"name": "ldam", "drw_epoch": 1}}, normed_head=True)
    augment = AugmentConfig(mode="online", poisson_peak=(500.0, 1000.0))
    _pretrain(cfg, project)
    full = _finetune(cfg, project, augment, resume=False)
    full_model = _load(project / full.model_path)  # the best epoch's weights
    last = project / cfg.checkpoints_dir / "clf_finetune" / "last.pt"
    full_last = _load(last)  # the last epoch's weights, optimizer and scheduler

    with pytest.raises(Killed):
        _finetune(cfg, project, augment, resume=False, callback=_kill_after(2))
    assert _load(last)["epoch"] == 2 and not _load(last)["finished"]
    resumed = _finetune(cfg, project, augment, resume=True)

    assert resumed.resumed_from == 2 and full.resumed_from == 0
    resumed_model = _load(project / resumed.model_path)
    _assert_same_weights(resumed_model["model"], full_model["model"])
    _assert_same_weights(_load(last)["model"], full_last["model"])
    assert _load(last)["optimizer"]["state"][0]["step"] == full_last["optimizer"]["state"][0]["step"]
    assert _learned(resumed_model["history"]) == _learned(full_model["history"])
    assert len(resumed_model["history"]) == 3 and resumed.best_epoch == full.best_epoch


def test_a_killed_run_with_weight_ema_resumes_to_the_average_of_an_uninterrupted_run(project):
    cfg = _cfg({"epochs": 3, "ema_decay": 0.9})
    _pretrain(cfg, project)
    full = _load(project / _finetune(cfg, project, resume=False).model_path)
    last = project / cfg.checkpoints_dir / "clf_finetune" / "last.pt"
    full_last = _load(last)
    with pytest.raises(Killed):
        _finetune(cfg, project, resume=False, callback=_kill_after(2))
    resumed = _finetune(cfg, project, resume=True)

    assert resumed.resumed_from == 2
    _assert_same_weights(_load(project / resumed.model_path)["model"], full["model"])
    _assert_same_weights(_load(last)["ema"], full_last["ema"])


def test_with_weight_ema_the_model_keeps_the_averaged_weights_not_the_trained_ones(project):
    cfg = _cfg({"epochs": 1, "ema_decay": 0.5})  # one epoch: it is the best one
    _pretrain(cfg, project)
    saved = _load(project / _finetune(cfg, project, resume=False).model_path)["model"]
    last = _load(project / cfg.checkpoints_dir / "clf_finetune" / "last.pt")

    _assert_same_weights(saved, last["ema"])
    assert any(not torch.equal(saved[k], last["model"][k]) for k in saved if saved[k].is_floating_point())
    _finetune(_cfg({"epochs": 1}), project, resume=False)  # off by default: nothing averaged
    assert _load(project / cfg.checkpoints_dir / "clf_finetune" / "last.pt")["ema"] is None


def test_a_checkpoint_of_another_config_or_other_data_is_not_resumed(project):
    cfg = _cfg({"epochs": 2})
    _pretrain(cfg, project)
    with pytest.raises(Killed):
        _finetune(cfg, project, resume=False, callback=_kill_after(1))

    other_lr = _cfg({"epochs": 2, "lr": 5e-4})
    assert _finetune(other_lr, project, resume=True).resumed_from == 0  # ran both epochs from scratch

    with pytest.raises(Killed):
        _finetune(cfg, project, resume=False, callback=_kill_after(1))
    manifest = read_manifest(project / "target/manifest.csv")
    write_manifest(manifest.iloc[1:], project / "target/manifest.csv")  # one training image fewer
    result = _finetune(cfg, project, resume=True)
    assert result.resumed_from == 0 and result.epochs_run == 2 and result.train_images == 11


def test_without_resume_a_matching_checkpoint_is_discarded(project):
    cfg = _cfg({"epochs": 2})
    _pretrain(cfg, project)
    with pytest.raises(Killed):
        _finetune(cfg, project, resume=False, callback=_kill_after(1))
    assert _finetune(cfg, project, resume=False).resumed_from == 0


# --------------------------------------------------------------------------- saved model contract


def test_load_classifier_gives_an_eval_mode_model_with_the_trained_logits_and_the_metadata(project):
    cfg = _cfg({"epochs": 1})
    _pretrain(cfg, project)
    preprocessing = Preprocessing(ingest=IngestConfig(crop_margin=0.05), modalities=("NM",), split_views=True,
                                  image_size=SIZE)  # fmt: skip
    result = _finetune(cfg, project, preprocessing=preprocessing)
    model, meta = classifier_file.load(project / result.model_path)

    assert not model.training
    trained = build(cfg.model, len(CLASSES))
    trained.load_state_dict(_load(project / cfg.checkpoints_dir / "clf_finetune" / "last.pt")["model"])
    x = torch.rand(3, 1, *SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), trained.eval()(x), rtol=0, atol=0)

    saved = _load(project / result.model_path)  # plain tensors and types only
    assert saved["format"] == classifier_file.FORMAT and saved["format_version"] == classifier_file.FORMAT_VERSION
    assert saved["model_name"] == "soft_threshold_net" and saved["in_chans"] == 1
    assert saved["classes"] == CLASSES and saved["image_size"] == list(SIZE)
    assert saved["config"] == cfg.model_dump(mode="json") == meta.config
    assert meta.preprocessing == preprocessing  # what predict repeats
    json.dumps(result.metrics(), allow_nan=False)  # flat, valid JSON for DVC


def test_history_files_have_one_row_per_epoch_with_the_documented_columns(project, tmp_path):
    cfg = _cfg({"epochs": 2})
    _pretrain(cfg, project)
    _finetune(cfg, project)
    history = pd.read_csv(project / cfg.out_dir / "history.csv")
    assert list(history.columns) == list(train_mod.HISTORY_FIELDS) and list(history["epoch"]) == [1, 2]
    assert (project / cfg.plots_dir / "finetune.csv").read_text() == (
        project / cfg.out_dir / "history.csv"
    ).read_text()
    assert len(json.loads((project / cfg.out_dir / "history.json").read_text())) == 2
    write_history([], [tmp_path / "empty.csv"])
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(train_mod.HISTORY_FIELDS)


# --------------------------------------------------------------------------- transfer stages


def test_finetuning_resets_the_head_of_a_source_pretrained_model_to_the_target_classes(project):
    cfg = _cfg({"epochs": 1, "lr": 1e-12}, pretrain_source="source")  # lr ~0: the trunk stays as loaded
    pre = _pretrain(cfg, project)
    source = _load(project / pre.model_path)
    assert pre.init == "source (none init)" and source["classes"] == SOURCE_CLASSES

    result = _finetune(cfg, project)
    tuned, meta = classifier_file.load(project / result.model_path)
    assert meta.num_classes == 3 and tuned.get_classifier().out_features == 3
    head = tuned.classifier_name
    trunk = {k: v for k, v in tuned.named_parameters() if not k.startswith(head)}
    for key, value in trunk.items():
        torch.testing.assert_close(value, source["model"][key], rtol=0, atol=1e-9)


def test_pretrain_source_none_saves_a_seeded_random_initialisation_that_finetunes(project):
    cfg = _cfg({"epochs": 1})
    result = _pretrain(cfg, project)
    torch.manual_seed(cfg.seed)
    expected = build(cfg.model, len(CLASSES)).state_dict()
    _assert_same_weights(_load(project / result.model_path)["model"], expected)
    assert result.init == "none" and _finetune(cfg, project).epochs_run == 1


@pytest.fixture
def fake_imagenet(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """An RGB mobilenet_v3_small state_dict where torchvision caches ImageNet weights (nothing downloaded)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(1)
    state = tvm.mobilenet_v3_small(weights=None).state_dict()
    path = hub_checkpoint_path(tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_pretrain_source_imagenet_saves_the_local_imagenet_weights_with_a_grey_stem(project, fake_imagenet):
    cfg = _cfg({"epochs": 1}, model="mobilenet_v3_small", pretrain_source="imagenet")
    result = _pretrain(cfg, project)
    saved = _load(project / result.model_path)["model"]
    torch.testing.assert_close(
        saved["features.4.block.0.0.weight"], fake_imagenet["features.4.block.0.0.weight"]
    )
    stem = fake_imagenet["features.0.0.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(saved["features.0.0.weight"], stem)
    assert saved["classifier.3.weight"].shape == (3, 1024)
    assert _finetune(cfg, project).epochs_run == 1


def test_a_missing_imagenet_file_fails_with_an_error_naming_the_file(project, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    expected = hub_checkpoint_path(tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1)
    cfg = _cfg(model="mobilenet_v3_small", pretrain_source="imagenet")
    with pytest.raises(FileNotFoundError, match="source") as err:
        _pretrain(cfg, project)
    assert str(expected) in str(err.value)
    absent = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match=str(absent)):
        _pretrain(
            _cfg(model="mobilenet_v3_small", pretrain_source="imagenet", imagenet_weights=str(absent)),
            project,
        )


def test_finetuning_refuses_a_preprocessing_of_another_image_size(project):
    cfg = _cfg({"epochs": 1})
    other = Preprocessing(ingest=IngestConfig(), modalities=("NM",), split_views=True, image_size=(64, 32))
    with pytest.raises(ValueError, match=r"\(64, 32\) images"):
        _finetune(cfg, project, preprocessing=other)


def test_finetuning_refuses_initial_weights_of_another_model(project):
    _pretrain(_cfg(), project)
    with pytest.raises(ValueError, match="re-run clf_pretrain"):
        _finetune(_cfg(model="mobilenet_v3_small"), project)


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_after_patience_epochs_without_improvement_and_keeps_the_best_epoch(
    project, monkeypatch
):
    scripted_f1 = iter([0.2, 0.5, 0.4, 0.5, 0.3, 0.9])  # best at epoch 2; epochs 3 and 4 do not improve

    def scripted_evaluate(*args, **kwargs):
        return {**validate(*args, **kwargs), "macro_f1": next(scripted_f1)}

    monkeypatch.setattr(train_mod, "validate", scripted_evaluate)
    cfg = _cfg({"epochs": 6, "patience": 2, "monitor": "val_macro_f1"})
    _pretrain(cfg, project)
    last = project / cfg.checkpoints_dir / "clf_finetune" / "last.pt"
    weights_after = {}

    def snapshot(stats):  # the checkpoint of each epoch is written before the callback runs
        weights_after[stats.epoch] = _load(last)["model"]

    result = _finetune(cfg, project, callback=snapshot)
    assert result.stopped_early and result.epochs_run == 4 and result.best_epoch == 2
    assert result.best["val_macro_f1"] == 0.5
    _assert_same_weights(_load(project / result.model_path)["model"], weights_after[2])
    assert any(not torch.equal(weights_after[2][k], weights_after[4][k]) for k in weights_after[2])
    assert _load(last)["finished"]


def test_a_step_budget_trains_the_whole_epochs_it_allows_and_the_schedule_ends_within_them(project):
    cfg = _cfg({"epochs": 6, "max_steps": 5})
    _pretrain(cfg, project)
    steps_per_epoch = len(read_manifest(project / "target/manifest.csv").query("split == 'train'")) // 4
    result = _finetune(cfg, project)
    assert result.epochs_run == math.ceil(5 / steps_per_epoch) < 6
    budgeted = within_step_budget(cfg.finetune, steps_per_epoch)
    assert budgeted.epochs == result.epochs_run
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, budgeted.model_copy(update={"scheduler": "cosine"}))
    for _ in range(budgeted.epochs):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_step_budget_larger_than_the_epochs_changes_nothing_and_none_means_all_epochs():
    cfg = _cfg({"epochs": 3, "max_steps": 1000}).finetune
    assert within_step_budget(cfg, 10).epochs == 3
    assert within_step_budget(cfg.model_copy(update={"max_steps": None}), 10).epochs == 3
    assert within_step_budget(cfg.model_copy(update={"max_steps": 1}), 10).epochs == 1


# --------------------------------------------------------------------------- losses and DRW


def _tensor_loader(n: int = 8, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, *SIZE, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2][:n])
    return make_loader(TensorDataset(images, labels), batch, True, RunOptions(progress=False), seed=seed)


def test_drw_class_weights_switch_on_at_drw_epoch():
    counts = [4, 2, 2]
    train_cfg = TrainConfig(epochs=3, batch_size=4, loss=LossConfig(name="ldam", drw_epoch=1, drw_beta=0.99))
    criterion = build_criterion(train_cfg.loss, counts)
    weights = []
    torch.manual_seed(0)
    fit(
        build("soft_threshold_net", 3), _tensor_loader(), None, criterion, train_cfg, RunOptions(progress=False),
        seed=0, class_counts=counts, callback=lambda stats: weights.append(criterion.weight),
    )  # fmt: skip
    assert weights[0] is None
    torch.testing.assert_close(weights[1], drw_weights(counts, 0.99))
    torch.testing.assert_close(weights[2], drw_weights(counts, 0.99))


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "focal", "ldam", "joint"])
def test_every_loss_trains_a_step_with_a_finite_loss(name):
    torch.manual_seed(0)
    model = build("soft_threshold_net", 3)
    model.reset_classifier(3, normed=name in {"ldam", "joint"})
    train_cfg = TrainConfig(batch_size=8, loss=LossConfig(name=name))
    before = [p.detach().clone() for p in model.parameters()]
    meter = train_one_epoch(
        model, _tensor_loader(8, 8), build_criterion(train_cfg.loss, [4, 2, 2]),
        build_optimizer(model.parameters(), train_cfg), RunOptions(progress=False),
    )  # fmt: skip
    assert meter.count == 8 and math.isfinite(meter.mean)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_a_loss_that_needs_every_class_refuses_an_empty_class():
    with pytest.raises(ValueError, match="every class"):
        build_criterion(LossConfig(name="ldam"), [3, 0, 2])


# --------------------------------------------------------------------------- presets


def test_presets_resolve_to_the_papers_optimisation_settings():
    yu = ClassifierConfig(preset="yu2023")
    for stage in (yu.pretrain, yu.finetune):  # RAdam, batch 4, 500 epochs, cross-entropy (Sec. 4.2)
        assert (stage.optimizer, stage.batch_size, stage.epochs, stage.loss.name) == ("radam", 4, 500, "ce")
    assert (yu.model, yu.pretrain_source, yu.pretrain_init) == ("multiscale", "source", "imagenet")

    du = ClassifierConfig(preset="du_yan2025").finetune
    assert (du.optimizer, du.lr, du.scheduler, du.batch_size, du.epochs, du.patience) == (
        "adamw", 1e-4, "step", 32, 100, 10,
    )  # fmt: skip
    assert ClassifierConfig(preset="du_yan2025").model == "di_mobilenet"

    shi_cfg = ClassifierConfig(preset="shi2023")
    shi = shi_cfg.finetune
    assert (shi.optimizer, shi.lr, shi.weight_decay, shi.batch_size, shi.epochs, shi.loss.name) == (
        "adamw", 5e-4, 5e-2, 128, 100, "joint",
    )  # fmt: skip
    assert shi_cfg.model == "mobilenet_v3_caco" and shi_cfg.normed_head


def test_a_preset_wins_over_keys_it_sets_and_keeps_the_others():
    cfg = ClassifierConfig(preset="shi2023", finetune={"lr": 1.0, "loss": {"gamma": 3.0}}, num_workers=2)
    assert cfg.finetune.lr == 5e-4 and cfg.finetune.loss.name == "joint"
    assert cfg.finetune.loss.gamma == 3.0 and cfg.num_workers == 2


def test_preset_optimizers_and_schedulers_are_built_as_configured():
    params = [torch.nn.Parameter(torch.zeros(2))]
    yu = build_optimizer(params, ClassifierConfig(preset="yu2023").finetune)
    assert isinstance(yu, torch.optim.RAdam) and yu.defaults["lr"] == 1e-4
    du_cfg = ClassifierConfig(preset="du_yan2025").finetune
    du = build_optimizer(params, du_cfg)
    assert isinstance(du, torch.optim.AdamW) and isinstance(
        build_scheduler(du, du_cfg), torch.optim.lr_scheduler.StepLR
    )
    shi = build_optimizer(params, ClassifierConfig(preset="shi2023").finetune)
    assert isinstance(shi, torch.optim.AdamW) and (shi.defaults["lr"], shi.defaults["weight_decay"]) == (
        5e-4,
        5e-2,
    )


# --------------------------------------------------------------------------- loading


_WORKER_CACHE_SCRIPT = """
import sys
from pathlib import Path

from bonescan.data.dataset import ManifestDataset, load_split
from bonescan.data.manifest import read_manifest
from bonescan.train import RunOptions, make_loader, set_loader_epoch

project = Path(sys.argv[1])
rows = load_split(read_manifest(project / "target/manifest.csv"), "train")
dataset = ManifestDataset(rows, sys.argv[2].split(","), cache=True, root=project)
loader = make_loader(dataset, 4, True, RunOptions(num_workers=1, progress=False), seed=0)
for path in dataset.paths:  # every read from here on must come from the cache
    path.unlink()
for epoch in range(2):  # workers are recreated each epoch
    set_loader_epoch(loader, 0, epoch)
    print("images", sum(len(labels) for _, labels in loader))
"""


def test_worker_processes_inherit_the_image_cache_filled_before_they_start(project):
    # A fresh interpreter: forked DataLoader workers die (exit code 1) in a process that has run a
    # Prefect flow in-process, as the pipeline tests do; training never runs inside the flow process.
    script = project / "worker_cache.py"
    script.write_text(_WORKER_CACHE_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(project), ",".join(CLASSES)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["images", "12", "images", "12"]


def test_the_shuffle_order_depends_only_on_seed_and_epoch():
    def order(epoch: int, warmup_epochs: int) -> list[int]:
        data = TensorDataset(torch.arange(10))
        loader = make_loader(data, 10, True, RunOptions(progress=False), seed=3)
        for e in range(warmup_epochs):  # what ran before must not matter (resume)
            train_mod.set_loader_epoch(loader, 3, e)
            list(loader)
        train_mod.set_loader_epoch(loader, 3, epoch)
        return next(iter(loader))[0].tolist()

    assert order(2, 0) == order(2, 2) and order(2, 0) != order(1, 0)



def _drawn_labels(sampling: str, labels: list[int], epochs: int = 20, seed: int = 3) -> Tensor:
    data = TensorDataset(torch.tensor(labels))
    loader = make_loader(data, 16, True, RunOptions(progress=False), seed=seed, sampling=sampling, labels=labels)
    drawn = []
    for epoch in range(epochs):
        train_mod.set_loader_epoch(loader, seed, epoch)
        drawn += [b[0] for b in loader]
    return torch.cat(drawn)


def test_class_balanced_sampling_draws_a_rare_class_as_often_as_a_common_one():
    labels = [0] * 90 + [1] * 10
    uniform, sqrt, balanced = (
        (_drawn_labels(s, labels) == 1).float().mean().item() for s in ("uniform", "sqrt", "class_balanced")
    )
    assert uniform == pytest.approx(0.10, abs=0.01)  # every image once per epoch (a last batch of 4)
    assert balanced == pytest.approx(0.50, abs=0.05)
    assert sqrt == pytest.approx(0.25, abs=0.04)  # sqrt(10) / (sqrt(90) + sqrt(10))
    assert len(_drawn_labels("class_balanced", labels, epochs=1)) == 100  # an epoch keeps its length


def test_the_class_counts_a_loss_corrects_for_are_the_ones_the_sampler_draws():
    assert train_mod.sampled_class_counts([90, 10], "uniform") == [90.0, 10.0]
    assert train_mod.sampled_class_counts([90, 10], "class_balanced") == pytest.approx([50.0, 50.0])
    assert train_mod.sampled_class_counts([90, 10], "sqrt") == pytest.approx([75.0, 25.0])  # 3 : 1 = sqrt(9 : 1)
    assert train_mod.sampled_class_counts([90, 0, 10], "class_balanced") == pytest.approx([50.0, 0.0, 50.0])
    with pytest.raises(ValueError, match="unknown sampling 'square'"):
        train_mod.sampled_class_counts([1, 1], "square")


def test_balanced_sampling_leaves_a_weighted_loss_nothing_to_correct():
    cfg = TrainConfig(epochs=1, sampling="class_balanced", loss={"name": "weighted_ce"})
    loss = train_mod.build_criterion(cfg.loss, train_mod.sampled_class_counts([90, 10], cfg.sampling))
    assert loss.weight.tolist() == pytest.approx([1.0, 1.0])  # not 10:90 on top of a 50:50 draw


def test_a_class_balanced_draw_depends_only_on_seed_and_epoch_and_replicas_share_it():
    labels = [0] * 7 + [1] * 3
    sampler = train_mod.ClassBalancedSampler(labels, 1.0, seed=5)
    sampler.set_epoch(2)
    whole = list(sampler)
    shards = []
    for rank in range(2):
        shard = train_mod.ClassBalancedSampler(labels, 1.0, num_replicas=2, rank=rank, seed=5)
        shard.set_epoch(2)
        shards.append(list(shard))
    assert [len(s) for s in shards] == [5, 5] and sorted(shards[0] + shards[1]) == sorted(whole)
    sampler.set_epoch(3)
    assert list(sampler) != whole
    sampler.set_epoch(2)
    assert list(sampler) == whole


def test_class_balanced_sampling_needs_a_label_per_image_and_a_known_name():
    data = TensorDataset(torch.arange(4))
    with pytest.raises(ValueError, match="one label per image"):
        make_loader(data, 2, True, RunOptions(progress=False), sampling="sqrt", labels=[0, 1])
    with pytest.raises(ValueError, match="unknown sampling 'square'"):
        make_loader(data, 2, True, RunOptions(progress=False), sampling="square", labels=[0, 1, 0, 1])
    with pytest.raises(ValidationError):
        TrainConfig(sampling="square")
    evaluation = make_loader(data, 2, False, RunOptions(progress=False), sampling="class_balanced")
    assert [b[0].tolist() for b in evaluation] == [[0, 1], [2, 3]]  # only training loaders resample


def test_a_training_loader_skips_a_last_batch_of_one_image_and_leaves_out_another_each_epoch():
    def batches(n: int, epoch: int = 0, shuffle: bool = True) -> list[list[int]]:
        loader = make_loader(TensorDataset(torch.arange(n)), 4, shuffle, RunOptions(progress=False), seed=3)
        train_mod.set_loader_epoch(loader, 3, epoch)
        return [batch[0].tolist() for batch in loader]

    assert [len(b) for b in batches(9)] == [4, 4]  # BatchNorm cannot train on one 1x1 feature
    assert [len(b) for b in batches(10)] == [4, 4, 2] and [len(b) for b in batches(1)] == [1]
    assert [len(b) for b in batches(9, shuffle=False)] == [4, 4, 1]  # evaluation sees every image
    left_out = {(set(range(9)) - {i for b in batches(9, epoch) for i in b}).pop() for epoch in range(6)}
    assert len(left_out) > 1


def test_mobilenet_trains_at_a_size_where_a_single_image_batch_would_crash_batchnorm(project):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        build("mobilenet_v3_small", 3).train()(torch.rand(1, 1, *SIZE))
    cfg = _cfg({"epochs": 1, "batch_size": 11}, model="mobilenet_v3_small")  # 12 train images: 11 + 1
    _pretrain(cfg, project)
    assert _finetune(cfg, project).best["epoch"] == 1


# --------------------------------------------------------------------------- DDP

_DDP_SCRIPT = """
import json, sys
from pathlib import Path

import torch.distributed as dist

from bonescan.config import AugmentConfig, ClassifierConfig
from bonescan.train import finetune_classifier, pretrain_classifier

root = Path(sys.argv[1])
source = ["normal", "covid19", "lung_opacity", "viral_pneumonia"]
target = ["healthy", "metastasis", "benign"]
cfg = ClassifierConfig(
    model="soft_threshold_net", pretrain_source="source", manifest="target/manifest.csv", device="cpu",
    pretrain={"epochs": 1, "batch_size": 2},
    finetune={"epochs": 3, "batch_size": 3, "patience": 1, "monitor": "val_loss"},
)
dist.init_process_group("gloo")  # one group for both stages (each joins it instead of starting its own)
pre = pretrain_classifier(cfg, "source/manifest.csv", source, (32, 16), target, (32, 16), root=root, progress=False)
tuned = finetune_classifier(cfg, AugmentConfig(mode="none"), target, (32, 16), root=root, progress=False)
# One file per rank: two processes printing to one pipe interleave their lines.
result = {"rank": dist.get_rank(), "pre": pre.metrics(), "tuned": tuned.metrics()}
(root / f"result_{dist.get_rank()}.json").write_text(json.dumps(result))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes_trains_both_stages_and_rank_0_writes_the_models(project):
    script = project / "train_ddp.py"
    script.write_text(_DDP_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, str(project)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    results = [json.loads((project / f"result_{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    # Every rank made the same decisions (best epoch, early stop) from the same validation scores.
    for key in ("epochs_run", "best_epoch", "stopped_early", "val_loss", "train_images"):
        assert results[0]["tuned"][key] == results[1]["tuned"][key], key
    assert results[0]["tuned"]["train_images"] == 12 and results[0]["pre"]["train_images"] == 8

    model, meta = classifier_file.load(project / "models/classifier/model.pt")
    assert list(meta.classes) == CLASSES and meta.num_classes == 3
    assert len(meta.history) == results[0]["tuned"]["epochs_run"]
    assert all(math.isfinite(row["train_loss"]) for row in meta.history)
    assert _load(project / "models/clf_pretrain/model.pt")["classes"] == SOURCE_CLASSES


def test_the_operating_point_is_fitted_on_validation_studies_and_saved_with_the_model(project):
    cfg = _cfg({"epochs": 1}, operating_point="balanced_accuracy")
    _pretrain(cfg, project)
    result = _finetune(cfg, project)
    _, record = classifier_file.load(project / result.model_path)
    assert record.decision.kind == "offsets" and len(record.decision.offsets) == len(CLASSES)
    assert record.decision.offsets[0] == 0.0 and record.decision.chosen_on.startswith("val balanced accuracy")
    argmax_cfg = _cfg({"epochs": 1})  # the default keeps argmax
    assert _cfg({"epochs": 1}).operating_point == "argmax"
    _, plain = classifier_file.load(project / _finetune(argmax_cfg, project, resume=False).model_path)
    assert plain.decision.kind == "argmax"


def test_test_time_flips_are_saved_with_the_model_and_the_operating_point_is_fitted_on_them(project, monkeypatch):
    flips_seen = []
    real = train_mod.predict_probabilities
    monkeypatch.setattr(train_mod, "predict_probabilities",
                        lambda *a, **kw: flips_seen.append(kw.get("test_time_flip")) or real(*a, **kw))  # fmt: skip
    cfg = _cfg({"epochs": 1}, operating_point="balanced_accuracy", test_time_flip=True)
    _pretrain(cfg, project)
    _, record = classifier_file.load(project / _finetune(cfg, project).model_path)
    assert record.test_time_flip and flips_seen == [True]
    _, plain = classifier_file.load(project / _finetune(_cfg({"epochs": 1}), project, resume=False).model_path)
    assert not plain.test_time_flip


def test_an_ensemble_saves_the_models_of_consecutive_seeds_and_scores_their_mean(project):
    cfg = _cfg({"epochs": 1}, ensemble=2, operating_point="balanced_accuracy")
    _pretrain(cfg, project)
    _, ensemble = classifier_file.load(project / _finetune(cfg, project).model_path)
    singles = []
    for seed in (cfg.seed, cfg.seed + 1):
        single = _cfg({"epochs": 1}, seed=seed)
        singles.append(classifier_file.read(project / _finetune(single, project, resume=False).model_path))

    assert len(ensemble.members) == 1 and ensemble.config["ensemble"] == 2
    _assert_same_weights(dict(ensemble.state_dict), dict(singles[0].state_dict))
    _assert_same_weights(dict(ensemble.members[0]), dict(singles[1].state_dict))
    assert ensemble.decision.chosen_on.startswith("val balanced accuracy")  # fitted on the ensemble's mean



def test_a_cross_validation_ensemble_holds_each_fold_of_patients_out_of_one_member(project, monkeypatch):
    manifest = read_manifest(project / "target/manifest.csv")
    patients = set(manifest.loc[manifest["split"].isin(["train", "val"]), "patient_id"])
    parent = manifest[manifest["split"] == "train"].iloc[0]
    copy = parent.copy()  # an offline augmented copy goes with its patient
    copy["image_id"], copy["source"] = f"{parent['image_id']}-aug1", f"augment:{parent['image_id']}"
    gan = parent.copy()  # a GAN image belongs to no patient's fold
    gan["image_id"], gan["patient_id"], gan["synthetic"] = "gan-0", "synthetic", True
    write_manifest(pd.concat([manifest, pd.DataFrame([copy, gan])], ignore_index=True),
                   project / "target/manifest.csv")  # fmt: skip
    seen = []
    real = train_mod._train_stage
    monkeypatch.setattr(train_mod, "_train_stage", lambda stage, model, train, val, frames, *a, **kw: (
        seen.append([set(f["image_id"]) for f in frames]) or real(stage, model, train, val, frames, *a, **kw)))
    cfg = _cfg({"epochs": 1}, folds=3, operating_point="balanced_accuracy")
    _pretrain(cfg, project)
    _, record = classifier_file.load(project / _finetune(cfg, project).model_path)

    assert len(seen) == 3 and len(record.members) == 2 and record.config["folds"] == 3
    by_image = manifest.set_index("image_id")["patient_id"].to_dict() | {copy["image_id"]: parent["patient_id"]}
    held_out = [{by_image[i] for i in val} for _, val in seen]
    assert sorted(p for fold in held_out for p in fold) == sorted(patients)  # every patient validated once
    for (train, val), fold in zip(seen, held_out, strict=True):
        assert not {by_image[i] for i in train if i != "gan-0"} & fold  # never trained on while held out
        assert "gan-0" in train and copy["image_id"] not in val  # validation: the original images only
        assert (copy["image_id"] in train) == (parent["patient_id"] not in fold)
    assert record.decision.chosen_on.startswith("out-of-fold val balanced accuracy")


def test_cross_validation_and_seed_ensembles_are_one_or_the_other():
    with pytest.raises(ValidationError, match="choose one kind of ensemble"):
        _cfg(folds=3, ensemble=2)

def test_criterion_applies_label_smoothing_and_the_logit_adjustment_from_the_config():
    smoothed = build_criterion(LossConfig(name="ce", label_smoothing=0.1), [4, 2, 2])
    assert smoothed.label_smoothing == 0.1
    adjusted = build_criterion(LossConfig(name="logit_adjusted", tau=0.5, label_smoothing=0.05), [6, 2, 2])
    assert (adjusted.tau, adjusted.label_smoothing) == (0.5, 0.05)
    with pytest.raises(ValueError, match="label_smoothing applies to"):
        build_criterion(LossConfig(name="focal", label_smoothing=0.1), [4, 2, 2])


# --------------------------------------------------------------------------- deployment prior


def test_a_deployment_prior_shifts_the_decision_by_the_log_ratio_to_the_training_prior():
    rule = prior_shift_rule(["a"] * 90 + ["b"] * 10, ["a", "b"], {"a": 0.5, "b": 0.5}, loss="ce")
    assert rule.kind == "offsets"
    assert rule.offsets == pytest.approx((math.log(0.5 / 0.9), math.log(0.5 / 0.1)))
    # p(b) = 0.2 under the 9:1 training prior is p(b) = 0.69 under an even prior: b wins
    assert list(rule.predict(np.array([[0.8, 0.2]]))) == [1]
    assert "deployment prior a 0.500, b 0.500" in rule.chosen_on


def test_a_model_trained_on_balanced_draws_is_shifted_from_the_drawn_prior():
    rule = prior_shift_rule(["a"] * 90 + ["b"] * 10, ["a", "b"], {"a": 0.8, "b": 0.2}, loss="ce",
                            sampling="class_balanced")
    assert rule.offsets == pytest.approx((math.log(0.8 / 0.5), math.log(0.2 / 0.5)))


def test_a_logit_adjusted_model_is_shifted_from_a_uniform_prior():
    rule = prior_shift_rule(["a"] * 90 + ["b"] * 10, ["a", "b"], {"a": 0.8, "b": 0.2}, loss="logit_adjusted")
    assert rule.offsets == pytest.approx((math.log(0.8 / 0.5), math.log(0.2 / 0.5)))


def test_a_deployment_prior_must_name_every_class_and_be_a_distribution():
    with pytest.raises(ValueError, match="give every class"):
        prior_shift_rule(["a", "b"], ["a", "b"], {"a": 1.0}, loss="ce")
    with pytest.raises(ValueError, match="sum to 1"):
        ClassifierConfig(deployment_prior={"a": 0.7, "b": 0.7})
    with pytest.raises(ValueError, match="needs clf.deployment_prior"):
        ClassifierConfig(operating_point="deployment_prior")
