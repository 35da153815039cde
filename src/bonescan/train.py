"""Classifier training: two-stage transfer learning (Yu et al. 2023, Sec. 3.4), resumable, DDP-ready.

Stage 1 (`pretrain_classifier`, DVC stage clf_pretrain) produces the initial weights: ImageNet
weights from the local torch cache, a model trained on the source domain (chest radiographs), or a
seeded random initialisation ("training directly"). Stage 2 (`finetune_classifier`, clf_finetune)
loads them, resets the classifier for the target classes and fine-tunes on the bone-scan training
split (augmented offline, or online in the loader), selecting the best epoch on the validation split.

The loop follows torchvision's reference: `train_one_epoch()`, `validate()` under
`torch.inference_mode()`, and `fit()` wiring them with the optimizer, scheduler, early stopping and a
checkpoint per epoch (`last.pt`). A killed run resumes exactly: the checkpoint holds model,
optimizer, scheduler, early-stopping state, history and torch's RNG state, and each epoch's shuffle
order is a function of (seed, epoch) only. Under `torchrun` every process trains on its shard
(DistributedSampler; NCCL on CUDA, gloo on CPU) and rank 0 writes files. On CUDA the forward pass
runs under bf16 autocast with channels_last tensors.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from bonescan import classifier_file
from bonescan.checkpoint import (
    file_digest,
    fingerprint,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from bonescan.classifier_file import ClassifierFile, DecisionRule, MeanOfMembers, predict_probabilities
from bonescan.config import (
    SAMPLING_POWER,
    AugmentConfig,
    ClassifierConfig,
    LossConfig,
    Preprocessing,
    Size,
    TrainConfig,
)
from bonescan.data.dataset import ManifestDataset, label_indices, load_split
from bonescan.data.folds import patient_folds
from bonescan.data.manifest import read_manifest
from bonescan.ema import EMA
from bonescan.losses import build_loss, drw_schedule
from bonescan.metrics import aggregate_by_study, fit_logit_offsets
from bonescan.models import build, count_parameters
from bonescan.progress import RunningMean, eta, track
from bonescan.runtime import DistEnv, autocast, barrier, dist_env, process_group, resolve_device, unwrap

__all__ = [
    "ClassBalancedSampler",
    "EpochStats",
    "FitResult",
    "RunOptions",
    "StageResult",
    "build_criterion",
    "build_optimizer",
    "build_scheduler",
    "classification_summary",
    "confusion_matrix",
    "finetune_classifier",
    "fit",
    "make_loader",
    "pretrain_classifier",
    "PRIOR_AWARE_LOSSES",
    "prior_shift_rule",
    "sampled_class_counts",
    "set_loader_epoch",
    "train_one_epoch",
    "within_step_budget",
    "write_history",
]

log = logging.getLogger(__name__)

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "images_per_s",
    "seconds",
)


# --------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class RunOptions:
    """Where and how a run executes (not what it learns): device, precision, loading, processes."""

    device: torch.device = torch.device("cpu")
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    num_workers: int = 0
    progress: bool = True
    rank: int = 0
    world_size: int = 1

    @property
    def env(self) -> DistEnv:
        return DistEnv(self.rank, self.world_size)

    @property
    def distributed(self) -> bool:
        return self.env.distributed

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def autocast(self) -> bool:
        return self.amp and self.device.type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        use = self.channels_last and self.device.type == "cuda"
        return torch.channels_last if use else torch.contiguous_format

    @classmethod
    def from_config(cls, cfg: ClassifierConfig, progress: bool = True) -> RunOptions:
        """Options for this process: cuda when asked for or present, rank/world size from torchrun's env."""
        env = dist_env()
        device = resolve_device(cfg.device, "clf.device")
        return cls(device, cfg.amp, cfg.channels_last, cfg.num_workers, progress, env.rank, env.world_size)


@contextmanager
def distributed_session(opts: RunOptions) -> Iterator[None]:
    """Join torchrun's process group for the duration of a stage (no-op for a single process)."""
    with process_group(opts.device) as env:
        if env.distributed and env.is_main:
            backend = "nccl" if opts.device.type == "cuda" else "gloo"
            log.info("DistributedDataParallel: %d processes (%s); rank 0 logs progress", env.world_size, backend)
        yield


def _broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm running statistics.

    DDP broadcasts buffers at the start of each forward, so after an epoch's last step every rank
    holds statistics updated by its own last batch: ranks would validate different models.
    """
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _broadcast_scores(val: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Rank 0's validation scores on every rank, so best-epoch and early-stopping decisions agree
    (a rank that stopped alone would leave the others waiting in the next all-reduce)."""
    keys = ("loss", "accuracy", "macro_f1")
    scores = torch.tensor([float(val[k]) for k in keys], dtype=torch.float64, device=device)
    dist.broadcast(scores, src=0)
    return {**val, **dict(zip(keys, scores.tolist(), strict=True))}


# --------------------------------------------------------------------------- building blocks




def _sampling_power(sampling: str) -> float:
    """The exponent of `SAMPLING_POWER` (uniform: 0), or a clear error for an unknown name."""
    if sampling != "uniform" and sampling not in SAMPLING_POWER:
        raise ValueError(f"unknown sampling {sampling!r}; choose uniform, {', '.join(SAMPLING_POWER)}")
    return SAMPLING_POWER.get(sampling, 0.0)


def sampled_class_counts(class_counts: Sequence[int], sampling: str) -> list[float]:
    """Images of each class one epoch draws under `sampling`, in expectation: n_c^(1 - power), same total.

    Why: a prior-aware loss (weighted CE, logit adjustment, LDAM margins, DRW) and the prior-shift
    operating point correct for the class frequencies the model trains on, and those are the ones
    the loader draws. Under class-balanced sampling they are uniform, so a loss fed the raw counts
    would correct the imbalance a second time, towards the rare classes.
    """
    power = _sampling_power(sampling)
    drawn = [float(c) ** (1.0 - power) if c > 0 else 0.0 for c in class_counts]
    total, mass = float(sum(class_counts)), sum(drawn)
    return [total * d / mass for d in drawn] if mass else [0.0 for _ in class_counts]


class ClassBalancedSampler(Sampler[int]):
    """Draws an epoch of indices with replacement, image i with weight n_{class(i)}^-power.

    Why: with a 46:36:17 class mix the rare class is a sixth of every batch, and re-weighting the loss
    instead makes its few images' gradients large and noisy. power 1 makes every class equally likely
    per draw ("class_balanced"), 0.5 is square-root sampling (Mahajan et al. 2018), a middle way that
    still shows the common classes' variety. An epoch keeps its length (steps and schedules stay as
    with shuffling); its draw depends only on (seed, epoch), and under torchrun the processes take
    interleaved slices of the same draw, so together they see one epoch, as with DistributedSampler.

    Args:
        labels: class index of every image in the dataset.
        power: exponent of the inverse class count (1: balanced, 0.5: square root, 0: uniform).
        num_replicas, rank: the torchrun world (1, 0 without it).
        seed: base seed of the draws.
    """

    def __init__(
        self, labels: Sequence[int], power: float, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        if not len(labels):
            raise ValueError("class-balanced sampling needs at least one image")
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        counts = torch.bincount(labels_t).double()
        self.weights = counts[labels_t].pow(-power)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(labels_t) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples * self.num_replicas, True, generator=g)
        return iter(draw[self.rank :: self.num_replicas].tolist())


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    opts: RunOptions,
    seed: int = 0,
    drop_last: bool = False,
    sampling: str = "uniform",
    labels: Sequence[int] | None = None,
) -> DataLoader:
    """A DataLoader whose order depends only on (seed, epoch): call `set_loader_epoch` before each epoch.

    `sampling` other than "uniform" (a training loader only) draws images by class
    (`ClassBalancedSampler`, keys of `SAMPLING_POWER`) from their `labels`.

    A shuffled (training) loader skips a last batch of a single image: BatchNorm cannot normalise one
    sample whose features are 1x1 (MobileNets at small sizes), and a different image is left out
    each epoch. With worker processes, a caching dataset (`ManifestDataset(cache=True)`) is filled here, in the
    parent: workers are recreated every epoch (for exact resume), so a cache filled inside them would
    be thrown away each epoch, while one filled before they start is copied into every worker.
    """
    if opts.num_workers > 0 and getattr(dataset, "cache", False) and hasattr(dataset, "read"):
        for index in range(len(dataset)):
            dataset.read(index)
    # Only training (shuffled) loaders are sharded under torchrun: every process validates on all of
    # the validation split, so all of them take the same best-epoch and early-stopping decisions.
    sampler: Sampler[int] | None = None
    if shuffle and sampling != "uniform":
        power = _sampling_power(sampling)
        if labels is None or len(labels) != len(dataset):
            raise ValueError(f"{sampling} sampling needs one label per image")
        sampler = ClassBalancedSampler(labels, power, opts.world_size, opts.rank, seed)
    elif opts.distributed and shuffle:
        sampler = DistributedSampler(
            dataset, opts.world_size, opts.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    per_process = len(sampler) if sampler is not None else len(dataset)
    drop_last = drop_last or (shuffle and per_process > 1 and per_process % batch_size == 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=opts.num_workers,
        pin_memory=opts.device.type == "cuda",
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        # Worker RNGs are drawn from the generator each epoch only if workers are recreated each epoch.
        persistent_workers=False,
    )


def set_loader_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make shuffling and worker seeds of `epoch` independent of what ran before (exact resume)."""
    if isinstance(loader.sampler, DistributedSampler | ClassBalancedSampler):
        loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed * 100_003 + epoch)


def build_optimizer(
    params: Sequence[nn.Parameter] | Iterator[nn.Parameter], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """RAdam (Yu et al.), AdamW (Du & Yan, Shi et al.; decoupled weight decay) or SGD with momentum."""
    params = list(params)
    if cfg.optimizer == "radam":
        return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose radam, adamw or sgd")


def within_step_budget(cfg: TrainConfig, steps_per_epoch: int, description: str = "train") -> TrainConfig:
    """`cfg` with as many whole epochs as `cfg.max_steps` allows (at least one); the schedule follows."""
    if cfg.max_steps is None:
        return cfg
    epochs = max(1, min(cfg.epochs, math.ceil(cfg.max_steps / max(steps_per_epoch, 1))))
    if epochs < cfg.epochs:
        log.info(
            "%s: max_steps %d at %d steps per epoch -> %d of %d epochs",
            description, cfg.max_steps, steps_per_epoch, epochs, cfg.epochs,
        )  # fmt: skip
    return cfg.model_copy(update={"epochs": epochs})


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule: step decay, cosine to zero over `epochs`, or none."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.step_gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "none":
        return None
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}; choose step, cosine or none")


# Losses built from the class counts: they correct for the training prior themselves.
PRIOR_AWARE_LOSSES: frozenset[str] = frozenset({"weighted_ce", "ldam", "joint", "logit_adjusted"})


def build_criterion(cfg: LossConfig, class_counts: Sequence[float]) -> nn.Module:
    """The configured loss with only the hyper-parameters it takes."""
    smoothing = {"label_smoothing": cfg.label_smoothing} if cfg.label_smoothing else {}
    kwargs: dict[str, dict[str, float]] = {
        "ce": smoothing,
        "weighted_ce": smoothing,
        "focal": {"gamma": cfg.gamma},
        "ldam": {"max_m": cfg.max_m, "s": cfg.s},
        "joint": {"alpha": cfg.alpha, "gamma": cfg.gamma, "max_m": cfg.max_m, "s": cfg.s},
        "logit_adjusted": {"tau": cfg.tau, **smoothing},
    }
    if cfg.label_smoothing and cfg.name not in {"ce", "weighted_ce", "logit_adjusted"}:
        raise ValueError(f"label_smoothing applies to ce, weighted_ce and logit_adjusted, not to {cfg.name!r}")
    needs_counts = cfg.name in PRIOR_AWARE_LOSSES or cfg.drw_epoch is not None
    if needs_counts and min(class_counts) == 0:
        raise ValueError(
            f"loss {cfg.name!r} needs every class in the training set; counts {list(class_counts)}"
        )
    counts = [max(c, 1) for c in class_counts]
    return build_loss(cfg.name, counts, **kwargs[cfg.name])


def _set_class_weight(criterion: nn.Module, weight: Tensor | None, device: torch.device) -> None:
    """DRW: replace the class weights of a bonescan loss or of torch's cross-entropy."""
    if hasattr(criterion, "set_class_weight"):
        criterion.set_class_weight(weight)
    elif isinstance(criterion, nn.CrossEntropyLoss):
        criterion.weight = None if weight is None else weight.to(device)
    else:
        raise TypeError(f"{type(criterion).__name__} has no class weights to re-weight (DRW)")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted class."""
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_summary(confusion: Tensor) -> dict[str, float]:
    """Accuracy and macro F1 (classes absent from both truth and prediction count as F1 0)."""
    cm = confusion.double()
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp_min(1)
    recall = tp / cm.sum(1).clamp_min(1)
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp)
    )
    total = cm.sum().item()
    return {"accuracy": tp.sum().item() / total if total else float("nan"), "macro_f1": f1.mean().item()}


# --------------------------------------------------------------------------- loops


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    opts: RunOptions,
    description: str = "train",
    ema: EMA | None = None,
    steps_before: int = 0,
) -> RunningMean:
    """One pass over `loader`; returns the sample-weighted mean loss meter (local to this process).

    `ema`, when given, is updated after every optimiser step; `steps_before` (the steps of earlier
    epochs) keeps its warm-up counting across epochs and resumes.
    """
    model.train()
    meter = RunningMean()
    step = steps_before
    show = opts.progress and opts.is_main  # one bar under torchrun, not one per process
    for images, target in track(loader, description, meter, total=len(loader), enabled=show, logger=log):
        images = images.to(opts.device, non_blocking=True, memory_format=opts.memory_format)
        target = target.to(opts.device, non_blocking=True)
        with autocast(opts.device, opts.amp):
            loss = criterion(model(images).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if ema is not None:
            ema.update(step)
        meter.update(loss.detach(), images.shape[0])
    return meter


@torch.inference_mode()
def validate(model: nn.Module, loader: DataLoader, criterion: nn.Module, opts: RunOptions) -> dict[str, Any]:
    """Loss, accuracy, macro F1 and the confusion matrix of `model` over `loader` (model selection)."""
    model.eval()
    meter = RunningMean()
    num_classes = getattr(model, "num_classes", None)
    preds, targets = [], []
    for images, target in loader:
        images = images.to(opts.device, non_blocking=True, memory_format=opts.memory_format)
        target = target.to(opts.device, non_blocking=True)
        with autocast(opts.device, opts.amp):
            logits = model(images).float()
        meter.update(criterion(logits, target), images.shape[0])
        num_classes = num_classes or logits.shape[1]
        preds.append(logits.argmax(1))
        targets.append(target)
    cm = confusion_matrix(torch.cat(preds), torch.cat(targets), num_classes).cpu()
    return {"loss": meter.mean, **classification_summary(cm), "confusion": cm.tolist()}


@dataclass
class EpochStats:
    """One row of the training history (DVC plot)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    images_per_s: float
    seconds: float


@dataclass
class FitResult:
    """What `fit` returns; the model it was given holds the best epoch's weights afterwards."""

    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]  # the history row of the best epoch
    stopped_early: bool
    resumed_from: int  # epoch the run resumed at (0: fresh start)


def _score(stats: EpochStats, monitor: str) -> float:
    """Higher is better."""
    if monitor == "val_loss":
        return -stats.val_loss
    return stats.val_macro_f1


def _state_dict_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    criterion: nn.Module,
    cfg: TrainConfig,
    opts: RunOptions,
    seed: int,
    checkpoint: Path | None = None,
    identity: dict[str, Any] | None = None,
    class_counts: Sequence[float] | None = None,
    callback: Callable[[EpochStats], None] | None = None,
    description: str = "train",
) -> FitResult:
    """Train for `cfg.epochs` epochs with per-epoch validation, checkpointing and early stopping.

    With `cfg.ema_decay` the scored and kept weights are the exponential moving average's.

    Args:
        model: on `opts.device` already; left holding the best epoch's weights (averaged with EMA).
        train_loader, val_loader: from `make_loader`; val may be None (then the last epoch is best).
        criterion: training loss; it also gives the validation loss.
        cfg: optimizer, schedule, epochs, early stopping, loss (for DRW).
        opts: device and process layout.
        seed: shuffle seed of the loaders.
        checkpoint: `last.pt`, written after every epoch by rank 0; resumed from if it matches `identity`
            and did not finish.
        identity: plain-typed description of the run (resolved config, data fingerprint); a checkpoint
            made with a different identity is ignored, never resumed.
        class_counts: training samples per class (needed for DRW).
        callback: called with every epoch's stats on rank 0 (e.g. MLflow logging).
    """
    identity = identity or {}
    cfg = within_step_budget(cfg, len(train_loader), description)
    model = model.to(opts.device, memory_format=opts.memory_format)
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    ddp_model = (
        DistributedDataParallel(model, device_ids=[opts.device.index] if opts.device.type == "cuda" else None)
        if opts.distributed
        else model
    )
    ema = EMA(unwrap(model), cfg.ema_decay) if cfg.ema_decay is not None else None
    scored = ema.ema_model if ema is not None else model  # what validation sees and the best state copies
    history: list[dict[str, float]] = []
    best_score, best_epoch, bad_epochs = -math.inf, -1, 0
    best_state: dict[str, Tensor] | None = None
    start_epoch = 0
    if checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint, map_location="cpu")
        if state.get("identity") == identity and not state.get("finished", False):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            history, best_state = list(state["history"]), state["best_model"]
            best_score, best_epoch, bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
            start_epoch = state["epoch"]
            restore_rng(state["rng"])
            log.info("resuming %s from %s at epoch %d", description, checkpoint, start_epoch + 1)
        else:
            log.info("ignoring %s: it belongs to a finished or different run", checkpoint)

    stopped_early = False
    run_tic = time.perf_counter()  # the ETA counts this run's epochs only (a resumed run skips some)
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.loss.drw_epoch is not None and class_counts is not None:
            weight = drw_schedule(epoch, class_counts, cfg.loss.drw_epoch, cfg.loss.drw_beta)
            _set_class_weight(criterion, weight, opts.device)
        set_loader_epoch(train_loader, seed, epoch)
        lr = optimizer.param_groups[0]["lr"]
        tic = time.perf_counter()
        meter = train_one_epoch(
            ddp_model, train_loader, criterion, optimizer, opts, f"{description} {epoch + 1}/{cfg.epochs}",
            ema, epoch * len(train_loader),
        )  # fmt: skip
        sums = meter.as_tensor(opts.device)
        if opts.distributed:
            dist.all_reduce(sums)
            _broadcast_buffers(model)
        train_seconds = time.perf_counter() - tic
        train_loss = (sums[0] / sums[1].clamp_min(1)).item()
        if scheduler is not None:
            scheduler.step()
        val = validate(scored, val_loader, criterion, opts) if val_loader is not None else None
        if val is not None and opts.distributed:
            val = _broadcast_scores(val, opts.device)
        stats = EpochStats(
            epoch=epoch + 1,
            train_loss=train_loss,
            val_loss=val["loss"] if val else float("nan"),
            val_accuracy=val["accuracy"] if val else float("nan"),
            val_macro_f1=val["macro_f1"] if val else float("nan"),
            lr=lr,
            images_per_s=sums[1].item() / max(train_seconds, 1e-9),
            seconds=time.perf_counter() - tic,
        )
        history.append(asdict(stats))
        score = _score(stats, cfg.monitor) if val else float(epoch)
        if score > best_score:
            best_score, best_epoch, bad_epochs = score, epoch + 1, 0
            best_state = _state_dict_copy(scored)
        else:
            bad_epochs += 1
        stopped_early = bool(val) and cfg.patience > 0 and bad_epochs >= cfg.patience
        finished = stopped_early or epoch + 1 == cfg.epochs
        log.info(
            "%s epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.3f, val macro F1 %.3f, %.1f img/s, "
            "%.1f s/epoch, %s",
            description, epoch + 1, cfg.epochs, stats.train_loss, stats.val_loss, stats.val_accuracy,
            stats.val_macro_f1, stats.images_per_s, stats.seconds,
            eta(epoch + 1 - start_epoch, cfg.epochs - start_epoch, time.perf_counter() - run_tic),
        )  # fmt: skip
        if checkpoint is not None and opts.is_main:
            save_checkpoint(
                {
                    "model": _state_dict_copy(model),
                    "ema": _state_dict_copy(ema.ema_model) if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "epoch": epoch + 1,
                    "best_model": best_state,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "rng": rng_state(),
                    "identity": identity,
                    "finished": finished,
                },
                checkpoint,
            )
        barrier()
        if callback is not None and opts.is_main:
            callback(stats)
        if stopped_early:
            log.info("early stopping: no %s improvement for %d epochs", cfg.monitor, cfg.patience)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    best = next((h for h in history if h["epoch"] == best_epoch), {})
    return FitResult(history, best_epoch, best, stopped_early, start_epoch)


# --------------------------------------------------------------------------- stages


@dataclass
class StageResult:
    """Outcome of clf_pretrain / clf_finetune (counts and metrics only; no identifiers)."""

    stage: str
    model: str
    init: str  # where the initial weights came from
    model_path: str
    classes: list[str]
    train_images: int = 0
    val_images: int = 0
    epochs_run: int = 0
    best_epoch: int = 0
    stopped_early: bool = False
    resumed_from: int = 0
    best: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def metrics(self) -> dict[str, float | int | str]:
        """Flat JSON for DVC metrics."""
        flat: dict[str, float | int | str] = {
            "model": self.model,
            "init": self.init,
            "train_images": self.train_images,
            "val_images": self.val_images,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "stopped_early": int(self.stopped_early),
            "seconds": round(self.seconds, 1),
        }
        for key in ("val_loss", "val_accuracy", "val_macro_f1", "images_per_s"):
            if key in self.best and math.isfinite(self.best[key]):  # NaN (no validation) is not JSON
                flat[key] = round(float(self.best[key]), 4)
        return flat


def choose_operating_point(
    scored: Sequence[tuple[nn.Module, ManifestDataset, pd.DataFrame]],
    classes: Sequence[str],
    image_size: Size,
    device: torch.device,
    test_time_flip: bool = False,
) -> DecisionRule:
    """The decision rule that maximises balanced accuracy on the validation studies (never the test split).

    `scored` pairs each model with the validation images it may score: the model and the val split,
    or, for a cross-validation ensemble, each member with its own held-out fold (out-of-fold scores).
    Studies are scored as evaluate scores them (the mean of their views' probabilities, mirrored
    views included with `test_time_flip`), and the offsets are fitted to those means
    (`metrics.fit_logit_offsets`).
    """
    prob_cols = [f"p_{c}" for c in classes]
    frames = []
    for model, val, val_rows in scored:
        prob = predict_probabilities(model, val, batch_size=64, device=device, image_size=image_size,
                                     test_time_flip=test_time_flip)  # fmt: skip
        per_image = val_rows[["study_id", "patient_id", "label"]].reset_index(drop=True).copy()
        per_image[prob_cols] = prob
        frames.append(per_image)
    studies = aggregate_by_study(pd.concat(frames, ignore_index=True), classes)
    offsets, at_rule, at_argmax = fit_logit_offsets(studies[prob_cols].to_numpy(),
                                                    np.asarray(label_indices(list(studies["label"]), classes)))
    scores = "out-of-fold val" if len(scored) > 1 else "val"
    chosen = f"{scores} balanced accuracy {at_argmax:.3f} (argmax) -> {at_rule:.3f} on {len(studies)} studies"
    log.info("operating point: offsets %s, %s", [round(o, 2) for o in offsets], chosen)
    return DecisionRule("offsets", offsets, chosen_on=chosen)


def prior_shift_rule(
    train_labels: Sequence[str],
    classes: Sequence[str],
    deployment_prior: Mapping[str, float],
    loss: str,
    sampling: str = "uniform",
) -> DecisionRule:
    """Offsets log(deployment prior) - log(training prior): the Bayes-optimal rule under a prior shift.

    A model trained with cross-entropy estimates posteriors under the prior of the images it trained
    on (augmented and synthetic ones included, so oversampling moves it; class-balanced sampling
    makes it the drawn frequencies, `sampled_class_counts`); one trained with the logit-adjusted loss
    estimates prior-free (balanced) scores, so its training prior is uniform.
    """
    if set(deployment_prior) != set(classes):
        raise ValueError(
            f"clf.deployment_prior names {sorted(deployment_prior)}, the classes are {list(classes)}: give every class"
        )
    counts = np.array([sum(label == c for label in train_labels) for c in classes], dtype=np.float64)
    if loss == "logit_adjusted":
        counts = np.ones(len(classes))
    elif counts.min() > 0:
        counts = np.array(sampled_class_counts(counts.tolist(), sampling))
    if counts.min() <= 0:
        raise ValueError(f"no training image of class {classes[int(counts.argmin())]!r}: no training prior to shift")
    train_prior = counts / counts.sum()
    target = np.array([deployment_prior[c] for c in classes])
    offsets = tuple(float(v) for v in np.log(target) - np.log(train_prior))
    chosen = ("deployment prior " + ", ".join(f"{c} {p:.3f}" for c, p in zip(classes, target, strict=True))
              + " over training prior " + ", ".join(f"{p:.3f}" for p in train_prior))  # fmt: skip
    return DecisionRule("offsets", offsets, chosen_on=chosen)


def _stage_result(
    stage: str,
    cfg: ClassifierConfig,
    init: str,
    path: Path,
    classes: Sequence[str],
    train: ManifestDataset,
    val: ManifestDataset | None,
    result: FitResult,
    tic: float,
) -> StageResult:
    return StageResult(
        stage=stage,
        model=cfg.model,
        init=init,
        model_path=str(path),
        classes=list(classes),
        train_images=len(train),
        val_images=len(val) if val is not None else 0,
        epochs_run=len(result.history),
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        resumed_from=result.resumed_from,
        best=result.best,
        seconds=time.perf_counter() - tic,
    )


def _clear_checkpoints(folder: Path) -> None:
    """Nothing to resume: leave the (DVC-tracked) checkpoint folder present but empty."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.pt"):
        stale.unlink()


def _imagenet(cfg: ClassifierConfig) -> str:
    return cfg.imagenet_weights or "imagenet"


MemberData = tuple[ManifestDataset, ManifestDataset | None, list[pd.DataFrame]]  # train, val, [their rows]


def _member_data(
    train_rows: pd.DataFrame, val_rows: pd.DataFrame, classes: Sequence[str], cfg: ClassifierConfig, root: Path,
    transform=None,
) -> MemberData:
    """The datasets one model trains and validates on (the transform augments training images only)."""
    train = ManifestDataset(train_rows, classes, transform=transform, cache=cfg.cache_images, root=root)
    val = ManifestDataset(val_rows, classes, cache=cfg.cache_images, root=root) if len(val_rows) else None
    return train, val, [train_rows, val_rows]


def _datasets(
    manifest: pd.DataFrame, classes: Sequence[str], cfg: ClassifierConfig, root: Path, transform=None
) -> MemberData:
    train_rows = load_split(manifest, "train")
    val_rows = load_split(manifest, "val")
    if train_rows.empty:
        raise ValueError("the manifest has no training rows (run the split stage)")
    if val_rows.empty:
        log.warning("no validation rows: the last epoch is kept and early stopping is off")
    return _member_data(train_rows, val_rows, classes, cfg, root, transform)


def _fold_datasets(
    manifest: pd.DataFrame, classes: Sequence[str], cfg: ClassifierConfig, root: Path, transform=None
) -> list[MemberData]:
    """Per fold of the train and val patients: the rows outside it to train on, its original images to validate.

    A patient's augmented copies go with the patient (never trained on while the patient is held
    out); GAN images have no patient and are always trained on.
    """
    from bonescan.data.augment import parent_of

    rows = load_split(manifest, ("train", "val"))
    synthetic = rows["synthetic"].astype(bool)
    originals = rows[~synthetic & rows["source"].map(parent_of).isna()]
    members: list[MemberData] = []
    folds = patient_folds(originals, cfg.folds, cfg.seed)
    for index, held in enumerate(folds):
        train_rows = rows[~(rows["patient_id"].isin(held) & ~synthetic)].reset_index(drop=True)
        val_rows = originals[originals["patient_id"].isin(held)].reset_index(drop=True)
        log.info("fold %d/%d: %d training images, %d validation images of %d patients", index + 1, len(folds),
                 len(train_rows), len(val_rows), len(held))  # fmt: skip
        members.append(_member_data(train_rows, val_rows, classes, cfg, root, transform))
    return members


def _train_stage(
    stage: str,
    model: nn.Module,
    train: ManifestDataset,
    val: ManifestDataset | None,
    frames: list[pd.DataFrame],
    train_cfg: TrainConfig,
    cfg: ClassifierConfig,
    opts: RunOptions,
    checkpoint: Path,
    extra_identity: dict[str, Any],
    resume: bool,
    callback: Callable[[EpochStats], None] | None,
) -> FitResult:
    counts = train.class_counts()
    drawn = sampled_class_counts(counts, train_cfg.sampling)  # what the loss and DRW correct for
    criterion = build_criterion(train_cfg.loss, drawn).to(opts.device)
    train_loader = make_loader(
        train, train_cfg.batch_size, True, opts, seed=cfg.seed, sampling=train_cfg.sampling, labels=train.labels
    )
    if train_cfg.sampling != "uniform":
        log.info("%s: %s sampling of %s training images per class (%s drawn per epoch)", stage,
                 train_cfg.sampling, counts, [round(d, 1) for d in drawn])
        if train_cfg.loss.name in PRIOR_AWARE_LOSSES or train_cfg.loss.drw_epoch is not None:
            log.warning("%s: %s sampling already balances the classes; loss %s corrects for the drawn frequencies "
                        "%s, so it adds little or nothing (choose one remedy)", stage, train_cfg.sampling,
                        train_cfg.loss.name, [round(d, 1) for d in drawn])
    val_loader = make_loader(val, train_cfg.batch_size, False, opts) if val is not None else None
    # The process count is part of the run: resuming a 4-process run with 2 would change the batch size.
    identity = {
        "config": cfg.model_dump(mode="json"),
        "data": fingerprint(frames),
        "world_size": opts.world_size,
        **extra_identity,
    }
    if not resume and opts.is_main:
        checkpoint.unlink(missing_ok=True)
    barrier()
    log.info("%s: %d training images %s, %d validation images", stage, len(train), counts, len(val or []))
    return fit(
        model, train_loader, val_loader, criterion, train_cfg, opts, cfg.seed, checkpoint, identity, drawn,
        callback, description=stage,
    )  # fmt: skip


def write_history(
    history: list[dict[str, float]], csv_paths: Sequence[Path], json_path: Path | None = None
) -> None:
    """Per-epoch history as CSV (DVC plots) and JSON."""
    for path in csv_paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, lineterminator="\n")
            writer.writeheader()
            for row in history:
                writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(history, indent=2) + "\n")


def pretrain_classifier(
    cfg: ClassifierConfig,
    source_manifest: str | Path,
    source_classes: Sequence[str],
    source_size: Size,
    target_classes: Sequence[str],
    target_size: Size,
    root: str | Path = ".",
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[EpochStats], None] | None = None,
) -> StageResult:
    """Stage 1: write `cfg.pretrain_dir`/model.pt, the initial weights of fine-tuning.

    `cfg.pretrain_source` = "source" trains `cfg.model` on the source domain's train split (from
    ImageNet weights if `cfg.pretrain_init` = "imagenet"); "imagenet" saves ImageNet weights (grey
    stem, fresh head); "none" saves a seeded random initialisation.

    Raises:
        FileNotFoundError: ImageNet weights requested but absent from the torch cache / given path.
    """
    tic = time.perf_counter()
    root = Path(root)
    opts = RunOptions.from_config(cfg, progress=progress)
    out_dir = root / cfg.pretrain_dir
    torch.manual_seed(cfg.seed)
    if cfg.pretrain_source != "source":
        pretrained = _imagenet(cfg) if cfg.pretrain_source == "imagenet" else None
        model = build(cfg.model, len(target_classes), in_chans=1, pretrained=pretrained)
        if cfg.normed_head:
            model.reset_classifier(len(target_classes), normed=True)
        path = out_dir / "model.pt"
        with distributed_session(opts):  # under torchrun: no rank returns before rank 0 has written
            if opts.is_main:
                record = ClassifierFile.from_model(
                    model, cfg.model, target_classes, target_size, normed_head=cfg.normed_head,
                    stage="pretrain", config=cfg.model_dump(mode="json"),
                )
                classifier_file.save(record, path)
                _clear_checkpoints(root / cfg.checkpoints_dir / "clf_pretrain")
                write_history([], [root / cfg.plots_dir / "pretrain.csv"])
            barrier()
        seconds = time.perf_counter() - tic
        return StageResult(
            "clf_pretrain", cfg.model, cfg.pretrain_source, str(path), list(target_classes), seconds=seconds
        )

    with distributed_session(opts):
        init = _imagenet(cfg) if cfg.pretrain_init == "imagenet" else None
        model = build(cfg.model, len(source_classes), in_chans=1, pretrained=init)
        if cfg.normed_head:
            model.reset_classifier(len(source_classes), normed=True)
        manifest = read_manifest(root / source_manifest)
        train, val, frames = _datasets(manifest, source_classes, cfg, root)
        checkpoint = root / cfg.checkpoints_dir / "clf_pretrain" / "last.pt"
        identity = {"init": cfg.pretrain_init}
        result = _train_stage(
            "clf_pretrain",
            model,
            train,
            val,
            frames,
            cfg.pretrain,
            cfg,
            opts,
            checkpoint,
            identity,
            resume,
            callback,
        )
        path = out_dir / "model.pt"
        if opts.is_main:
            record = ClassifierFile.from_model(
                model, cfg.model, source_classes, source_size, normed_head=cfg.normed_head,
                stage="pretrain", config=cfg.model_dump(mode="json"), history=result.history,
            )
            classifier_file.save(record, path)
            write_history(result.history, [root / cfg.plots_dir / "pretrain.csv"])
        barrier()
    return _stage_result(
        "clf_pretrain",
        cfg,
        f"source ({cfg.pretrain_init} init)",
        path,
        source_classes,
        train,
        val,
        result,
        tic,
    )


def finetune_classifier(
    cfg: ClassifierConfig,
    augment: AugmentConfig,
    classes: Sequence[str],
    image_size: Size,
    root: str | Path = ".",
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[EpochStats], None] | None = None,
    preprocessing: Preprocessing | None = None,
) -> StageResult:
    """Stage 2: fine-tune stage 1's weights on the target training split; write `cfg.out_dir`/model.pt.

    The classifier head is reset for `classes`; with `augment.mode` = "online" the training images
    are augmented in the loader (offline copies are already rows of `cfg.manifest`). `preprocessing`
    (how the target's files became the training images) is saved in model.pt for inference.
    """
    from bonescan.data.augment import build_transform  # torchvision.transforms only when training

    if preprocessing is not None and tuple(preprocessing.image_size) != tuple(image_size):
        raise ValueError(f"preprocessing makes {preprocessing.image_size} images, the model gets {image_size}")
    tic = time.perf_counter()
    root = Path(root)
    opts = RunOptions.from_config(cfg, progress=progress)
    init_path = root / cfg.pretrain_dir / "model.pt"
    init = classifier_file.read(init_path)
    if init.model_name != cfg.model:
        raise ValueError(
            f"{init_path} holds a {init.model_name!r} but clf.model is {cfg.model!r}; re-run clf_pretrain"
        )
    with distributed_session(opts):
        transform = build_transform(augment) if augment.mode == "online" else None
        manifest = read_manifest(root / cfg.manifest)
        if cfg.folds > 1:
            member_data = _fold_datasets(manifest, classes, cfg, root, transform)
        else:
            member_data = [_datasets(manifest, classes, cfg, root, transform)] * cfg.ensemble
        train, val, frames = member_data[0]  # what the stage reports: member 0's
        extra = {
            "init": file_digest(init_path),
            "augment": augment.model_dump(mode="json") if transform else None,
        }
        trained: list[nn.Module] = []
        fits: list[FitResult] = []
        for index, (member_train, member_val, member_frames) in enumerate(member_data):
            # A seed ensemble's member 0 is exactly the single model of the same seed.
            member_cfg = cfg.model_copy(update={"seed": cfg.seed + index, "ensemble": 1})
            torch.manual_seed(member_cfg.seed)
            model = init.build()
            model.reset_classifier(len(classes), normed=cfg.normed_head)
            kind = f"fold {index + 1}/{cfg.folds}" if cfg.folds > 1 else f"ensemble member {index + 1}/{cfg.ensemble}"
            log.info("%s: head reset to %d classes, %s parameters%s", cfg.model, len(classes),
                     f"{count_parameters(model):,}",
                     f"; {kind}, seed {member_cfg.seed}" if len(member_data) > 1 else "")  # fmt: skip
            folder = "clf_finetune" if index == 0 else f"clf_finetune/member{index}"
            fits.append(_train_stage(
                "clf_finetune", model, member_train, member_val, member_frames, cfg.finetune, member_cfg, opts,
                root / cfg.checkpoints_dir / folder / "last.pt", extra, resume, callback,
            ))  # fmt: skip
            trained.append(unwrap(model).eval())
        first, result = trained[0], fits[0]  # the history and best epoch reported are member 0's
        model = MeanOfMembers(trained) if len(trained) > 1 else first
        out_dir = root / cfg.out_dir
        path = out_dir / "model.pt"
        if opts.is_main:
            decision = DecisionRule()
            if cfg.operating_point == "deployment_prior":
                decision = prior_shift_rule(
                    list(frames[0]["label"]), classes, cfg.deployment_prior or {}, cfg.finetune.loss.name,
                    cfg.finetune.sampling,
                )
            elif cfg.operating_point == "balanced_accuracy" and val is not None:
                scored = ([(member, v, f[1]) for member, (_, v, f) in zip(trained, member_data, strict=True)]
                          if cfg.folds > 1 else [(unwrap(model), val, frames[1])])  # fmt: skip
                decision = choose_operating_point(scored, classes, image_size, opts.device, cfg.test_time_flip)
            record = ClassifierFile.from_model(
                first, cfg.model, classes, image_size, normed_head=cfg.normed_head, preprocessing=preprocessing,
                decision=decision, test_time_flip=cfg.test_time_flip, stage="finetune",
                config=cfg.model_dump(mode="json"), history=result.history, best=result.best,
            ).with_members([member.state_dict() for member in trained[1:]])
            classifier_file.save(record, path)
            write_history(
                result.history,
                [out_dir / "history.csv", root / cfg.plots_dir / "finetune.csv"],
                out_dir / "history.json",
            )
        barrier()
    return _stage_result("clf_finetune", cfg, cfg.pretrain_source, path, classes, train, val, result, tic)
