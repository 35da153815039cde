"""`bonescan plan`: params overrides derived from a fingerprint of the ingested data and of the machine.

nnU-Net's idea (Isensee et al. 2021): what can be derived from the data should not be a default
someone forgets to change. A dataset fingerprint (image counts per class and split, the native size
of a bounded sample of views) and a machine fingerprint (usable CPUs, load, CUDA memory) go in;
a `Plan` comes out: the classifier and GAN image sizes, the fine-tuning batch size, step budgets,
threads and devices, each with a one-line reason. It is written as dotted keys (what
`dvc exp run -S` takes) and checked against the typed config before it is written.

The rules are deliberately few and anchored in measurements of the demo on the 2-core CPU (README
"Measured", benchmarks/README.md): the whole pipeline in about 15 minutes at 256 x 96.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bonescan.config import (
    GAN_SIDE_MULTIPLE,
    AugmentConfig,
    BaseConfig,
    DatasetConfig,
    GanModelConfig,
    IngestConfig,
    Params,
    Size,
    TrainConfig,
    apply_overrides,
    override_text,
    parse_params,
)
from bonescan.data.manifest import read_manifest
from bonescan.dicom.read import read_views
from bonescan.intake import check_regular_file, iter_files
from bonescan.outputs import read_output_json
from bonescan.runtime import atomic_write, cpu_budget

__all__ = [
    "DatasetFingerprint",
    "MachineFingerprint",
    "Plan",
    "PlanEntry",
    "dataset_fingerprint",
    "dvc_command",
    "machine_fingerprint",
    "make_plan",
    "native_view_sizes",
    "plan_augmentation",
    "plan_batch_size",
    "plan_gan_size",
    "plan_image_size",
    "plan_max_steps",
    "render_plan",
    "validate_plan",
    "write_plan",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the reference run

# `make demo` on the 2-core CPU, README "Measured" (2026-12-01): the whole pipeline in ~15 min.
REFERENCE_CPUS = 2
REFERENCE_SIZE: Size = BaseConfig.model_fields["image_size"].default  # (256, 96): a 1-3 cm lesion spans 3-4 px
REFERENCE_GAN_SIZE: Size = GanModelConfig.model_fields["image_size"].default  # (128, 48)
CPU_BATCH: int = TrainConfig.model_fields["batch_size"].default  # 16, the batch benchmarks/train.py measured
# The demo's counts move by a few per cent with the anonymization key (it decides the split): a budget
# 20 % above the measured run keeps the demo's own plan from cutting it.
BUDGET_SLACK = 1.2
CLF_REFERENCE_IMAGES = 15 * 746  # fine-tuning: 15 epochs of 746 images in 3.3 min (58 images/s at 256 x 96)
GAN_REFERENCE_IMAGES = 162 * 8  # GAN fine-tuning: 162 MU-ACGAN steps of 8 images in 2.5 min at 128 x 48

MIN_FILL = 0.5  # padding carries no information but costs as much as image: at most half of the input
SIDE_MULTIPLE = 8  # classifier sides: halve cleanly three times (at most 7 px of upsampling when rounding)
GAN_MIN_SIDE = 32  # a 16 px side leaves the GANs' four halvings a 1 x 1 map

# CUDA batch: di_mobilenet, the most memory-hungry model measured, peaked at 826 MB for a batch of 16
# at 256 x 96 in training (benchmarks/README.md, fp32 on the CPU; bf16 autocast on CUDA needs less).
TRAIN_BYTES_PER_PIXEL = 826e6 / (16 * 256 * 96)  # ~2.1 kB per input pixel
GPU_MEMORY_SHARE = 0.5  # of device 0's memory, for activations: the rest for weights, optimizer, cache
MAX_GPU_BATCH = 256  # the batch benchmarks/gpu_throughput.py runs (multiscale at 224 x 224)
MIN_STEPS_PER_EPOCH = 32  # the demo's fine-tuning takes 47 steps an epoch; fewer make a coarse schedule


# --------------------------------------------------------------------------- fingerprints


@dataclass(frozen=True)
class DatasetFingerprint:
    """What the ingested dataset holds, counted from its manifest and a sample of its files.

    Attributes:
        per_split: real images per split and class ({"": {...}} before `bonescan split` has run).
        native_size: per-side median (H, W) of the sampled views at their finer pixel spacing;
            None when no file could be read.
        views_sampled / files_sampled / files_unreadable: how the native size was measured.
        ingested_size: (H, W) of the PNGs ingest wrote (the image size of that run).
        synthetic_train: admitted GAN images in the synthetic manifest; None before `synthesize`.
        files_seen / quarantined: from the ingest summary (reports_dir/ingest.json), when present.
    """

    dataset: str
    format: str
    classes: tuple[str, ...]
    per_split: dict[str, dict[str, int]]
    patients: int
    studies: int
    native_size: Size | None = None
    views_sampled: int = 0
    files_sampled: int = 0
    files_unreadable: int = 0
    ingested_size: Size | None = None
    synthetic_train: int | None = None
    files_seen: int | None = None
    quarantined: int | None = None

    @property
    def images(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.per_split.values())

    @property
    def split_done(self) -> bool:
        return "" not in self.per_split

    def train_images(self, train_ratio: float) -> int:
        """Real train images: counted after the split, else the share `split.ratios.train` will give."""
        if self.split_done:
            return sum(self.per_split.get("train", {}).values())
        return round(self.images * train_ratio)

    def describe(self) -> str:
        train = f"{sum(self.per_split.get('train', {}).values())} train" if self.split_done else "not split yet"
        native = f"native {_x(self.native_size)}" if self.native_size else "native size unknown"
        if self.files_sampled:
            native += f" (median of {self.views_sampled} views in {self.files_sampled} sampled files)"
        ingested = f", ingested at {_x(self.ingested_size)}" if self.ingested_size else ""
        return f"{self.images} real images of {len(self.classes)} classes ({train}), {self.patients} patients; {native}{ingested}"


@dataclass(frozen=True)
class MachineFingerprint:
    """Where the pipeline would run: usable CPUs, their load, and CUDA device 0."""

    cpus: int
    load_average: float | None = None  # 1-minute load average; None where the OS has none
    cuda_devices: int = 0
    cuda_name: str | None = None
    cuda_memory_gib: float | None = None  # total memory of device 0

    @property
    def cuda(self) -> bool:
        return self.cuda_devices > 0

    def describe(self) -> str:
        load = f", load average {self.load_average:.1f}" if self.load_average is not None else ""
        gpu = (f"{self.cuda_devices} CUDA device(s) ({self.cuda_name}, {self.cuda_memory_gib:.0f} GiB)"
               if self.cuda else "no CUDA")  # fmt: skip
        return f"{self.cpus} usable CPUs{load}, {gpu}"


def machine_fingerprint() -> MachineFingerprint:
    """This machine: CPUs from the affinity mask and cgroup quota (`runtime.cpu_budget`), CUDA via torch."""
    import torch

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    if not torch.cuda.is_available():
        return MachineFingerprint(cpu_budget(), load)
    props = torch.cuda.get_device_properties(0)
    return MachineFingerprint(cpu_budget(), load, torch.cuda.device_count(), props.name, props.total_memory / 2**30)


def _sample(items: list, n: int) -> list:
    """`n` items spread evenly over `items` (all of them when there are fewer): deterministic."""
    if len(items) <= n:
        return items
    return [items[i * len(items) // n] for i in range(n)]


def native_view_sizes(
    dataset: DatasetConfig, ingest: IngestConfig, sample: int = 64, root: Path = Path(".")
) -> tuple[list[Size], int, int]:
    """(H, W) of every view of up to `sample` files, read through the project's own reader; nothing is written.

    DICOM: the anonymized files ingest kept (`interim_dir/dicom`), never the raw export, so no
    identifying header is opened. Images: the raw files with an accepted extension. A view's size is
    taken at its finer pixel spacing, as `resize_pad` sees its physical aspect.

    Returns:
        (view sizes, files sampled, how many of them could not be read).
    """
    if dataset.format == "dicom":
        base = root / dataset.interim_dir / "dicom"
        files = sorted(base.glob("*.dcm")) if base.is_dir() else []
    else:
        base = root / dataset.raw_dir
        files = [base / rel for rel in iter_files(base)
                 if Path(rel).suffix.lower() in ingest.image_extensions] if base.is_dir() else []  # fmt: skip
    sizes: list[Size] = []
    unreadable = 0
    chosen = _sample(files, sample)
    for path in chosen:
        try:
            check_regular_file(path, base, ingest.max_pixel_bytes)
            views = read_views(path, dataset.split_views, max_bytes=ingest.max_pixel_bytes)
        except Exception:  # one unreadable file only shrinks the sample (ingest quarantined it too)
            unreadable += 1
            continue
        for view in views:
            h, w = view.pixels.shape
            row_mm, col_mm = view.spacing or (1.0, 1.0)
            finer = min(row_mm, col_mm)
            sizes.append((round(h * row_mm / finer), round(w * col_mm / finer)))
    return sizes, len(chosen), unreadable


def _png_size(path: Path) -> Size | None:
    try:
        with Image.open(path) as img:  # the header only
            width, height = img.size
    except OSError:
        return None
    return height, width


def dataset_fingerprint(name: str, params: Params, *, sample: int = 64, root: Path = Path(".")) -> DatasetFingerprint:
    """Count the ingested dataset `name` and measure the native size of a sample of its files.

    Reads the split manifest (`datasets.<name>.out_dir/manifest.csv`), or ingest's own before the
    split has run, the ingest summary when present and, for the dataset the GAN fine-tunes on, the
    synthetic manifest. Raw inputs are only read.

    Raises:
        FileNotFoundError: the dataset has not been ingested (names the manifest and the command).
    """
    ds = params.dataset(name)
    manifest_path = root / params.manifest(name)
    unsplit = root / ds.interim_dir / "manifest.csv"
    if manifest_path.is_file():
        manifest = read_manifest(manifest_path)
    elif unsplit.is_file():
        manifest = read_manifest(unsplit)
    else:
        raise FileNotFoundError(
            f"{params.manifest(name)}: dataset {name!r} has no manifest yet; run `bonescan ingest --dataset {name}` "
            f"(then `bonescan split --dataset {name}`) first"
        )
    real = manifest[~manifest["synthetic"]]
    per_split = {
        split: {cls: int((rows["label"] == cls).sum()) for cls in ds.classes}
        for split, rows in real.groupby("split", sort=True)
    }
    summary = read_output_json(root / ds.reports_dir / "ingest.json")
    synthetic = None
    if params.gan.finetune.dataset == name and (root / params.synthetic_manifest).is_file():
        rows = read_manifest(root / params.synthetic_manifest)
        synthetic = int((rows["split"] == "train").sum())
    sizes, sampled, unreadable = native_view_sizes(ds, params.ingest, sample, root)
    native = tuple(int(round(v)) for v in np.median(np.asarray(sizes), axis=0)) if sizes else None
    return DatasetFingerprint(
        dataset=name, format=ds.format, classes=tuple(ds.classes), per_split=per_split,
        patients=int(real["patient_id"].nunique()), studies=int(real["study_id"].nunique()),
        native_size=native, views_sampled=len(sizes), files_sampled=sampled, files_unreadable=unreadable,
        ingested_size=_png_size(root / real["path"].iloc[0]) if len(real) else None,
        synthetic_train=synthetic,
        files_seen=summary.get("files_seen") if summary else None,
        quarantined=summary.get("quarantined") if summary else None,
    )  # fmt: skip


# --------------------------------------------------------------------------- rules


def _x(size: Size | None) -> str:
    return f"{size[0]} x {size[1]}" if size else "?"


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, math.ceil(value / multiple - 1e-9) * multiple)


def plan_image_size(native: Size | None, model_min: Size = (1, 1), reference: Size = REFERENCE_SIZE) -> tuple[Size, str]:
    """The classifier input (H, W): the reference's pixels, in the data's shape, never above its native size.

    1. Start from the reference (the demo's 256 x 96, ~15 min on 2 CPUs). The input resolution decides
       what the model can see and which runs compare, so it is the same on every machine; a GPU buys
       batch and steps (raise the size by hand to study resolution).
    2. If the native view, fitted into it with its aspect kept, would fill less than half of it
       (`MIN_FILL`), reshape it to the native aspect at the same pixel count.
    3. If the native view is smaller than that box, shrink the box to the native size: `resize_pad`
       never gains information by upsampling (28 x 28 stays 28 x 28, not 256 x 96).
    4. Round each side up to a multiple of 8, then raise it to the model's minimum input.
    """
    ref_h, ref_w = reference
    if native is None:
        size = tuple(max(s, m) for s, m in zip(reference, model_min, strict=True))
        return size, f"native size unknown (no readable file): the reference {_x(reference)}"
    h, w = native
    fit = min(ref_h / h, ref_w / w)
    fill = (h * fit) * (w * fit) / (ref_h * ref_w)
    box = (float(ref_h), float(ref_w))
    steps = []
    if fill < MIN_FILL:
        area = ref_h * ref_w
        box = (math.sqrt(area * h / w), math.sqrt(area * w / h))
        steps.append(f"in {_x(reference)} it would be {1 - fill:.0%} padding, so reshaped to its aspect")
    scale = min(box[0] / h, box[1] / w)
    if scale > 1:
        box = (box[0] / scale, box[1] / scale)
        steps.append(f"capped at the native size (no {scale:.1f}x upsampling)")
    size = tuple(_round_up(side, SIDE_MULTIPLE) for side in box)
    raised = tuple(max(s, m) for s, m in zip(size, model_min, strict=True))
    if raised != size:
        steps.append(f"raised to the model's minimum input {_x(model_min)}")
    if not steps:
        steps.append(f"the reference {_x(reference)} fits it with {1 - fill:.0%} padding: kept")
    return raised, f"native {_x(native)}: " + "; ".join(steps)


def plan_gan_size(image_size: Size, machine: MachineFingerprint, judge_min: Size = (1, 1)) -> tuple[Size, str]:
    """The GAN resolution (H, W), sides multiples of 16 (synthesize resizes its images to `image_size`).

    CUDA: the classifier's size, as the paper preset trains. CPU: half of it per side, as the demo
    does (128 x 48 for 256 x 96): MU-ACGAN ran 21 images/s at 128 x 48 and 5.6 at 256 x 96 (batch 8,
    benchmarks/README.md), so the full size would cost ~4x; not below 32 px a side where the
    classifier's side allows. Never below the quality judge's (`gan.quality.classifier`) minimum.
    """
    full = tuple(_round_up(side, GAN_SIDE_MULTIPLE) for side in image_size)
    if machine.cuda:
        size, why = full, f"CUDA: the classifier's {_x(image_size)} rounded up to multiples of {GAN_SIDE_MULTIPLE}"
    else:
        size = tuple(max(_round_up(side / 2, GAN_SIDE_MULTIPLE), min(f, GAN_MIN_SIDE))
                     for side, f in zip(image_size, full, strict=True))  # fmt: skip
        why = (f"CPU: half the classifier's {_x(image_size)} per side (full size costs MU-ACGAN ~4x), "
               f"multiples of {GAN_SIDE_MULTIPLE}, at least {GAN_MIN_SIDE}")  # fmt: skip
    judged = tuple(_round_up(max(s, m), GAN_SIDE_MULTIPLE) for s, m in zip(size, judge_min, strict=True))
    if judged != size:
        why += f"; raised to the quality judge's minimum input {_x(judge_min)}"
    return judged, why


def _pow2_floor(value: float) -> int:
    return 2 ** int(math.floor(math.log2(value))) if value >= 1 else 1


def plan_batch_size(machine: MachineFingerprint, image_size: Size, images_per_epoch: int) -> tuple[int, str]:
    """Fine-tuning images per step and process.

    CPU: 16, the batch the CPU figures were measured at. CUDA: the largest power of two within half
    of device 0's memory at ~2.1 kB of training activations per input pixel (di_mobilenet, the
    hungriest model measured), at most 256, and small enough to keep 32 steps an epoch; never
    below the CPU's 16.
    """
    if not machine.cuda:
        return CPU_BATCH, f"CPU: {CPU_BATCH}, the batch of the measured CPU figures (benchmarks/train.py)"
    pixels = image_size[0] * image_size[1]
    memory = GPU_MEMORY_SHARE * (machine.cuda_memory_gib or 0) * 2**30 / (TRAIN_BYTES_PER_PIXEL * pixels)
    limits = {
        f"half of {machine.cuda_memory_gib or 0:.0f} GiB at {_x(image_size)}": _pow2_floor(memory),
        "the largest measured batch": MAX_GPU_BATCH,
        f"{MIN_STEPS_PER_EPOCH} steps an epoch of {images_per_epoch} images": _pow2_floor(
            images_per_epoch / MIN_STEPS_PER_EPOCH
        ),
    }
    bound = min(limits, key=limits.get)
    batch = max(CPU_BATCH, limits[bound])
    why = f"CUDA: the largest power of two within {bound} ({limits[bound]})"
    return batch, why + (f", but not below the CPU's {CPU_BATCH}" if batch > limits[bound] else "")


def _cost_ratio(pixels: int, reference_pixels: int) -> float:
    """Cost of one image at `pixels` relative to the reference size.

    Linear above the reference (MU-ACGAN: 4x the pixels cost 3.8x); the square root below, because
    fixed per-image costs stop shrinking (soft_threshold_net: 12x fewer pixels ran 4.2x faster;
    the square root says 3.5x, so the budget errs low).
    """
    ratio = pixels / reference_pixels
    return ratio if ratio >= 1 else math.sqrt(ratio)


def cpu_budget_images(reference_images: int, reference_size: Size, image_size: Size, cpus: int) -> int:
    """Images a stage may process on `cpus` CPUs at `image_size` for the demo's time on 2 CPUs (+20 %).

    Throughput is assumed proportional to the usable CPUs (measured only on 2).
    """
    ratio = _cost_ratio(image_size[0] * image_size[1], reference_size[0] * reference_size[1])
    return int(reference_images * BUDGET_SLACK / ratio * cpus / REFERENCE_CPUS)


def plan_max_steps(
    images_per_epoch: int, epochs: int, batch: int, budget_images: int | None, *, whole_epochs: bool
) -> tuple[int | None, str]:
    """A step budget: null when every epoch fits `budget_images`, else the steps the budget buys.

    Args:
        budget_images: images the budget allows; None: no measured throughput (all epochs).
        whole_epochs: the stage rounds max_steps up to whole epochs (the classifier) or stops mid-epoch (the GAN).
    """
    per_epoch = max(1, math.ceil(images_per_epoch / batch))
    total = epochs * per_epoch
    if budget_images is None:
        return None, f"no measured CUDA throughput (benchmarks/README.md): all {epochs} epochs ({total} steps)"
    budget = max(1, budget_images // batch)
    if total <= budget:
        return None, f"all {epochs} epochs x {per_epoch} steps = {total} fit the budget of {budget} steps"
    done = min(epochs, math.ceil(budget / per_epoch)) if whole_epochs else budget / per_epoch
    shown = f"{done} of {epochs} epochs" if whole_epochs else f"{done:.1f} of {epochs} epochs"
    return budget, f"{epochs} epochs x {per_epoch} steps = {total} exceed the budget: {budget} steps ({shown})"


def plan_threads(machine: MachineFingerprint) -> tuple[int | None, str]:
    """base.threads: null (the usable CPUs, shared among torchrun's processes) unless the machine is busy.

    With a load average at or above the usable CPUs, one thread per process: two OpenMP threads
    fighting other jobs for 2 cores ran 4x slower and erratically (benchmarks/README.md, train.py).
    """
    if machine.load_average is not None and machine.load_average >= machine.cpus:
        return 1, (f"load average {machine.load_average:.1f} on {machine.cpus} usable CPUs: one thread per "
                   "process (threads fighting other jobs ran 4x slower)")  # fmt: skip
    return None, f"null: torch uses the {machine.cpus} usable CPUs (affinity, cgroup quota), shared among torchrun's processes"


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlanEntry:
    """One derived params value: its dotted key, the value (as YAML writes it) and the reason."""

    key: str
    value: Any
    reason: str


@dataclass(frozen=True)
class Plan:
    """Params overrides for one dataset, derived from its fingerprint and the machine's."""

    dataset: str
    data: DatasetFingerprint
    machine: MachineFingerprint
    entries: tuple[PlanEntry, ...] = field(default_factory=tuple)

    def overrides(self) -> dict[str, Any]:
        """Dotted key -> value, in plan order."""
        return {entry.key: entry.value for entry in self.entries}

    def __getitem__(self, key: str) -> Any:
        return self.overrides()[key]


def finetune_images(params: Params, data: DatasetFingerprint) -> tuple[int, str]:
    """Images of one fine-tuning epoch: real train + admitted synthetic, x augment.factor when offline."""
    real = data.train_images(params.split.ratios["train"])
    synthetic = (data.synthetic_train or 0) if params.augment.include_synthetic else 0
    factor = params.augment.factor if params.augment.mode == "offline" else 1
    parts = f"{real} real + {synthetic} synthetic" + (f", x{factor} offline" if factor > 1 else "")
    if params.augment.include_synthetic and data.synthetic_train is None:
        parts += "; synthesize has not run, so its images are not counted"
    return (real + synthetic) * factor, parts


SMALL_IMAGE_SIDE = 64  # native sides up to this: no traditional augmentation (measured on BreastMNIST, 28 px)


def plan_augmentation(dataset: DatasetConfig, native: Size | None, augment: AugmentConfig) -> list[PlanEntry]:
    """The augmentation defaults that model bone scans, switched off where the data are not bone scans.

    Poisson count noise is a model of a scintigram's counting statistics: other formats and
    modalities get none. Small images get no traditional augmentation: on BreastMNIST (28 x 28
    ultrasound, 3 paired seeds, benchmarks/README.md "real.py") online rotation, shift and flip cost
    0.053 test AUC and 0.107 balanced accuracy against the original images; the demo's 256 x 96
    bone scans gain from it, so larger images keep `augment.mode`.
    """
    entries = []
    counts = dataset.format == "dicom" and "NM" in dataset.modalities
    if not counts and augment.poisson_p > 0:
        kind = f"DICOM {'/'.join(dataset.modalities)}" if dataset.format == "dicom" else f"{dataset.format} files"
        entries.append(PlanEntry("augment.poisson_p", 0.0,
                                 f"{kind} are not count images: Poisson count noise models scintigraphy (NM)"))  # fmt: skip
    if native is not None and max(native) <= SMALL_IMAGE_SIDE and augment.mode != "none":
        entries.append(PlanEntry(
            "augment.mode", "none",
            f"native {_x(native)} (<= {SMALL_IMAGE_SIDE} px a side): on BreastMNIST's 28 x 28 images traditional "
            "augmentation cost 0.053 test AUC and 0.107 balanced accuracy (3 paired seeds, benchmarks/README.md)",
        ))  # fmt: skip
    return entries


def make_plan(
    params: Params,
    data: DatasetFingerprint,
    machine: MachineFingerprint,
    min_size: Callable[[str], Size] | None = None,
) -> Plan:
    """Derive the overrides for `data.dataset` on `machine` (a pure function of its inputs).

    The classifier keys are planned for the target dataset, the GAN keys for the dataset the GAN
    fine-tunes on (`gan.finetune.dataset`); another dataset gets its own `datasets.<name>.image_size`
    so that the target's size does not move.

    Args:
        min_size: model name -> its minimum (H, W) input; default `bonescan.models.min_input_size`.
    """
    if min_size is None:
        from bonescan.models import min_input_size as min_size
    name = data.dataset
    entries: list[PlanEntry] = []
    size_key = params.image_size_key(name) if name == "target" else f"datasets.{name}.image_size"
    size, why = plan_image_size(data.native_size, min_size(params.clf.model))
    if data.ingested_size and tuple(data.ingested_size) != size:
        why += f" (ingested at {_x(data.ingested_size)}: ingest runs again)"
    entries.append(PlanEntry(size_key, list(size), why))

    if params.gan.finetune.dataset == name:
        gan_size, why = plan_gan_size(size, machine, min_size(params.gan.quality.classifier))
        entries.append(PlanEntry("gan.model.image_size", list(gan_size), why))
        real = data.train_images(params.split.ratios["train"])
        budget = None if machine.cuda else cpu_budget_images(GAN_REFERENCE_IMAGES, REFERENCE_GAN_SIZE, gan_size, machine.cpus)
        steps, why = plan_max_steps(real, params.gan.finetune.epochs, params.gan.train.batch_size, budget,
                                    whole_epochs=False)  # fmt: skip
        entries.append(PlanEntry("gan.finetune.max_steps", steps, f"{real} real train images: {why}"))

    if name == "target":
        images, counted = finetune_images(params, data)
        batch, why = plan_batch_size(machine, size, images)
        entries.append(PlanEntry("clf.finetune.batch_size", batch, why))
        budget = None if machine.cuda else cpu_budget_images(CLF_REFERENCE_IMAGES, REFERENCE_SIZE, size, machine.cpus)
        steps, why = plan_max_steps(images, params.clf.finetune.epochs, batch, budget, whole_epochs=True)
        entries.append(PlanEntry("clf.finetune.max_steps", steps, f"{images} images an epoch ({counted}): {why}"))
        entries += plan_augmentation(params.datasets[name], data.native_size, params.augment)

    threads, why = plan_threads(machine)
    entries.append(PlanEntry("base.threads", threads, why))
    device = "cuda" if machine.cuda else "cpu"
    why = ("CUDA present: fails loudly on a machine without one instead of running on its CPU" if machine.cuda
           else "no CUDA device")  # fmt: skip
    entries += [PlanEntry("clf.device", device, why), PlanEntry("gan.train.device", device, why)]
    return Plan(name, data, machine, tuple(entries))


# --------------------------------------------------------------------------- output


def validate_plan(raw_params: Mapping[str, Any], plan: Plan, source: str = "params.yaml") -> Params:
    """The params with the plan applied, through the typed config: unknown keys and bad values fail.

    Raises:
        bonescan.config.ConfigError: naming the key.
    """
    return parse_params(apply_overrides(raw_params, plan.overrides()), source=f"{source} with the plan's overrides")


def dvc_command(plan: Plan) -> str:
    """`dvc exp run -S ++key=value ...`: the plan as a DVC experiment (`++` also sets keys params.yaml lacks)."""
    args = ["dvc", "exp", "run"]
    for key, value in plan.overrides().items():
        args += ["-S", f"++{key}={override_text(value)}"]
    return shlex.join(args)


def render_plan(plan: Plan, params_file: str = "params.yaml") -> str:
    """The plan as YAML of dotted keys, each under a comment with its reason, headed by the fingerprints."""
    lines = [
        f"# bonescan plan for dataset {plan.dataset!r}: overrides of {params_file} as dotted keys.",
        f"# data: {plan.data.describe()}",
        f"# machine: {plan.machine.describe()}",
        "# Run it as an experiment (or copy the values into params.yaml):",
        f"#   {dvc_command(plan)}",
        "",
    ]
    for entry in plan.entries:
        lines += [f"# {entry.reason}", f"{entry.key}: {override_text(entry.value)}"]
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, path: str | Path, params_file: str = "params.yaml") -> Path:
    """Write `render_plan` atomically."""
    return atomic_write(path, render_plan(plan, params_file))
