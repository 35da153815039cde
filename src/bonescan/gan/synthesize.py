"""`synthesize` stage: balance the target train split with generated images, behind a quality gate.

Per class, the fine-tuned generator's EMA copy produces the number of images that brings the class to
the majority count of the real train split (Yu et al.'s balancing) or `gan.synthesize.count`. Before
anything is written every trained architecture is measured (`bonescan.gan.quality`; what concerns
only the real images is measured once); only classes of `gan.synthesize.arch` (`auto`: the gate's
choice, `quality.choose_arch`) that pass the gate are written, as 16-bit PNGs at `base.image_size`
under `<out_dir>/images/` with manifest rows (synthetic=true, split=train,
source="<arch>:<generator digest[:12]>:seed<seed>", patient_id/study_id "synthetic-<image_id>"). The
digest (`generator_digest`) covers the sampling weights, not the file's training history, so a
deterministic re-run writes the same ids.
A run with nothing to write still writes a valid, empty manifest, so downstream stages always run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from bonescan.config import Params, Size
from bonescan.data.dataset import ManifestDataset, load_split
from bonescan.data.manifest import ManifestRow, ManifestWriter, read_manifest
from bonescan.dicom.read import write_png16
from bonescan.gan import quality
from bonescan.gan.weights import GanRun, build_from_weights, generator_digest, load_weights, training_rows
from bonescan.progress import progress
from bonescan.runtime import atomic_write, atomic_write_json

__all__ = ["SynthesisResult", "generate", "needed_counts", "run_synthesize"]

log = logging.getLogger(__name__)


def needed_counts(
    train_labels: Sequence[str], classes: Sequence[str], count: int | None = None
) -> dict[str, int]:
    """Images to generate per class: `count` each, or what brings every class to the majority count."""
    present = {name: 0 for name in classes}
    for label in train_labels:
        if label not in present:
            raise ValueError(f"train label {label!r} is not one of the classes {list(classes)}")
        present[label] += 1
    if count is not None:
        return {name: count for name in classes}
    majority = max(present.values(), default=0)
    return {name: majority - n for name, n in present.items()}


@torch.inference_mode()
def generate(g: torch.nn.Module, label: int, n: int, seed: int, batch_size: int = 32) -> torch.Tensor:
    """`n` images of class index `label` from a generator, as (n, C, H, W) in [0, 1] on CPU.

    The noise comes from a generator seeded with `seed` alone, so a class's images do not depend on
    how many images other classes get.
    """
    g.eval()
    noise = torch.Generator().manual_seed(seed)
    device = next(g.parameters()).device
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = torch.randn(b, g.z_dim, generator=noise).to(device)
        y = torch.full((b,), label, dtype=torch.long, device=device)
        out.append(((g(z, y).float() + 1) / 2).clamp(0, 1).cpu())
    if not out:
        return torch.empty(0, g.in_chans, *g.image_size)
    return torch.cat(out)


def _class_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _resize(images: torch.Tensor, size: Size) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W) bilinear (anti-aliased when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(size) or len(images) == 0:
        return images
    return F.interpolate(
        images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)


def _load_images(
    rows: pd.DataFrame, classes: Sequence[str], size: Size, root: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images of `rows` at `size`: ((N, 1, H, W) in [0, 1], labels (N,))."""
    if rows.empty:
        return torch.empty(0, 1, *size), torch.empty(0, dtype=torch.long)
    ds = ManifestDataset(rows, classes, root=root)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return _resize(images, size), torch.tensor(ds.labels, dtype=torch.long)


@dataclass(frozen=True)
class SynthesisResult:
    """What the stage wrote and decided."""

    manifest: Path
    report: Path
    needed: dict[str, int]
    written: dict[str, int]
    admitted: dict[str, bool]


def _finite(obj: object) -> object:
    """NaN -> None, so the report is strict JSON (DVC metrics, other tools)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def run_synthesize(params: Params, *, root: Path = Path(".")) -> SynthesisResult:
    """Measure every trained architecture, gate the classes, write the admitted images and the report."""
    gan = params.gan
    target = params.dataset(gan.finetune.dataset)
    classes = list(target.classes)
    manifest = read_manifest(root / target.out_dir / "manifest.csv")
    train = training_rows(manifest)
    val = load_split(manifest, "val", include_synthetic=False)
    weights = {arch: GanRun.under(gan, "finetune", arch, root).weights for arch in gan.archs}
    states = {arch: load_weights(path) for arch, path in weights.items()}
    for arch, state in states.items():
        if list(state["classes"]) != classes:
            raise ValueError(
                f"{weights[arch]} was trained for classes {state['classes']}, params say {classes}"
            )
    needed = needed_counts(list(train["label"]), classes, gan.synthesize.count)
    log.info("images needed per class: %s", needed)

    qcfg = gan.quality
    gan_size = tuple(next(iter(states.values()))["image_size"])

    real_train, y_train = _load_images(train, classes, gan_size, root)
    real_val, y_val = _load_images(val, classes, gan_size, root)
    # the judge and the real images' diversity are the same for every architecture: measured once
    reference = quality.real_reference(real_train, y_train, real_val, y_val, len(classes), qcfg)
    log.info("%s trained on %d real images: val accuracy %.3f (members %s), recall per class %s", qcfg.classifier,
             reference.judge_train_images, reference.val_accuracy,
             [round(a, 3) for a in reference.val_accuracy_members],
             dict(zip(classes, (round(r, 3) for r in reference.val_recall), strict=True)))  # fmt: skip

    report: dict = {
        "ssim_variant": quality.SSIM_VARIANT,
        "image_size": list(gan_size),
        "classifier": {
            "name": qcfg.classifier,
            "epochs": qcfg.classifier_epochs,
            "members": qcfg.classifier_members,
            "judge_train_images": reference.judge_train_images,
            "real_val_accuracy": reference.val_accuracy,
            "real_val_accuracy_members": list(reference.val_accuracy_members),
            "real_val_accuracy_sd": quality.stdev(reference.val_accuracy_members),
            "real_val_recall": dict(zip(classes, reference.val_recall, strict=True)),
        },
        "gate": {
            "min_fidelity": qcfg.min_fidelity,
            "min_label_lift": qcfg.min_label_lift,
            "max_diversity_ssim": qcfg.max_diversity_ssim,
            "max_diversity_margin": qcfg.max_diversity_margin,
            "min_tstr_lift": qcfg.min_tstr_lift,
            "diversity_pairs": qcfg.diversity_pairs,
            "judge_images_per_class": qcfg.judge_images_per_class,
        },
        "archs": {},
    }
    generators = {}
    for arch, state in states.items():
        g, _ = build_from_weights(state)
        generators[arch] = g
        digest = generator_digest(state)
        n = max(qcfg.samples_per_class, qcfg.tstr_samples_per_class)  # the measured ones are the first
        samples = [generate(g, k, n, _class_seed(qcfg.seed, c)) for k, c in enumerate(classes)]
        entry = quality.measure_arch(samples, classes, reference, real_train, y_train, real_val, y_val, qcfg)
        for name, q in entry["classes"].items():
            log.info("%s %s: %s", arch, name, q["reason"])
        report["archs"][arch] = {"generator": f"{arch}:{digest[:12]}", "generator_sha256": digest, **entry}

    choice = gan.synthesize.arch
    arch = quality.choose_arch(report["archs"], needed) if choice == "auto" else choice
    rule = quality.ARCH_RULE if choice == "auto" else "gan.synthesize.arch"
    log.info("synthesis architecture: %s (%s)", arch, rule)
    decisions = {name: report["archs"][arch]["classes"][name]["reason"] for name in classes}
    admitted = {name: bool(report["archs"][arch]["classes"][name]["admitted"]) for name in classes}
    if not gan.synthesize.gated:
        log.warning("gan.synthesize.gated is false: every class's images are written, whatever the gate decided")
        decisions = {name: f"written ungated (the gate: {reason})" for name, reason in decisions.items()}
        admitted = dict.fromkeys(classes, True)
    written = _write_synthetic(
        generators[arch], arch, report["archs"][arch]["generator_sha256"][:12], classes, needed, admitted, params, root
    )
    report["synthesis"] = {
        "arch": arch,
        "arch_choice": "auto" if choice == "auto" else "fixed",
        "arch_rule": rule,
        "seed": gan.synthesize.seed,
        "needed": needed,
        "written": written,
        "gated": gan.synthesize.gated,
        "admitted": admitted,
        "decisions": decisions,
        "output_size": list(params.image_size(gan.finetune.dataset)),
    }
    report_path = root / gan.report
    atomic_write(report_path.with_suffix(".md"), quality.render_markdown(report))
    atomic_write_json(report_path, _finite(report))
    return SynthesisResult(
        manifest=root / gan.synthesize.out_dir / "manifest.csv",
        report=report_path,
        needed=needed,
        written=written,
        admitted=admitted,
    )


def _write_synthetic(
    g: torch.nn.Module,
    arch: str,
    sha: str,
    classes: Sequence[str],
    needed: dict[str, int],
    admitted: dict[str, bool],
    params: Params,
    root: Path,
) -> dict[str, int]:
    """Generate and write the admitted classes' images and the manifest; returns images written per class."""
    cfg = params.gan.synthesize
    out_dir = Path(cfg.out_dir)
    images_dir = root / out_dir / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)  # this stage owns the folder; stale images of an earlier run must go
    images_dir.mkdir(parents=True)
    size = params.image_size(params.gan.finetune.dataset)
    source = f"{arch}:{sha}:seed{cfg.seed}"
    written = dict.fromkeys(classes, 0)
    total = sum(needed[name] for name in classes if needed[name] > 0 and admitted[name])
    with ManifestWriter(root / out_dir / "manifest.csv") as writer, progress(
        f"synthesize {arch}", total, unit="images", logger=log
    ) as bar:
        for k, name in enumerate(classes):
            if needed[name] <= 0 or not admitted[name]:
                continue
            images = _resize(generate(g, k, needed[name], _class_seed(cfg.seed, name), cfg.batch_size), size)
            for i, image in enumerate(images):
                bar.update(sum(written.values()) + i, name)
                image_id = hashlib.sha256(f"{source}:{name}:{i}".encode()).hexdigest()[:16]
                rel = out_dir / "images" / f"{image_id}.png"
                write_png16(image[0].numpy(), root / rel)
                writer.write(
                    ManifestRow(
                        image_id=image_id,
                        patient_id=f"synthetic-{image_id}",
                        study_id=f"synthetic-{image_id}",
                        view="single",
                        label=name,
                        split="train",
                        synthetic=True,
                        source=source,
                        path=rel.as_posix(),
                    )
                )
            written[name] = len(images)
            bar.update(sum(written.values()), name)
            log.info("wrote %d synthetic %s images", len(images), name)
    return written
