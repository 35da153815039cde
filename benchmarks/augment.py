"""Online augmentation cost in the training loop: the pipeline's single-threaded transform against the
plain torchvision pipeline on the process's threads; prints JSON.

Online augmentation (`augment.mode: online`, the demo's default) runs in the training process, one
image at a time, beside the model's intra-op threads. On one small image the hand-off between
threads costs more than the warp itself, so `bonescan.data.augment.build_transform` runs the
pipeline on one thread (`SingleThreaded`). This measures what that buys, on the same random images
and the same seeds, for:

* transform: the augmentation alone, milliseconds per image;
* loop: a training epoch's worth of batches (`bonescan.train.make_loader`, the demo's model, AdamW,
  cross-entropy), images/s.

"single" is the pipeline's transform, "threaded" the same `v2.Compose` called directly. The two
alternate over `--repeats` rounds; reported are the best (least disturbed) and the median of each,
and `speedup` = threaded time / single time of the best rounds (above 1: the pipeline is faster).

Usage: python benchmarks/augment.py [--size 256 96] [--images 160] [--batch 16] [--repeats 3]
       [--threads N] [--model soft_threshold_net]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bonescan.config import AugmentConfig
from bonescan.data.augment import build_transform
from bonescan.models import build as build_classifier
from bonescan.train import RunOptions, make_loader


class _Images(Dataset):
    """Random (1, H, W) images in [0, 1] with labels, transformed at every access (like ManifestDataset)."""

    def __init__(self, n: int, size: tuple[int, int], transform) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, *size, generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index].clone()), self.labels[index]


def _transform_ms(transform, image: torch.Tensor, n: int) -> float:
    torch.manual_seed(0)
    start = time.perf_counter()
    for _ in range(n):
        transform(image)
    return (time.perf_counter() - start) / n * 1000.0


def _loop_images_per_s(transform, args: argparse.Namespace, opts: RunOptions, workers: int = 0) -> float:
    torch.manual_seed(0)
    model = build_classifier(args.model, 3, in_chans=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opts = dataclasses.replace(opts, num_workers=workers)
    loader = make_loader(_Images(args.images, tuple(args.size), transform), args.batch, True, opts, seed=0)
    model.train()
    seen = 0
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", nargs=2, type=int, default=(256, 96), metavar=("H", "W"))
    parser.add_argument("--images", type=int, default=160, help="images per timed epoch")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--model", default="soft_threshold_net")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    single = build_transform(AugmentConfig())
    variants = {"single": single, "threaded": single.transform_}
    opts = RunOptions(device=torch.device("cpu"))
    image = torch.rand(1, *args.size)
    transform_ms: dict[str, list[float]] = {k: [] for k in variants}
    loop: dict[str, list[float]] = {k: [] for k in (*variants, "worker")}
    for name, transform in variants.items():  # warm-up: oneDNN primitives, allocator
        _transform_ms(transform, image, 10)
    for _ in range(args.repeats):
        for name, transform in variants.items():
            transform_ms[name].append(_transform_ms(transform, image, 200))
            loop[name].append(_loop_images_per_s(transform, args, opts))
        loop["worker"].append(_loop_images_per_s(single, args, opts, workers=1))
    result = {
        "benchmark": "online augmentation, single-threaded pipeline vs torchvision on the process's threads",
        "size": list(args.size),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "images_per_epoch": args.images,
        "transform_ms_per_image": {
            k: {"best": round(min(v), 3), "median": round(statistics.median(v), 3)} for k, v in transform_ms.items()
        },
        "loop_images_per_s": {
            k: {"best": round(max(v), 1), "median": round(statistics.median(v), 1)} for k, v in loop.items()
        },
    }
    result["transform_speedup"] = round(min(transform_ms["threaded"]) / min(transform_ms["single"]), 2)
    result["loop_speedup"] = round(max(loop["single"]) / max(loop["threaded"]), 2)
    result["worker_speedup"] = round(max(loop["worker"]) / max(loop["threaded"]), 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
