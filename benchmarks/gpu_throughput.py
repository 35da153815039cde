"""Classifier throughput on one accelerator: the pipeline's loops against a bare PyTorch loop; prints JSON.

Issue 18: the multi-scale CNN of Yu et al. 2023 (`multiscale`) at 224 x 224, bf16 autocast and
channels_last, as `clf_finetune` runs it on CUDA. On the same data, the same initial weights and the
same optimizer, in the same process, it measures

* images/s and peak memory of training and inference: the pipeline's `bonescan.train.train_one_epoch`
  / `bonescan.train.evaluate` against the bare loops of benchmarks/train.py (`bare_train`,
  `bare_infer`, same autocast and memory format), and their ratio (best of `--repeats` rounds, the
  order alternating; 1.0 = as fast);
* model FLOPs per image (`torch.utils.flop_counter.FlopCounterMode` on one forward and one
  forward + backward; 2 FLOPs per multiply-add) and the MFU estimate: FLOPs x images/s against the
  accelerator's dense bf16 peak (`--peak-tflops`, else a table of known GPUs; none on the CPU);
* data loading: the same DataLoader alone (`bonescan.train.make_loader` over a
  `bonescan.data.dataset.ManifestDataset` of 16-bit PNGs with the image cache on, as training reads
  them, copied to the device) in images/s, and the share of each training epoch's wall time spent
  waiting for the next batch. Loading is the bottleneck if that share is large or the loader alone
  is not clearly faster than training (`loading_is_bottleneck`, rule in the JSON).

Usage: python benchmarks/gpu_throughput.py [--model multiscale] [--size 224 224] [--batch 256]
       [--steps 8] [--repeats 3] [--workers 0] [--device auto|cpu|cuda] [--peak-tflops F] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
import train as clf_bench  # benchmarks/train.py: this script's folder is sys.path[0]
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from bonescan.config import TrainConfig
from bonescan.data.dataset import ManifestDataset
from bonescan.dicom.read import write_png16
from bonescan.models import build, count_parameters
from bonescan.train import (
    RunOptions,
    build_optimizer,
    make_loader,
    set_loader_epoch,
    train_one_epoch,
    validate,
)

CLASSES = ("healthy", "metastasis", "benign")
UNIQUE_IMAGES = 64  # distinct PNG files; manifest rows repeat them (each row is decoded once, then cached)
# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts, no sparsity), TFLOP/s, matched in order.
BF16_PEAK_TFLOPS = (("H200", 989.4), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0))
# Goals of issue 18 for multiscale training at 224 x 224 on one H100/H200-class GPU.
GOAL_TRAIN_IMAGES_PER_S = 3000.0
GOAL_RATIO_TO_BARE = 0.95
BOTTLENECK_WAIT_SHARE = 0.10  # loading is the bottleneck if training waits for batches longer than this
BOTTLENECK_LOADER_MARGIN = 1.5  # ... or the loader alone is not at least this much faster than training


class TimedLoader:
    """A DataLoader whose iteration records the wall time spent waiting for each next batch."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.wait_s = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):  # sampler, generator, dataset, ...: the wrapped loader's
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        self.wait_s = 0.0
        batches = iter(self.loader)
        while True:
            tic = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                self.wait_s += time.perf_counter() - tic
                return
            self.wait_s += time.perf_counter() - tic
            yield batch


def write_png_dataset(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> ManifestDataset:
    """`n` manifest rows over `UNIQUE_IMAGES` random 16-bit PNGs of `size`, read as training reads them."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(min(n, UNIQUE_IMAGES)):
        path = folder / f"img{i:03d}.png"
        write_png16(rng.random(size, dtype=np.float32), path)
        paths.append(path.name)
    rows = pd.DataFrame(
        {
            "image_id": [f"row{i}" for i in range(n)],
            "label": [CLASSES[i % len(CLASSES)] for i in range(n)],
            "path": [paths[i % len(paths)] for i in range(n)],
        }
    )
    return ManifestDataset(rows, CLASSES, cache=True, root=folder)


def count_flops(model: nn.Module, shape: tuple[int, ...], opts: RunOptions) -> dict[str, float]:
    """Model FLOPs per image of one forward and of one training step (forward + backward)."""
    model = copy.deepcopy(model)
    x = torch.rand(shape, device=opts.device).contiguous(memory_format=opts.memory_format)
    y = torch.zeros(shape[0], dtype=torch.long, device=opts.device)
    autocast = clf_bench._autocast(opts)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as forward, autocast:
        model(x)
    model.train()
    with FlopCounterMode(display=False) as step:
        with autocast:
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
    return {
        "forward_gflop_per_image": forward.get_total_flops() / shape[0] / 1e9,
        "train_step_gflop_per_image": step.get_total_flops() / shape[0] / 1e9,
    }


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no bf16 peak known for the CPU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops, f"data sheet, dense bf16, {key}"
    return None, f"no bf16 peak known for {name}: pass --peak-tflops"


def loader_only(loader: DataLoader, opts: RunOptions) -> int:
    """Iterate the loader and copy every batch to the device, as the training loops do; images seen."""
    n = 0
    for images, target in loader:
        images.to(opts.device, non_blocking=True, memory_format=opts.memory_format)
        target.to(opts.device, non_blocking=True)
        n += images.shape[0]
    return n


def _best(runs: list[dict[str, float]], key: str = "images_per_s") -> float:
    return max(r[key] for r in runs)


def bench(args: argparse.Namespace, opts: RunOptions, folder: Path) -> dict:
    h, w = args.size
    n = args.batch * args.steps
    data = write_png_dataset(folder, n, (h, w))
    loader = make_loader(data, args.batch, True, opts, seed=0)
    for index in range(len(data)):  # fill the image cache: training's later epochs read from memory
        data.read(index)
    timed = TimedLoader(loader)
    eval_loader = make_loader(data, args.batch, False, opts)
    torch.manual_seed(0)
    init = build(args.model, len(CLASSES)).to(opts.device, memory_format=opts.memory_format)
    criterion = nn.CrossEntropyLoss()
    cfg = TrainConfig()  # AdamW, the default fine-tuning optimizer (the yu2023 preset uses RAdam: same cost)

    def pipeline_train(model, optimizer):
        return train_one_epoch(model, timed, criterion, optimizer, opts).count

    def bare_train(model, optimizer):
        return clf_bench.bare_train(model, timed, criterion, optimizer, opts)

    def pipeline_infer(model):
        validate(model, eval_loader, criterion, opts)
        return len(eval_loader.dataset)

    def bare_infer(model):
        return clf_bench.bare_infer(model, eval_loader, criterion, opts)

    train_loops = {"pipeline": pipeline_train, "bare": bare_train}
    infer_loops = {"pipeline": pipeline_infer, "bare": bare_infer}
    for variant in train_loops:  # warm-up: allocator, cuDNN heuristics, lazy initialisation
        model = copy.deepcopy(init)
        train_loops[variant](model, build_optimizer(model.parameters(), cfg))
        infer_loops[variant](model)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        kind: {"pipeline": [], "bare": []} for kind in ("train", "inference")
    }
    wait_share: dict[str, list[float]] = {"pipeline": [], "bare": []}
    loading: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        order = ("pipeline", "bare") if repeat % 2 == 0 else ("bare", "pipeline")
        for variant in order:
            model = copy.deepcopy(init)
            optimizer = build_optimizer(model.parameters(), cfg)
            set_loader_epoch(loader, 0, repeat)  # both variants see the same batches in a round
            result = clf_bench.measure(functools.partial(train_loops[variant], model, optimizer), opts.device)
            runs["train"][variant].append(result)
            wait_share[variant].append(timed.wait_s * result["images_per_s"] / n)  # wait / epoch wall time
            runs["inference"][variant].append(
                clf_bench.measure(functools.partial(infer_loops[variant], model), opts.device)
            )
            del model, optimizer
        set_loader_epoch(loader, 0, repeat)
        loading.append(clf_bench.measure(functools.partial(loader_only, loader, opts), opts.device))

    flops = count_flops(init, (min(args.batch, 4), 1, h, w), opts)
    peak, peak_source = peak_tflops(opts.device, args.peak_tflops)
    out: dict = {"parameters": count_parameters(init), **{k: round(v, 3) for k, v in flops.items()}}
    for kind, by_variant in runs.items():
        summary: dict = {
            variant: {
                "images_per_s": round(statistics.median(r["images_per_s"] for r in results), 1),
                "best_images_per_s": round(_best(results), 1),
                "peak_mb": round(max(r["peak_mb"] for r in results), 1),
            }
            for variant, results in by_variant.items()
        }
        summary["ratio_to_bare"] = round(_best(by_variant["pipeline"]) / _best(by_variant["bare"]), 3)
        per_image = flops["train_step_gflop_per_image" if kind == "train" else "forward_gflop_per_image"]
        achieved = per_image * _best(by_variant["pipeline"]) / 1e3  # TFLOP/s
        summary["model_tflop_per_s"] = round(achieved, 2)
        summary["mfu"] = round(achieved / peak, 4) if peak else None
        out[kind] = summary
    train_ips = _best(runs["train"]["pipeline"])
    loader_ips = _best(loading)
    share = max(wait_share["pipeline"])
    out["data_loading"] = {
        "loader_only_images_per_s": round(loader_ips, 1),
        "loader_only_over_training": round(loader_ips / train_ips, 2),
        "training_wait_share_pipeline": round(share, 4),
        "training_wait_share_bare": round(max(wait_share["bare"]), 4),
        "loading_is_bottleneck": share > BOTTLENECK_WAIT_SHARE
        or loader_ips < BOTTLENECK_LOADER_MARGIN * train_ips,
        "rule": f"bottleneck if the pipeline's training waits > {BOTTLENECK_WAIT_SHARE:.0%} of its wall time "
        f"for batches, or the loader alone is < {BOTTLENECK_LOADER_MARGIN}x training's images/s",
    }
    out["peak_bf16_tflops"] = peak
    out["peak_source"] = peak_source
    out["goals"] = {
        "train_images_per_s": GOAL_TRAIN_IMAGES_PER_S,
        "ratio_to_bare": GOAL_RATIO_TO_BARE,
        "train_images_per_s_met": train_ips >= GOAL_TRAIN_IMAGES_PER_S,
        "ratio_to_bare_met": out["train"]["ratio_to_bare"] >= GOAL_RATIO_TO_BARE,
        "loading_not_bottleneck_met": not out["data_loading"]["loading_is_bottleneck"],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="multiscale")
    parser.add_argument("--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="training batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (pipeline and bare alternate)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (clf.num_workers)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the accelerator")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    opts = RunOptions(
        device=device, num_workers=args.workers, progress=False
    )  # amp + channels_last: defaults
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bonescan-gpu-bench-") as tmp:
        result = bench(args, opts, Path(tmp))
    print(
        json.dumps(
            {
                "benchmark": "classifier_throughput",
                "device": torch.cuda.get_device_name(device) if use_cuda else "cpu",
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "python": sys.version.split()[0],
                "threads": torch.get_num_threads(),
                "model": args.model,
                "size": list(args.size),
                "batch": args.batch,
                "steps": args.steps,
                "repeats": args.repeats,
                "workers": args.workers,
                "autocast_bf16": opts.autocast,
                "channels_last": opts.memory_format == torch.channels_last,
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "load_average_1min": round(psutil.getloadavg()[0], 2),
                **result,
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
