"""GAN training for both transfer stages (Yu et al. 2023, Sec. 3.2): source pretraining, target fine-tuning.

One loop serves both stages. Stage 1 (`gan_pretrain`) trains on the train split of the source domain
(chest radiographs); stage 2 (`gan_finetune`) loads the stage-1 weights, re-initialises only the
class-dependent parameters (label embedding, class head) and fine-tunes on the target train split.
Only real train-split rows ever reach the loader (`training_rows`), so validation and test patients
are never seen by the GAN.

Each step is a D phase then a G phase, each with its own RAdam optimiser; DiffAugment transforms real
and fake images alike, an EMA copy of G is what synthesis samples from, and real batches are drawn
label-balanced. Every random draw comes from an explicit `torch.Generator` whose state a checkpoint
stores, and the data order of an epoch is a pure function of (seed, epoch, rank), so a killed run
resumes from its last checkpoint to bit-identical weights on CPU. Under `torchrun` G and D are wrapped
in DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler
from torchvision.utils import make_grid

from bonescan.checkpoint import save_checkpoint
from bonescan.config import GAN_SIDE_MULTIPLE, GanModelConfig, GanStageConfig, GanTrainConfig, Params, Size
from bonescan.data.dataset import ManifestDataset
from bonescan.data.manifest import read_manifest
from bonescan.gan import (
    EMA,
    DiffAugment,
    build,
    class_dependent_keys,
    count_parameters,
    discriminator_loss,
    generator_loss,
    mode_seeking_loss,
)
from bonescan.gan.weights import (
    CHECKPOINT_FORMAT,
    GanRun,
    load_weights,
    state_digest,
    training_rows,
)
from bonescan.progress import progress
from bonescan.runtime import autocast, dist_env, resolve_device, unwrap

__all__ = [
    "GanTrainResult",
    "describe_models",
    "run_gan_stage",
    "train_gan",
    "train_step",
    "training_parts",
    "transfer_weights",
]

log = logging.getLogger(__name__)

STAT_KEYS = (
    "g_loss",
    "d_loss",
    "d_real_acc",
    "d_fake_acc",
    "d_cls_acc_real",
    "d_cls_acc_fake",
    "g_fool_rate",
    "g_cls_acc",
)
StepCallback = Callable[[int, dict[str, float]], None]
EpochCallback = Callable[[dict[str, float]], None]


# --------------------------------------------------------------------------- data


class _ToGan:
    """(1, H, W) in [0, 1] at ingest size -> (1, h, w) in [-1, 1] at the GAN's resolution."""

    def __init__(self, size: Size) -> None:
        self.size = tuple(size)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(
                image[None], size=self.size, mode="bilinear", antialias=True, align_corners=False
            )[0]
        return image.clamp(0.0, 1.0) * 2.0 - 1.0


def _epoch_indices(
    labels: Sequence[int], epoch: int, seed: int, balanced: bool, rank: int, world: int
) -> list[int]:
    """This process's sample order for `epoch`: a pure function of its arguments (what makes resume exact).

    Balanced: each process draws ceil(N / world) indices with replacement, weight 1 / class count.
    Otherwise: a DistributedSampler permutation (one shard per process).
    """
    n = len(labels)
    if balanced:
        counts = np.bincount(np.asarray(labels), minlength=max(labels) + 1)
        weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.double)
        generator = torch.Generator().manual_seed(_derive_seed(seed, "balanced", epoch, rank))
        sampler = WeightedRandomSampler(weights, math.ceil(n / world), replacement=True, generator=generator)
        return list(sampler)
    shard = DistributedSampler(
        range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False
    )
    shard.set_epoch(epoch)
    return list(shard)


def _batches(indices: list[int], batch_size: int) -> list[list[int]]:
    """Full batches only (a short tail is dropped) unless the epoch is shorter than one batch."""
    steps = max(1, len(indices) // batch_size)
    return [indices[k * batch_size : (k + 1) * batch_size] for k in range(steps)]


def _derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- models and weights


@dataclass
class TrainingParts:
    """G and D on their device with what trains them: shared by `train_gan` and benchmarks/gan.py."""

    g: nn.Module
    d: nn.Module
    ema: EMA | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    augment: DiffAugment | None
    memory_format: torch.memory_format  # channels_last on CUDA


def training_parts(
    arch: str,
    num_classes: int,
    image_size: Size,
    model_cfg: GanModelConfig,
    train_cfg: GanTrainConfig,
    device: torch.device,
    init: dict | None = None,
) -> TrainingParts:
    """Build G and D (from `init`'s weights when given), move them, and make EMA, RAdam and DiffAugment."""
    g, d = build(arch, num_classes, tuple(image_size), **_model_kwargs(model_cfg))
    if init is not None:
        transfer_weights(init, g, d)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    g.to(device, memory_format=memory_format)
    d.to(device, memory_format=memory_format)
    return TrainingParts(
        g,
        d,
        EMA(g, decay=train_cfg.ema_decay) if train_cfg.ema else None,
        torch.optim.RAdam(g.parameters(), lr=train_cfg.lr, betas=train_cfg.betas),
        torch.optim.RAdam(d.parameters(), lr=train_cfg.lr, betas=train_cfg.betas),
        DiffAugment(train_cfg.diffaugment) if train_cfg.diffaugment else None,
        memory_format,
    )


def _model_kwargs(model: GanModelConfig) -> dict[str, object]:
    return {
        "z_dim": model.z_dim,
        "base_channels": model.base_channels,
        "d_base_channels": model.d_base_channels,
        "spectral_norm": model.spectral_norm,
    }


def transfer_weights(weights: dict, g: nn.Module, d: nn.Module) -> None:
    """Load stage-1 weights into stage-2 networks, re-initialising only class-dependent parameters.

    The class-dependent tensors of `g` and `d` (already built for the target classes) keep their fresh
    initialisation; every other tensor is copied from the trained (not averaged) stage-1 networks.

    Raises:
        ValueError: a transferable tensor is missing or has another shape (other architecture/size).
    """
    for net, state in ((g, weights["generator"]), (d, weights["discriminator"])):
        own = net.state_dict()
        skip = set(class_dependent_keys(net))
        missing = [k for k in own if k not in skip and k not in state]
        mismatched = [k for k in own if k not in skip and k in state and state[k].shape != own[k].shape]
        if missing or mismatched:
            raise ValueError(
                f"stage-1 weights do not fit this {weights['arch']} network (same gan.model needed): "
                f"missing {missing[:3]}, shape mismatch {mismatched[:3]}"
            )
        net.load_state_dict({k: (own[k] if k in skip else state[k]) for k in own})


# --------------------------------------------------------------------------- training


@dataclass
class GanTrainResult:
    """What a run did; `history` holds one dict of mean statistics per epoch."""

    arch: str
    weights: Path
    steps: int
    epochs: int
    images_seen: int
    seconds: float
    resumed_from_step: int | None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1); single process otherwise.

    Unlike `runtime.process_group` (one block), the GAN stage keeps the group across its
    architectures: the caller that started it destroys it once (re-creating it raced under torchrun).
    """
    env = dist_env()
    if not env.distributed:
        return _Dist()
    started = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        if env.is_main:
            log.info("DistributedDataParallel: %d processes (%s); rank 0 logs progress", env.world_size, backend)
        started = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), started_here=started)


def _pixels_digest(rows: pd.DataFrame, root: Path) -> str:
    """SHA-256 over the bytes of every training image file, in image_id order.

    The files are lossless PNGs, so their bytes stand for their pixels: re-ingesting with other
    settings (e.g. `ingest.intensity_percentile`) keeps image ids and labels but changes this.
    """
    h = hashlib.sha256()
    for image_id, path in sorted(zip(rows["image_id"], rows["path"], strict=True)):
        h.update(f"{image_id}\0".encode())
        with open(Path(root) / path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _fingerprint(config: dict, rows: pd.DataFrame, init_sha: str | None, world: int, root: Path) -> str:
    """Identity of a run: a checkpoint resumes only a run with the same config, data and start weights.

    Data means the image ids, their labels and their pixels (`_pixels_digest`).
    """
    payload = {
        "config": config,
        "images": sorted(zip(rows["image_id"], rows["label"], strict=True)),
        "pixels": _pixels_digest(rows, root),
        "init": init_sha,
        "world": world,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _jsonable(obj: object) -> object:
    return json.loads(json.dumps(obj, default=list))


def train_gan(
    rows: pd.DataFrame,
    classes: Sequence[str],
    arch: str,
    model_cfg: GanModelConfig,
    train_cfg: GanTrainConfig,
    epochs: int,
    run: GanRun,
    *,
    image_size: Size,
    seed: int,
    init: dict | None = None,
    max_steps: int | None = None,
    root: Path = Path("."),
    resume: bool = True,
    step_callback: StepCallback | None = None,
    epoch_callback: EpochCallback | None = None,
) -> GanTrainResult:
    """Train one GAN on the real train-split rows of a manifest and write its weights.

    Args:
        rows: manifest rows; only real train-split rows are used (`training_rows`).
        classes: class names in label-index order.
        arch: `bonescan.gan.available()` name.
        model_cfg, train_cfg: network shape and optimisation (see params `gan.model`, `gan.train`).
        epochs: passes over the train split.
        run: output paths.
        image_size: (H, W) the GAN works at; images are resized to it on loading.
        seed: seed of initialisation, data order, noise and augmentation.
        init: stage-1 weights (`load_weights`) to fine-tune from; None trains from scratch.
        max_steps: stop after this many steps in total (None: all epochs).
        root: directory the manifest paths are relative to.
        resume: continue from `run.checkpoint` when it belongs to this very run.
        step_callback: called after every step with (step, stats) on the main process.
        epoch_callback: called after every epoch with its mean stats on the main process.

    Returns:
        A `GanTrainResult`; `run.weights` holds G, D, EMA weights, the config and the history.
    """
    rows = training_rows(rows)
    device = resolve_device(train_cfg.device, "gan.train.device")
    ddp = _init_distributed(device)
    config = _jsonable(
        {
            "arch": arch,
            "classes": list(classes),
            "image_size": list(image_size),
            "model": model_cfg.model_dump(),
            "train": train_cfg.model_dump(),
            "epochs": epochs,
            "max_steps": max_steps,
            "seed": seed,
        }
    )
    init_sha = state_digest(init["generator"]) + state_digest(init["discriminator"]) if init else None
    fingerprint = _fingerprint(config, rows, init_sha, ddp.world, root)

    torch.manual_seed(seed)
    parts = training_parts(arch, len(classes), image_size, model_cfg, train_cfg, device, init)
    g, d, ema, opt_g, opt_d, augment = parts.g, parts.d, parts.ema, parts.opt_g, parts.opt_d, parts.augment
    memory_format = parts.memory_format

    rank_seed = _derive_seed(seed, "rank", ddp.rank)
    noise_gen = torch.Generator().manual_seed(_derive_seed(rank_seed, "noise"))
    aug_gen = torch.Generator().manual_seed(_derive_seed(rank_seed, "augment"))

    dataset = ManifestDataset(rows, classes, transform=_ToGan(image_size), cache=True, root=root)
    labels = dataset.labels
    steps_per_epoch = len(
        _batches(
            _epoch_indices(labels, 0, seed, train_cfg.balanced_sampling, ddp.rank, ddp.world),
            train_cfg.batch_size,
        )
    )
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)

    step, history, acc = 0, [], _Accumulator()
    resumed_from = None
    if resume and run.checkpoint.is_file():
        ckpt = load_weights(run.checkpoint)
        if ckpt.get("fingerprint") == fingerprint:
            step = int(ckpt["step"])
            resumed_from = step
            g.load_state_dict(ckpt["generator"])
            d.load_state_dict(ckpt["discriminator"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
            opt_g.load_state_dict(ckpt["opt_g"])
            opt_d.load_state_dict(ckpt["opt_d"])
            rng = ckpt["rng"][ddp.rank]
            noise_gen.set_state(rng["noise"])
            aug_gen.set_state(rng["augment"])
            torch.set_rng_state(rng["torch"])
            if device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"], device)
            history = [dict(h) for h in ckpt["history"]]
            acc = _Accumulator.from_state(ckpt["accumulator"])
            if step >= total_steps:
                log.info(
                    "%s: checkpoint %s already holds this finished run (step %d of %d); nothing to train "
                    "(pass --no-resume to train again from the start)",
                    arch,
                    run.checkpoint,
                    step,
                    total_steps,
                )
            else:
                log.info("%s: resuming from step %d of %d (%s)", arch, step, total_steps, run.checkpoint)
        else:
            log.info(
                "%s: checkpoint %s belongs to another run (config, data or pixels changed); starting afresh",
                arch,
                run.checkpoint,
            )

    if ddp.world > 1:
        g_train: nn.Module = DistributedDataParallel(g)
        d_train: nn.Module = DistributedDataParallel(d)
    else:
        g_train, d_train = g, d

    fixed_z = torch.randn(
        len(classes) * train_cfg.samples_per_class,
        g.z_dim,
        generator=torch.Generator().manual_seed(_derive_seed(seed, "grid")),
    )
    fixed_y = torch.arange(len(classes)).repeat_interleave(train_cfg.samples_per_class)

    def checkpoint() -> None:
        rng = {"noise": noise_gen.get_state(), "augment": aug_gen.get_state(), "torch": torch.get_rng_state()}
        if device.type == "cuda":  # dropout on CUDA draws from the device's generator
            rng["cuda"] = torch.cuda.get_rng_state(device)
        rngs = [rng]
        if ddp.world > 1:
            rngs = [None] * ddp.world
            dist.all_gather_object(rngs, rng)
        if ddp.main:
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint,
                    "step": step,
                    "generator": g.state_dict(),
                    "discriminator": d.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "rng": rngs,
                    "history": history,
                    "accumulator": acc.state(),
                    "config": config,
                },
                run.checkpoint,
            )

    started = time.perf_counter()
    start_step = step
    g.train()
    d.train()
    # Rank 0 shows it: a bar on a terminal, else a log line per 30 s or 10 % with steps/s and ETA.
    with progress(arch, total_steps, unit="steps", completed=step, enabled=ddp.main, logger=log) as bar:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            batches = _batches(
                _epoch_indices(labels, epoch, seed, train_cfg.balanced_sampling, ddp.rank, ddp.world),
                train_cfg.batch_size,
            )[offset:]
            # Its own generator: a loader without one draws its worker seed from torch's global RNG, which
            # dropout (ACGAN's D) also draws from, so a resumed run (one more loader) would drift.
            loader = DataLoader(
                dataset,
                batch_sampler=batches,
                num_workers=train_cfg.num_workers,
                generator=torch.Generator().manual_seed(_derive_seed(rank_seed, "loader", epoch)),
            )
            for real, y_real in loader:
                real = real.to(device, memory_format=memory_format, non_blocking=True)
                y_real = y_real.to(device)
                stats = train_step(
                    g_train,
                    d_train,
                    opt_g,
                    opt_d,
                    real,
                    y_real,
                    len(classes),
                    augment,
                    noise_gen,
                    aug_gen,
                    device,
                    d_fake_class_loss=train_cfg.d_fake_class_loss,
                    mode_seeking=train_cfg.mode_seeking,
                )
                step += 1
                bar.update(step)
                if ema is not None:
                    ema.update(step)  # warm-up: short runs still average
                acc.add(stats)
                if step_callback is not None and ddp.main:
                    step_callback(step, stats)
                if step % steps_per_epoch == 0:
                    summary = acc.mean(ddp)
                    summary = {"epoch": step // steps_per_epoch, "step": step, **summary}
                    history.append(summary)
                    acc = _Accumulator()
                    if ddp.main:
                        log.info(
                            "%s epoch %d/%d step %d: %s",
                            arch,
                            summary["epoch"],
                            epochs,
                            step,
                            " ".join(
                                f"{k}={summary[k]:.3f}"
                                for k in ("g_loss", "d_loss", "d_real_acc", "d_fake_acc", "d_cls_acc_real")
                            ),
                        )
                        if epoch_callback is not None:
                            epoch_callback(summary)
                        if summary["epoch"] % train_cfg.sample_every == 0:
                            _save_grid(
                                ema.ema_model if ema else g,
                                fixed_z,
                                fixed_y,
                                device,
                                run.samples_dir / f"{arch}_epoch{summary['epoch']:04d}.png",
                                len(classes),
                            )
                if step % train_cfg.checkpoint_every == 0 or step >= total_steps:
                    checkpoint()
                if step >= total_steps:
                    break

    seconds = time.perf_counter() - started
    sampler_net = ema.ema_model if ema is not None else g
    if ddp.main:
        _save_grid(sampler_net, fixed_z, fixed_y, device, run.samples_dir / f"{arch}_final.png", len(classes))
        _write_history(history, run.history_csv)
        save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "arch": arch,
                "classes": list(classes),
                "num_classes": len(classes),
                "image_size": list(image_size),
                "model": _model_kwargs(model_cfg),
                "generator": {k: v.cpu() for k, v in g.state_dict().items()},
                "discriminator": {k: v.cpu() for k, v in d.state_dict().items()},
                "ema": {k: v.cpu() for k, v in ema.state_dict().items()} if ema is not None else None,
                "step": step,
                "history": history,
                "config": config,
            },
            run.weights,
        )
    if ddp.world > 1:
        dist.barrier()
        if ddp.started_here:
            dist.destroy_process_group()
    images = (step - start_step) * train_cfg.batch_size * ddp.world
    if step > start_step:
        log.info(
            "%s: %d steps in %.1f s (%.1f real images/s)",
            arch,
            step - start_step,
            seconds,
            images / max(seconds, 1e-9),
        )
    return GanTrainResult(
        arch=arch,
        weights=run.weights,
        steps=step,
        epochs=len(history),
        images_seen=images,
        seconds=seconds,
        resumed_from_step=resumed_from,
        history=history,
    )


def train_step(
    g: nn.Module,
    d: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    y_real: torch.Tensor,
    num_classes: int,
    augment: DiffAugment | None,
    noise_gen: torch.Generator,
    aug_gen: torch.Generator,
    device: torch.device,
    *,
    d_fake_class_loss: bool = False,
    mode_seeking: float = 0.0,
) -> dict[str, float]:
    """One D phase and one G phase on a real batch (B, C, H, W) in [-1, 1]; returns float stats.

    D sees real and fake in one forward pass (one DDP reduction per phase); the G phase calls the
    unwrapped D with its parameters frozen, so only G's gradients are reduced and applied. The G phase
    scores the fakes in the same real + fake batch as the D phase: D's BatchNorm normalises with batch
    statistics, and a batch of fakes alone would normalise away what all fakes share (e.g. a grey
    background), so G would get no gradient to fix it. With `mode_seeking` > 0 the two halves of the
    fake batch share their labels and G also minimises `mode_seeking_loss` between them.
    """
    b = real.shape[0]
    g_net, d_net = unwrap(g), unwrap(d)
    z = torch.randn(b, g_net.z_dim, generator=noise_gen).to(device)
    if mode_seeking > 0:  # pairs (i, i + b // 2) share a label; an odd last image draws its own
        half = torch.randint(0, num_classes, (b // 2,), generator=noise_gen)
        y_fake = torch.cat([half, half, torch.randint(0, num_classes, (b % 2,), generator=noise_gen)])
        y_fake = y_fake.to(device)
    else:
        y_fake = torch.randint(0, num_classes, (b,), generator=noise_gen).to(device)
    aug = (lambda x: augment(x, aug_gen)) if augment is not None else (lambda x: x)  # noqa: E731

    with autocast(device):
        fake = g(z, y_fake)  # (B, C, H, W)
        real_aug = aug(real)
        rf, cls = d(torch.cat([real_aug, aug(fake.detach())]))
    d_loss, d_stats = discriminator_loss(
        rf[:b].float(),
        cls[:b].float(),
        rf[b:].float(),
        cls[b:].float(),
        y_real,
        y_fake,
        fake_class_loss=d_fake_class_loss,
    )
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    d_net.requires_grad_(False)
    with autocast(device):
        rf, cls = d_net(torch.cat([real_aug, aug(fake)]))  # (2B, 1), (2B, K): real half only sets BN stats
    g_loss, g_stats = generator_loss(rf[b:].float(), cls[b:].float(), y_fake)
    if mode_seeking > 0 and b >= 2:
        h = b // 2
        pair = mode_seeking_loss(fake[:h].float(), fake[h : 2 * h].float(), z[:h], z[h : 2 * h])
        g_loss = g_loss + mode_seeking * pair
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    d_net.requires_grad_(True)
    return {k: float(v) for k, v in {**d_stats, **g_stats}.items()}


class _Accumulator:
    """Running sums of step statistics within an epoch (plain floats, so checkpoints can carry them)."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0) -> None:
        self.sums = dict(sums or {})
        self.count = count

    def add(self, stats: dict[str, float]) -> None:
        for key in STAT_KEYS:
            self.sums[key] = self.sums.get(key, 0.0) + stats[key]
        self.count += 1

    def mean(self, ddp: _Dist) -> dict[str, float]:
        values = torch.tensor(
            [self.sums.get(k, 0.0) for k in STAT_KEYS] + [float(self.count)], dtype=torch.float64
        )
        if ddp.world > 1:
            dist.all_reduce(values)
        count = max(values[-1].item(), 1.0)
        return {k: values[i].item() / count for i, k in enumerate(STAT_KEYS)}

    def state(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}

    @classmethod
    def from_state(cls, state: dict) -> _Accumulator:
        return cls(state["sums"], state["count"])


@torch.no_grad()
def _save_grid(
    g: nn.Module, z: torch.Tensor, y: torch.Tensor, device: torch.device, path: Path, rows: int
) -> None:
    """One row per class of images from fixed noise, as an 8-bit PNG (for eyes, not for training)."""
    was_training = g.training
    g.eval()
    with autocast(device):
        images = g(z.to(device), y.to(device)).float().cpu()  # (K * n, C, H, W) in [-1, 1]
    g.train(was_training)
    grid = make_grid((images + 1) / 2, nrow=len(y) // rows, padding=2, pad_value=1.0)  # (3, H', W')
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)


def _write_history(history: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "step", *STAT_KEYS]
    pd.DataFrame(history, columns=columns).to_csv(path, index=False, float_format="%.6g")


# --------------------------------------------------------------------------- stages


def _resolved_image_size(params: Params) -> Size:
    """gan.model.image_size, checked here so the error names the key; null: base.image_size rounded
    up to multiples of 16 (real images are resized to it on loading, synthesize resizes back)."""
    def rounded_up(size: Size) -> list[int]:
        return [-(-int(side) // GAN_SIDE_MULTIPLE) * GAN_SIDE_MULTIPLE for side in size]

    size = params.gan.model.image_size
    if size is None:
        return tuple(rounded_up(params.base.image_size))
    rounded = rounded_up(size)
    if rounded != [int(side) for side in size]:
        raise ValueError(
            f"gan.model.image_size {list(size)}: both sides must be multiples of {GAN_SIDE_MULTIPLE} (the GANs "
            f"halve the resolution four times); set gan.model.image_size: {rounded}, or null to derive it "
            "from base.image_size"
        )
    return tuple(size)


def _stage_config(params: Params, stage: str) -> GanStageConfig:
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"unknown GAN stage {stage!r}; expected 'pretrain' or 'finetune'")
    return getattr(params.gan, stage)


def describe_models(params: Params) -> dict[str, object]:
    """Parameter counts of G and D per architecture (for the target classes) and the resolved config."""
    gan = params.gan
    size = _resolved_image_size(params)
    counts = {}
    for arch in gan.archs:
        g, d = build(
            arch, len(params.dataset(gan.finetune.dataset).classes), size, **_model_kwargs(gan.model)
        )
        counts[arch] = {"generator": count_parameters(g), "discriminator": count_parameters(d)}
    return {"image_size": list(size), "parameters": counts, "config": _jsonable(gan.model_dump())}


def run_gan_stage(
    stage: str,
    params: Params,
    *,
    root: Path = Path("."),
    resume: bool = True,
    epoch_callback: Callable[[str, dict[str, float]], None] | None = None,
) -> list[GanTrainResult]:
    """`gan_pretrain` or `gan_finetune`: train every architecture of `gan.archs` for one stage.

    Pretraining reads the train split of `gan.pretrain.dataset`; fine-tuning reads the train split of
    `gan.finetune.dataset` and starts from `<models_dir>/pretrain/<arch>.pt`.

    Args:
        stage: "pretrain" or "finetune".
        params: the validated params.
        root: the project root (manifest paths and outputs are relative to it).
        resume: continue each architecture from its checkpoint when it belongs to this very run
            (False: train from the start and overwrite it).
        epoch_callback: called with (arch, stats) after every epoch.
    """
    stage_cfg = _stage_config(params, stage)
    gan = params.gan
    dataset = params.dataset(stage_cfg.dataset)
    manifest = read_manifest(root / dataset.out_dir / "manifest.csv")
    rows = training_rows(manifest)
    seed = gan.seed if gan.seed is not None else params.base.seed
    # One process group for all architectures: tearing it down and re-creating it between them races
    # under torchrun (gloo "connection refused" or a hang).
    ddp = _init_distributed(resolve_device(gan.train.device, "gan.train.device"))
    try:
        return [_train_arch(arch, stage, stage_cfg, params, rows, dataset.classes, seed, root, resume, epoch_callback)
                for arch in gan.archs]
    finally:
        if ddp.started_here:
            dist.barrier()
            dist.destroy_process_group()


def _train_arch(
    arch: str,
    stage: str,
    stage_cfg: GanStageConfig,
    params: Params,
    rows: pd.DataFrame,
    classes: Sequence[str],
    seed: int,
    root: Path,
    resume: bool,
    epoch_callback: Callable[[str, dict[str, float]], None] | None,
) -> GanTrainResult:
    """One architecture of one stage; fine-tuning starts from that architecture's stage-1 weights."""
    gan = params.gan
    init = load_weights(GanRun.under(gan, "pretrain", arch, root).weights) if stage == "finetune" else None
    return train_gan(
        rows,
        classes,
        arch,
        gan.model,
        gan.train,
        stage_cfg.epochs,
        GanRun.under(gan, stage, arch, root),
        image_size=_resolved_image_size(params),
        seed=seed,
        init=init,
        max_steps=stage_cfg.max_steps,
        resume=resume,
        root=root,
        epoch_callback=(lambda stats: epoch_callback(arch, stats)) if epoch_callback else None,
    )
