"""GAN training throughput and peak memory for both architectures; prints JSON.

For every (arch, batch size, image size) it runs the real training step of `bonescan.gan.train`
(DiffAugment on real and fake, a D phase and a G phase with RAdam, the EMA update) on random
images in [-1, 1], in a fresh subprocess so that each configuration's peak memory is its own:

* images/s: real images per second over `--steps` timed steps after `--warmup` untimed ones;
* CPU: peak RSS of the subprocess (`ru_maxrss`) and its growth over the RSS measured right before
  the first step (models, optimisers and the batch built);
* CUDA: `torch.cuda.max_memory_allocated` over the steps (bf16 autocast, channels_last, as training).

Widths (`z_dim`, `base_channels`, ...) come from `gan.model` of the params file (or the paper preset
with `--preset paper`); the image sizes default to that section's GAN size and 256 x 96.

Usage: python benchmarks/gan.py [--device cpu|cuda|auto] [--batch-sizes 2,8] [--sizes 128x48,256x96]
       [--archs mu_acgan,acgan] [--steps 3] [--warmup 1] [--threads N] [--params params.yaml]
       [--preset demo|paper]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _load_gan(params_path: Path, preset: str | None):
    import yaml

    from bonescan.config import parse_params

    raw = yaml.safe_load(params_path.read_text())
    if preset is not None:
        raw.setdefault("gan", {})["preset"] = preset
    params = parse_params(raw)
    return params, tuple(params.gan.model.image_size or params.base.image_size)


def run_one(args: argparse.Namespace) -> dict[str, object]:
    """One configuration, in this process (called in a subprocess by `main`)."""
    import torch

    from bonescan.gan import count_parameters
    from bonescan.gan.train import train_step, training_parts
    from bonescan.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    params, _ = _load_gan(args.params, args.preset)
    device = resolve_device(args.device, "--device")
    size = _size(args.size)
    num_classes = len(params.dataset(params.gan.finetune.dataset).classes)
    torch.manual_seed(0)
    train_cfg = params.gan.train
    parts = training_parts(args.arch, num_classes, size, params.gan.model, train_cfg, device)  # as training
    g, d, ema, memory_format = parts.g, parts.d, parts.ema, parts.memory_format
    noise_gen, aug_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    real = (torch.rand(args.batch_size, 1, *size) * 2 - 1).to(device, memory_format=memory_format)
    y_real = torch.randint(0, num_classes, (args.batch_size,)).to(device)

    def step() -> None:
        train_step(
            g, d, parts.opt_g, parts.opt_d, real, y_real, num_classes, parts.augment, noise_gen, aug_gen, device,
            d_fake_class_loss=train_cfg.d_fake_class_loss, mode_seeking=train_cfg.mode_seeking,
        )  # fmt: skip
        if ema is not None:
            ema.update()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result: dict[str, object] = {
        "arch": args.arch,
        "batch_size": args.batch_size,
        "image_size": list(size),
        "device": str(device),
        "generator_params": count_parameters(g),
        "discriminator_params": count_parameters(d),
        "steps": args.steps,
        "seconds_per_step": round(seconds / args.steps, 4),
        "images_per_s": round(args.batch_size * args.steps / seconds, 2),
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_rss_mib"] = round(peak, 1)
        result["training_rss_growth_mib"] = round(peak - rss_before, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--archs", default="mu_acgan,acgan")
    parser.add_argument("--batch-sizes", default="2,8", help="comma-separated; Yu et al. 2023 train with 2")
    parser.add_argument("--sizes", default=None, help="comma-separated HxW; default: gan.model size,256x96")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--preset", default=None, choices=["demo", "paper"], help="override gan.preset")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a subprocess: one config
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return

    params, gan_size = _load_gan(args.params, args.preset)
    sizes = args.sizes.split(",") if args.sizes else [f"{gan_size[0]}x{gan_size[1]}", "256x96"]
    sizes = list(dict.fromkeys(sizes))
    common = [
        f"--device={args.device}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--threads={args.threads}",
        f"--params={args.params}",
    ] + ([f"--preset={args.preset}"] if args.preset else [])
    results = []
    for arch in args.archs.split(","):
        for size in sizes:
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    f"--arch={arch}",
                    f"--size={size}",
                    f"--batch-size={batch_size}",
                    *common,
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    import torch

    print(
        json.dumps(
            {
                "benchmark": "gan_train_step",
                "torch": torch.__version__,
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "preset": params.gan.preset,
                "model": params.gan.model.model_dump(exclude={"image_size"}),
                "diffaugment": params.gan.train.diffaugment,
                "ema": params.gan.train.ema,
                "mode_seeking": params.gan.train.mode_seeking,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
