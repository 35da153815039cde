"""Classifier training and inference speed and memory, the pipeline's loop against a bare loop; prints JSON.

For each model, on the same in-memory images (random, (1, H, W)), the same DataLoader
(`bonescan.train.make_loader`), the same initial weights and the same optimizer settings, in the
same process, it times:

* pipeline: `bonescan.train.train_one_epoch` and `bonescan.train.validate` (loss meter, progress
  hook, bf16 autocast and channels_last on CUDA, confusion matrix);
* bare: the textbook loop `zero_grad(); criterion(model(x), y).backward(); step()` and an
  inference loop that computes the loss and the predicted classes, with the same autocast and
  memory format as the pipeline, so the ratio measures the loop and nothing else;

and reports images/s of each, the ratio pipeline / bare (1.0: as fast; above: faster), and the
peak memory of each loop: on CUDA `torch.cuda.max_memory_allocated`, on the CPU the peak RSS
(sampled every 5 ms with psutil) above the RSS before the loop, after returning freed heap memory
to the OS (glibc `malloc_trim`) so an earlier loop's allocations do not hide a later one's.
Pipeline and bare alternate in order over `--repeats` rounds. Reported: the median and the best
(highest) images/s of each; `speed_ratio` compares the best runs, the least disturbed by other
processes on a shared machine (timeit's rule), `speed_ratio_median` the medians.

Usage: python benchmarks/train.py [--models soft_threshold_net ...] [--size 256 96] [--batch 16]
       [--steps 6] [--repeats 3] [--device auto|cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import functools
import gc
import json
import logging
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import psutil
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bonescan.config import TrainConfig
from bonescan.models import build, count_parameters
from bonescan.train import (
    RunOptions,
    build_optimizer,
    make_loader,
    set_loader_epoch,
    train_one_epoch,
    validate,
)

DEFAULT_MODELS = ("soft_threshold_net", "mobilenet_v3_small", "di_mobilenet", "mobilenet_v3_caco")
NUM_CLASSES = 3


class PeakRSS:
    """Peak RSS of this process while the context is open, sampled by a thread."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._process = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], int], device: torch.device) -> dict[str, float]:
    """Run `fn` (returns the number of images processed) once; images/s and peak memory in MB."""
    _release_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = psutil.Process().memory_info().rss
    _sync(device)
    with PeakRSS() if device.type == "cpu" else nullcontext() as rss:
        tic = time.perf_counter()
        images = fn()
        _sync(device)
        seconds = time.perf_counter() - tic
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    return {"images_per_s": images / seconds, "peak_mb": (peak - base) / 2**20}


def _autocast(opts: RunOptions):
    return torch.autocast("cuda", dtype=torch.bfloat16) if opts.autocast else nullcontext()


def bare_train(
    model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer, opts: RunOptions
) -> int:
    model.train()
    n = 0
    for images, target in loader:
        images = images.to(opts.device, non_blocking=True, memory_format=opts.memory_format)
        target = target.to(opts.device, non_blocking=True)
        with _autocast(opts):
            loss = criterion(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += images.shape[0]
    return n


@torch.inference_mode()
def bare_infer(model: nn.Module, loader: DataLoader, criterion: nn.Module, opts: RunOptions) -> int:
    model.eval()
    n, total, preds = 0, torch.zeros((), device=opts.device), []
    for images, target in loader:
        images = images.to(opts.device, non_blocking=True, memory_format=opts.memory_format)
        target = target.to(opts.device, non_blocking=True)
        with _autocast(opts):
            logits = model(images)
        total += criterion(logits.float(), target) * images.shape[0]
        preds.append(logits.argmax(1))
        n += images.shape[0]
    torch.cat(preds).cpu()  # what evaluate does with the predictions (one transfer)
    total.item()
    return n


def bench_model(name: str, args: argparse.Namespace, opts: RunOptions) -> dict:
    """Median images/s and peak memory of the pipeline's and the bare loops for one model."""
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    data = TensorDataset(
        torch.rand(n, 1, h, w, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)
    )
    warm = TensorDataset(*(t[: 2 * args.batch] for t in data.tensors))
    loader = make_loader(data, args.batch, True, opts, seed=0)
    warm_loader = make_loader(warm, args.batch, True, opts, seed=0)
    eval_loader = make_loader(data, args.batch, False, opts)
    torch.manual_seed(0)
    init = build(name, NUM_CLASSES).to(opts.device, memory_format=opts.memory_format)
    criterion = nn.CrossEntropyLoss()
    cfg = TrainConfig()  # AdamW, lr 1e-3, weight decay 1e-4: the default fine-tuning optimizer

    def pipeline_train(model, optimizer, dl):
        return train_one_epoch(model, dl, criterion, optimizer, opts).count

    def pipeline_infer(model, dl):
        validate(model, dl, criterion, opts)
        return len(dl.dataset)

    def bare_train_(model, optimizer, dl):
        return bare_train(model, dl, criterion, optimizer, opts)

    def bare_infer_(model, dl):
        return bare_infer(model, dl, criterion, opts)

    train_loops = {"pipeline": pipeline_train, "bare": bare_train_}
    infer_loops = {"pipeline": pipeline_infer, "bare": bare_infer_}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        kind: {"pipeline": [], "bare": []} for kind in ("train", "inference")
    }
    for variant in ("pipeline", "bare"):  # warm-up: allocator, kernels, autotuning
        model = copy.deepcopy(init)
        train_loops[variant](model, build_optimizer(model.parameters(), cfg), warm_loader)
        infer_loops[variant](model, warm_loader)
    for repeat in range(args.repeats):
        order = ("pipeline", "bare") if repeat % 2 == 0 else ("bare", "pipeline")
        for variant in order:
            model = copy.deepcopy(init)
            optimizer = build_optimizer(model.parameters(), cfg)
            set_loader_epoch(loader, 0, repeat)  # both variants see the same batches in a round
            step = functools.partial(train_loops[variant], model, optimizer, loader)
            runs["train"][variant].append(measure(step, opts.device))
            infer = functools.partial(infer_loops[variant], model, eval_loader)
            runs["inference"][variant].append(measure(infer, opts.device))

    out: dict = {"parameters": count_parameters(init)}
    for kind, by_variant in runs.items():
        summary: dict = {
            variant: {
                "images_per_s": round(statistics.median(r["images_per_s"] for r in results), 2),
                "best_images_per_s": round(max(r["images_per_s"] for r in results), 2),
                "peak_mb": round(statistics.median(r["peak_mb"] for r in results), 1),
            }
            for variant, results in by_variant.items()
        }
        pipe, bare = summary["pipeline"], summary["bare"]
        summary["speed_ratio"] = round(pipe["best_images_per_s"] / bare["best_images_per_s"], 3)
        summary["speed_ratio_median"] = round(pipe["images_per_s"] / bare["images_per_s"], 3)
        out[kind] = summary
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--size", nargs=2, type=int, default=(256, 96), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="training batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (pipeline and bare alternate)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    opts = RunOptions(device=device, progress=False)
    result = {
        "device": torch.cuda.get_device_name(device) if use_cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": list(args.size),
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "autocast_bf16": opts.autocast,
        "channels_last": opts.memory_format == torch.channels_last,
        "load_average_1min": round(psutil.getloadavg()[0], 2),
        "models": {name: bench_model(name, args, opts) for name in args.models},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
