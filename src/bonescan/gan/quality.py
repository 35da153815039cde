"""Quality of generated images per class (Yu et al. 2023, Table 3) and the gate that admits them.

Metrics, all computed at the GAN's own resolution on images in [0, 1]:

- SSIM to real: SSIM of each generated image against each real training image of its class; reported
  as the mean over all (generated, real) pairs (`ssim_to_real`, Table 3's number) and as the mean over
  generated images of the best-matching real image (`ssim_to_nearest_real`, high values flag copies).
- Diversity: mean SSIM over all pairs of generated images of a class (lower = more diverse; a
  collapsed generator scores near 1). The same number for the real images is given for reference.
- Fidelity: a classifier (the judge) trained briefly on the real training images predicts the class
  of each generated image; the accuracy against the intended class.
- Off-label rate: how often the judge names the class for images generated for the OTHER classes.
  Fidelity only means something above it: a generator whose label changes nothing, judged by a
  classifier that leans to one class, scores a high fidelity for that class alone.
- Train-on-synthetic / test-on-real (TSTR): the same classifier trained on generated images only,
  evaluated on the real validation split.

SSIM variant: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma),
population covariances, K1 = 0.01, K2 = 0.03, data_range 1.0, mean over the valid (un-padded) region:
identical to `skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0)`; computed in batches with torch (tested against skimage).

A class's generated images are admitted to training only if fidelity >= `min_fidelity`, fidelity -
off-label rate >= `min_label_lift` and diversity SSIM <= `max_diversity_ssim` (`gate`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from bonescan.models import build as build_classifier

__all__ = [
    "SSIM_VARIANT",
    "ClassQuality",
    "Ensemble",
    "classifier_accuracy",
    "gate",
    "mean_pairwise_ssim",
    "off_label_rates",
    "render_markdown",
    "ssim_matrix",
    "train_classifier",
]

log = logging.getLogger(__name__)

SSIM_VARIANT = (
    "skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, "
    "data_range=1.0): 11x11 Gaussian window, K1=0.01, K2=0.03, mean over the valid region"
)
_SIGMA, _TRUNCATE, _K1, _K2 = 1.5, 3.5, 0.01, 0.03


def _gaussian_window(dtype: torch.dtype) -> torch.Tensor:
    radius = int(_TRUNCATE * _SIGMA + 0.5)  # 5, as scipy.ndimage.gaussian_filter computes it
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    w = torch.exp(-0.5 * (x / _SIGMA) ** 2)
    return w / w.sum()  # (11,)


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding: (B, 1, H, W) -> (B, 1, H - 10, W - 10)."""
    k = len(window)
    x = F.conv2d(x, window.view(1, 1, k, 1))
    return F.conv2d(x, window.view(1, 1, 1, k))


def ssim_matrix(
    a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, chunk: int = 256
) -> torch.Tensor:
    """SSIM of every image of `a` against every image of `b` (variant in `SSIM_VARIANT`).

    Args:
        a: (N, H, W) images.
        b: (M, H, W) images of the same size.
        data_range: max - min of the pixel scale (1.0 for [0, 1] images).
        chunk: images of `b` filtered at once (bounds memory).

    Returns:
        (N, M) float64 SSIM values.
    """
    if a.shape[1:] != b.shape[1:] or min(a.shape[1:]) < 11:
        raise ValueError(
            f"ssim_matrix needs equal sizes of at least 11x11, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    window = _gaussian_window(torch.float64)
    a = a.to(torch.float64)[:, None]  # (N, 1, H, W)
    b = b.to(torch.float64)[:, None]
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mu_a, mu_b = _filter(a, window), _filter(b, window)  # (N, 1, h, w), (M, 1, h, w)
    var_a = _filter(a * a, window) - mu_a**2
    var_b = _filter(b * b, window) - mu_b**2
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i in range(len(a)):
        for start in range(0, len(b), chunk):
            sl = slice(start, start + chunk)
            cov = _filter(a[i : i + 1] * b[sl], window) - mu_a[i : i + 1] * mu_b[sl]
            num = (2 * mu_a[i : i + 1] * mu_b[sl] + c1) * (2 * cov + c2)
            den = (mu_a[i : i + 1] ** 2 + mu_b[sl] ** 2 + c1) * (var_a[i : i + 1] + var_b[sl] + c2)
            out[i, sl] = (num / den).mean(dim=(1, 2, 3))
    return out


def mean_pairwise_ssim(images: torch.Tensor) -> float:
    """Mean SSIM over the pairs i < j of (N, H, W) images; NaN when N < 2."""
    n = len(images)
    if n < 2:
        return float("nan")
    matrix = ssim_matrix(images, images)
    upper = torch.triu_indices(n, n, offset=1)
    return float(matrix[upper[0], upper[1]].mean())


# --------------------------------------------------------------------------- classifier-based metrics


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5  # [0, 1] -> [-1, 1], the same for real and generated images


class Ensemble(torch.nn.Module):
    """Mean class probabilities of several classifiers; `forward` returns their log (ranks like logits)."""

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).softmax(dim=1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(1e-12).log()


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    name: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    members: int = 1,
) -> torch.nn.Module:
    """Train `bonescan.models` classifiers from scratch on (N, 1, H, W) images in [0, 1]; CPU, class-balanced.

    Classes are balanced by a weighted cross-entropy (weight 1 / count), so a small minority class is
    not simply ignored by a briefly trained model. With `members` > 1, that many models (seeds seed,
    seed + 1, ...) are averaged (`Ensemble`): one brief run on a few hundred images is a noisy judge,
    whose per-class recall moves by tens of points with its seed alone.
    """
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).double()
    weights = (counts.sum() / (num_classes * counts)).float()
    models = []
    for member_seed in range(seed, seed + members):
        torch.manual_seed(member_seed)
        model = build_classifier(name, num_classes, in_chans=1)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(member_seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                loss = F.cross_entropy(model(_standardise(images[idx])), labels[idx], weight=weights)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        models.append(model.eval())
    return models[0] if members == 1 else Ensemble(models).eval()


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted class indices (N,) of (N, 1, H, W) images in [0, 1]."""
    if len(images) == 0:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(
        [model(_standardise(images[s : s + batch_size])).argmax(1) for s in range(0, len(images), batch_size)]
    )


def classifier_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of (N, 1, H, W) images whose predicted class is `labels`; NaN for no images."""
    if len(images) == 0:
        return float("nan")
    return float((predict(model, images) == labels).float().mean())


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ClassQuality:
    """Quality of one class's generated images and the gate's decision."""

    n_generated: int  # images the metrics were computed on
    n_real: int  # real training images of the class
    ssim_to_real: float  # mean SSIM over all (generated, real) pairs
    ssim_to_nearest_real: float  # mean over generated images of the max SSIM to a real image
    diversity_ssim: float  # mean SSIM over pairs of generated images (lower = more diverse)
    real_diversity_ssim: float  # the same over pairs of real images, for reference
    fidelity: float  # accuracy of the real-trained classifier on the generated images
    off_label_rate: float  # how often that classifier names this class for images generated as another
    judge_real_recall: float  # that classifier's recall on REAL val images of the class: fidelity's ceiling
    tstr_recall: float  # recall of this class on the real val split, classifier trained on synthetic images
    admitted: bool  # passed the gate
    reason: str  # why (not) admitted

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def gate(
    fidelity: float,
    diversity_ssim: float,
    min_fidelity: float,
    max_diversity_ssim: float,
    judge_real_recall: float = float("nan"),
    *,
    off_label_rate: float = float("nan"),
    min_label_lift: float = 0.0,
) -> tuple[bool, str]:
    """Admit a class's images when they are recognised, recognised because of their label, and diverse.

    Criteria: fidelity >= min_fidelity; fidelity - off_label_rate >= min_label_lift (skipped when there
    is no other class, i.e. a NaN off-label rate); diversity SSIM <= max_diversity_ssim. The judge's
    recall on real images of the class does not change the decision; a rejection says when the judge
    fails on real images too, as the generator is then not the only suspect.
    """
    problems = []
    if not fidelity >= min_fidelity:  # NaN fails
        problems.append(f"fidelity {fidelity:.3f} < {min_fidelity}")
        if judge_real_recall < min_fidelity:
            problems[-1] += (
                f" (the judge also recognises only {judge_real_recall:.3f} of the real val images of this "
                "class: train it longer with gan.quality.classifier_epochs)"
            )
    lift = fidelity - off_label_rate
    has_others = not math.isnan(off_label_rate)  # NaN: no other class to compare with
    if has_others and not lift >= min_label_lift:
        problems.append(
            f"label lift {lift:.3f} < {min_label_lift} (the judge names this class for {off_label_rate:.3f} "
            "of the images generated for the other classes too)"
        )
    if not diversity_ssim <= max_diversity_ssim:
        problems.append(f"diversity SSIM {diversity_ssim:.3f} > {max_diversity_ssim}")
    if problems:
        return False, "rejected: " + "; ".join(problems)
    lifted = f", label lift {lift:.3f} >= {min_label_lift}" if has_others else ""
    return (
        True,
        f"admitted: fidelity {fidelity:.3f} >= {min_fidelity}{lifted}, "
        f"diversity SSIM {diversity_ssim:.3f} <= {max_diversity_ssim}",
    )


def off_label_rates(predicted: torch.Tensor, intended: torch.Tensor, num_classes: int) -> list[float]:
    """Per class k: the fraction of images generated for another class that the judge calls k (NaN if none)."""
    out = []
    for k in range(num_classes):
        others = intended != k
        out.append(float((predicted[others] == k).float().mean()) if others.any() else float("nan"))
    return out


def class_quality(
    generated: torch.Tensor,
    real: torch.Tensor,
    fidelity: float,
    tstr_recall: float,
    min_fidelity: float,
    max_diversity_ssim: float,
    judge_real_recall: float = float("nan"),
    *,
    off_label_rate: float = float("nan"),
    min_label_lift: float = 0.0,
) -> ClassQuality:
    """All metrics of one class from (N, H, W) generated and (M, H, W) real images in [0, 1]."""
    pairs = ssim_matrix(generated, real) if len(real) else torch.full((len(generated), 1), float("nan"))
    diversity = mean_pairwise_ssim(generated)
    admitted, reason = gate(
        fidelity, diversity, min_fidelity, max_diversity_ssim, judge_real_recall,
        off_label_rate=off_label_rate, min_label_lift=min_label_lift,
    )  # fmt: skip
    return ClassQuality(
        n_generated=len(generated),
        n_real=len(real),
        ssim_to_real=float(pairs.mean()),
        ssim_to_nearest_real=float(pairs.max(dim=1).values.mean()),
        diversity_ssim=diversity,
        real_diversity_ssim=mean_pairwise_ssim(real),
        fidelity=fidelity,
        off_label_rate=off_label_rate,
        judge_real_recall=judge_real_recall,
        tstr_recall=tstr_recall,
        admitted=admitted,
        reason=reason,
    )


def render_markdown(report: dict) -> str:
    """The quality report as a markdown table per architecture (like Yu et al. 2023, Table 3)."""
    lines = [
        "# GAN quality (generated vs. real training images, per class)",
        "",
        f"SSIM: {report['ssim_variant']}. Images compared at the GAN resolution {tuple(report['image_size'])}.",
        f"Fidelity and TSTR classifier: `{report['classifier']['name']}` "
        f"({report['classifier']['epochs']} epochs, mean of {report['classifier'].get('members', 1)} seeds); trained on real train images it scores "
        f"{report['classifier']['real_val_accuracy']:.3f} accuracy on the real val split "
        "(per class: the judge's recall column, the ceiling of fidelity).",
        f"Gate: fidelity >= {report['gate']['min_fidelity']}, fidelity - off-label rate >= "
        f"{report['gate'].get('min_label_lift', 0.0)} and diversity SSIM <= {report['gate']['max_diversity_ssim']} "
        "(off-label rate: how often the judge names the class for images generated for the other classes).",
        "",
        "| arch | class | n gen | SSIM to real (mean) | SSIM to nearest real | diversity SSIM (gen) "
        "| diversity SSIM (real) | fidelity | off-label rate | judge recall (real val) | TSTR recall | admitted |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arch, entry in report["archs"].items():
        for name, q in entry["classes"].items():
            lines.append(
                f"| {arch} | {name} | {q['n_generated']} | {q['ssim_to_real']:.3f} | {q['ssim_to_nearest_real']:.3f} "
                f"| {q['diversity_ssim']:.3f} | {q['real_diversity_ssim']:.3f} | {q['fidelity']:.3f} "
                f"| {_nan(q.get('off_label_rate')):.3f} "
                f"| {_nan(q.get('judge_real_recall')):.3f} | {q['tstr_recall']:.3f} | {'yes' if q['admitted'] else 'no'} |"
            )
    lines += [
        "",
        "| arch | generator | TSTR val accuracy | mean fidelity | mean SSIM to real |",
        "|---|---|---:|---:|---:|",
    ]
    for arch, entry in report["archs"].items():
        lines.append(
            f"| {arch} | `{entry['generator']}` | {entry['tstr_val_accuracy']:.3f} | {entry['mean_fidelity']:.3f} "
            f"| {entry['mean_ssim_to_real']:.3f} |"
        )
    synth = report["synthesis"]
    lines += [
        "",
        f"Synthesis with `{synth['arch']}` (seed {synth['seed']}): needed {synth['needed']}, "
        f"written {synth['written']}.",
    ]
    for name, reason in synth["decisions"].items():
        lines.append(f"- {name}: {reason}")
    return "\n".join(lines) + "\n"


def _nan(value: float | None) -> float:
    """A report value, NaN when absent (older reports) or None (NaN written as JSON null)."""
    return float("nan") if value is None else value


def per_class_recall(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Recall of each class (NaN for a class absent from `labels`)."""
    out = []
    for k in range(num_classes):
        mask = labels == k
        out.append(float((predicted[mask] == k).float().mean()) if mask.any() else float("nan"))
    return out


def summarise(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none)."""
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else float("nan")
