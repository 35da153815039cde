"""Quality of generated images per class (Yu et al. 2023, Table 3) and the gate that admits them.

Metrics, all computed at the GAN's own resolution on images in [0, 1]:

- SSIM to real: SSIM of each generated image against each real training image of its class; reported
  as the mean over all (generated, real) pairs (`ssim_to_real`, Table 3's number) and as the mean over
  generated images of the best-matching real image (`ssim_to_nearest_real`, high values flag copies).
- Diversity: mean SSIM over pairs of generated images of a class (lower = more diverse; a
  collapsed generator scores near 1), and the same over pairs of real images as the yardstick. At
  most `diversity_pairs` pairs, a seeded sample without replacement (all pairs when there are fewer):
  every pair of 3,107 real images is 4.8 M SSIMs, while the mean of a few thousand pairs is already
  known to about +-0.005.
- Fidelity: a classifier (the judge) trained briefly on the real training images predicts the class
  of each generated image; the accuracy against the intended class.
- Off-label rate: how often the judge names the class for images generated for the OTHER classes.
  Fidelity only means something above it: a generator whose label changes nothing, judged by a
  classifier that leans to one class, scores a high fidelity for that class alone.
- Train-on-synthetic / test-on-real (TSTR): the same classifier trained on generated images only,
  evaluated on the real validation split; per class its recall and its lift (recall minus the rate
  at which it names the class for real images of the other classes: 0 for a constant or a random
  classifier, i.e. chance).

What is the same for every architecture (the judge ensemble, the real images' diversity, the
judge's recall on real val images) is computed once (`real_reference`) and reused for each one.

SSIM variant: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma),
population covariances, K1 = 0.01, K2 = 0.03, data_range 1.0, mean over the valid (un-padded) region:
identical to `skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0)`; computed in batches with torch (tested against skimage).

A class's generated images are admitted to training only if fidelity >= `min_fidelity`, fidelity -
off-label rate >= `min_label_lift`, diversity SSIM <= `max_diversity_ssim` and <= the real images'
diversity + `max_diversity_margin`, and TSTR lift >= `min_tstr_lift` (`gate`): fidelity alone admits
images the judge recognises even when they are near-copies of one image that teach nothing.
With `gan.synthesize.arch: auto`, `choose_arch` picks the architecture whose images are written.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from bonescan.classifier_file import MeanOfMembers  # one seed ensemble, shared with the saved classifier
from bonescan.config import GanQualityConfig
from bonescan.models import build as build_classifier

__all__ = [
    "ARCH_RULE",
    "SSIM_VARIANT",
    "ClassQuality",
    "RealReference",
    "balanced_subsample",
    "choose_arch",
    "classifier_accuracy",
    "gate",
    "mean_pairwise_ssim",
    "measure_arch",
    "member_predictions",
    "off_label_rates",
    "real_reference",
    "render_markdown",
    "sample_pairs",
    "ssim_matrix",
    "ssim_pairs",
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


def _bands(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The separable Gaussian filter as two banded matrices, (H - 10, H) and (W - 10, W), float64."""
    window = _gaussian_window(torch.float64)
    k = len(window)

    def band(n: int) -> torch.Tensor:
        rows = torch.arange(n - k + 1)[:, None] + torch.arange(k)[None]  # (n - k + 1, k) column of each tap
        return torch.zeros(n - k + 1, n, dtype=torch.float64).scatter_(1, rows, window.expand(n - k + 1, k))

    return band(height), band(width)


def _filter(x: torch.Tensor, bands: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Separable Gaussian filter without padding: (B, 1, H, W) -> (B, 1, H - 10, W - 10).

    Two matrix products: float64 BLAS runs them ~5x faster on a CPU than `conv2d`'s float64 path, with
    the same values to rounding.
    """
    rows, cols = bands
    return rows @ x @ cols.T


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
    bands = _bands(*a.shape[1:])
    a = a.to(torch.float64)[:, None]  # (N, 1, H, W)
    b = b.to(torch.float64)[:, None]
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mu_a, mu_b = _filter(a, bands), _filter(b, bands)  # (N, 1, h, w), (M, 1, h, w)
    var_a = _filter(a * a, bands) - mu_a**2
    var_b = _filter(b * b, bands) - mu_b**2
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i in range(len(a)):
        for start in range(0, len(b), chunk):
            sl = slice(start, start + chunk)
            cov = _filter(a[i : i + 1] * b[sl], bands) - mu_a[i : i + 1] * mu_b[sl]
            num = (2 * mu_a[i : i + 1] * mu_b[sl] + c1) * (2 * cov + c2)
            den = (mu_a[i : i + 1] ** 2 + mu_b[sl] ** 2 + c1) * (var_a[i : i + 1] + var_b[sl] + c2)
            out[i, sl] = (num / den).mean(dim=(1, 2, 3))
    return out


def ssim_pairs(
    a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, chunk: int = 256
) -> torch.Tensor:
    """SSIM of a[p] against b[p] for every p (variant in `SSIM_VARIANT`): the diagonal of `ssim_matrix`.

    Args:
        a: (P, H, W) images.
        b: (P, H, W) images of the same size.

    Returns:
        (P,) float64 SSIM values.
    """
    if a.shape != b.shape or min(a.shape[1:]) < 11:
        raise ValueError(
            f"ssim_pairs needs equal shapes of at least 11x11, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    bands = _bands(*a.shape[1:])
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    out = torch.empty(len(a), dtype=torch.float64)
    for start in range(0, len(a), chunk):
        x = a[start : start + chunk].to(torch.float64)[:, None]  # (B, 1, H, W)
        y = b[start : start + chunk].to(torch.float64)[:, None]
        mu_x, mu_y = _filter(x, bands), _filter(y, bands)
        var_x = _filter(x * x, bands) - mu_x**2
        var_y = _filter(y * y, bands) - mu_y**2
        cov = _filter(x * y, bands) - mu_x * mu_y
        num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        out[start : start + chunk] = (num / den).mean(dim=(1, 2, 3))
    return out


def sample_pairs(n: int, max_pairs: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j), i < j, of n items: all of them, or `max_pairs` drawn without replacement.

    The draw is over the n(n-1)/2 pair numbers (`random.sample` of a `range`, no list of pairs is
    built), so it stays cheap for any n; the same (n, max_pairs, seed) gives the same pairs.
    """
    total = n * (n - 1) // 2
    if max_pairs is None or total <= max_pairs:
        upper = torch.triu_indices(n, n, offset=1)
        return upper[0], upper[1]
    picked = sorted(random.Random(seed).sample(range(total), max_pairs))
    rows, cols = [], []
    for k in picked:  # pair number k -> (i, j): row i holds the n - 1 - i pairs (i, i+1..n-1)
        i = n - 2 - (math.isqrt(8 * (total - 1 - k) + 1) - 1) // 2
        first = i * (2 * n - i - 1) // 2  # number of the pair (i, i + 1)
        rows.append(i)
        cols.append(k - first + i + 1)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def mean_pairwise_ssim(images: torch.Tensor, max_pairs: int | None = None, seed: int = 0) -> float:
    """Mean SSIM over the pairs i < j of (N, H, W) images (a seeded sample of `max_pairs`); NaN when N < 2."""
    if len(images) < 2:
        return float("nan")
    i, j = sample_pairs(len(images), max_pairs, seed)
    return float(ssim_pairs(images[i], images[j]).mean())


# --------------------------------------------------------------------------- classifier-based metrics


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5  # [0, 1] -> [-1, 1], the same for real and generated images


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
    seed + 1, ...) are averaged (`MeanOfMembers`, the classifier's seed ensemble): one brief run on a few hundred images is a noisy judge,
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
    return models[0] if members == 1 else MeanOfMembers(models).eval()


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


@torch.inference_mode()
def member_predictions(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted class indices (M, N) of each member of a `MeanOfMembers` (M = 1 for a single model)."""
    members = list(model.members) if isinstance(model, MeanOfMembers) else [model]
    return torch.stack([predict(m, images, batch_size) for m in members])


def balanced_subsample(labels: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of at most `per_class` items of each label, drawn with `seed` (all when None)."""
    if per_class is None:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for k in labels.unique():
        idx = (labels == k).nonzero().flatten()
        picked.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(picked).sort().values if picked else torch.empty(0, dtype=torch.long)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation of the finite values (NaN for fewer than two)."""
    finite = [v for v in values if v == v]
    return statistics.stdev(finite) if len(finite) > 1 else float("nan")


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ClassQuality:
    """Quality of one class's generated images and the gate's decision."""

    n_generated: int  # images the metrics were computed on
    n_real: int  # real training images of the class
    ssim_to_real: float  # mean SSIM over all (generated, real) pairs
    ssim_to_nearest_real: float  # mean over generated images of the max SSIM to a real image
    diversity_ssim: float  # mean SSIM over (a sample of) pairs of generated images (lower = more diverse)
    real_diversity_ssim: float  # the same over (a sample of) pairs of real images: the yardstick
    fidelity: float  # accuracy of the real-trained classifier on the generated images
    off_label_rate: float  # how often that classifier names this class for images generated as another
    judge_real_recall: float  # that classifier's recall on REAL val images of the class: fidelity's ceiling
    tstr_recall: float  # recall of this class on the real val split, classifier trained on synthetic images
    admitted: bool  # passed the gate
    reason: str  # why (not) admitted
    # tstr_recall - how often that classifier names this class for the other classes' real val images
    tstr_lift: float = float("nan")
    fidelity_members: tuple[float, ...] = ()  # fidelity by each judge member alone (its seed-to-seed spread)
    fidelity_sd: float = float("nan")  # sample sd of fidelity_members

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
    real_diversity_ssim: float = float("nan"),
    max_diversity_margin: float | None = None,
    tstr_recall: float = float("nan"),
    tstr_lift: float = float("nan"),
    min_tstr_lift: float | None = None,
) -> tuple[bool, str]:
    """Admit a class's images when they are recognised because of their label, diverse, and teach the class.

    Criteria: fidelity >= min_fidelity; fidelity - off_label_rate >= min_label_lift (skipped when there
    is no other class, i.e. a NaN off-label rate); diversity SSIM <= max_diversity_ssim and, unless
    `max_diversity_margin` is None or the real value is NaN (< 2 real images), <= real_diversity_ssim +
    max_diversity_margin; unless `min_tstr_lift` is None, tstr_lift >= min_tstr_lift (NaN, no real val
    image of the class, fails). A judge that recognises near-copies of one image passes the first two;
    the last two are what a collapsed generator fails. The judge's recall on real images of the class
    does not change the decision; a rejection says when the judge fails on real images too, as the
    generator is then not the only suspect.
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
    relative = max_diversity_margin is not None and not math.isnan(real_diversity_ssim)
    if relative and not diversity_ssim <= real_diversity_ssim + max_diversity_margin:
        problems.append(
            f"diversity SSIM {diversity_ssim:.3f} > real images' {real_diversity_ssim:.3f} + {max_diversity_margin} "
            "(more alike than real images are: near-collapsed)"
        )
    if min_tstr_lift is not None and not tstr_lift >= min_tstr_lift:
        problems.append(
            f"TSTR lift {tstr_lift:.3f} < {min_tstr_lift} (trained on the generated images alone, a classifier "
            f"recalls {tstr_recall:.3f} of this class's real val images; chance is a lift of 0)"
        )
    if problems:
        return False, "rejected: " + "; ".join(problems)
    lifted = f", label lift {lift:.3f} >= {min_label_lift}" if has_others else ""
    versus_real = f" and <= real {real_diversity_ssim:.3f} + {max_diversity_margin}" if relative else ""
    taught = f", TSTR lift {tstr_lift:.3f} >= {min_tstr_lift}" if min_tstr_lift is not None else ""
    return (
        True,
        f"admitted: fidelity {fidelity:.3f} >= {min_fidelity}{lifted}, "
        f"diversity SSIM {diversity_ssim:.3f} <= {max_diversity_ssim}{versus_real}{taught}",
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
    real_diversity_ssim: float | None = None,
    max_diversity_margin: float | None = None,
    tstr_lift: float = float("nan"),
    min_tstr_lift: float | None = None,
    fidelity_members: Sequence[float] = (),
    diversity_pairs: int | None = None,
    seed: int = 0,
) -> ClassQuality:
    """All metrics of one class from (N, H, W) generated and (M, H, W) real images in [0, 1].

    `real_diversity_ssim` is the real images' value when already known (`RealReference`); None
    computes it here.
    """
    pairs = ssim_matrix(generated, real) if len(real) else torch.full((len(generated), 1), float("nan"))
    diversity = mean_pairwise_ssim(generated, diversity_pairs, seed)
    if real_diversity_ssim is None:
        real_diversity_ssim = mean_pairwise_ssim(real, diversity_pairs, seed)
    admitted, reason = gate(
        fidelity, diversity, min_fidelity, max_diversity_ssim, judge_real_recall,
        off_label_rate=off_label_rate, min_label_lift=min_label_lift,
        real_diversity_ssim=real_diversity_ssim, max_diversity_margin=max_diversity_margin,
        tstr_recall=tstr_recall, tstr_lift=tstr_lift, min_tstr_lift=min_tstr_lift,
    )  # fmt: skip
    return ClassQuality(
        n_generated=len(generated),
        n_real=len(real),
        ssim_to_real=float(pairs.mean()),
        ssim_to_nearest_real=float(pairs.max(dim=1).values.mean()),
        diversity_ssim=diversity,
        real_diversity_ssim=real_diversity_ssim,
        fidelity=fidelity,
        off_label_rate=off_label_rate,
        judge_real_recall=judge_real_recall,
        tstr_recall=tstr_recall,
        admitted=admitted,
        reason=reason,
        tstr_lift=tstr_lift,
        fidelity_members=tuple(fidelity_members),
        fidelity_sd=stdev(fidelity_members),
    )


# --------------------------------------------------------------------------- the gate's stage-level steps


def classifier_kwargs(cfg: GanQualityConfig) -> dict[str, object]:
    """`train_classifier` settings of the judge and the TSTR classifiers."""
    return {
        "name": cfg.classifier,
        "epochs": cfg.classifier_epochs,
        "batch_size": cfg.classifier_batch_size,
        "lr": cfg.classifier_lr,
        "seed": cfg.seed,
        "members": cfg.classifier_members,
    }


@dataclass(frozen=True)
class RealReference:
    """What the gate measures on real images alone: the same for every architecture, so computed once."""

    judge: torch.nn.Module  # the ensemble trained on (a class-balanced sample of) the real train images
    judge_train_images: int  # how many real train images it was trained on
    diversity_ssim: tuple[float, ...]  # per class: mean SSIM over (a sample of) pairs of real train images
    val_accuracy: float  # the judge's accuracy on the real val split
    val_recall: tuple[float, ...]  # its recall per class there (the ceiling of fidelity)
    val_accuracy_members: tuple[float, ...]  # each member's val accuracy alone (seed-to-seed spread)


def real_reference(
    real_train: torch.Tensor,
    y_train: torch.Tensor,
    real_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    cfg: GanQualityConfig,
) -> RealReference:
    """Train the judge and measure the real images, once per synthesis run.

    Args:
        real_train: (N, 1, H, W) real train images in [0, 1]; y_train (N,) their labels.
        real_val: (V, 1, H, W) real val images; y_val (V,).
    """
    picked = balanced_subsample(y_train, cfg.judge_images_per_class, cfg.seed)
    judge = train_classifier(real_train[picked], y_train[picked], num_classes, **classifier_kwargs(cfg))
    val_pred = predict(judge, real_val)
    members = member_predictions(judge, real_val)
    diversity = tuple(
        mean_pairwise_ssim(real_train[y_train == k][:, 0], cfg.diversity_pairs, cfg.seed)
        for k in range(num_classes)
    )
    return RealReference(
        judge=judge,
        judge_train_images=len(picked),
        diversity_ssim=diversity,
        val_accuracy=float((val_pred == y_val).float().mean()) if len(y_val) else float("nan"),
        val_recall=tuple(per_class_recall(val_pred, y_val, num_classes)),
        val_accuracy_members=tuple(
            float((m == y_val).float().mean()) if len(y_val) else float("nan") for m in members
        ),
    )


def measure_arch(
    samples: Sequence[torch.Tensor],
    classes: Sequence[str],
    reference: RealReference,
    real_train: torch.Tensor,
    y_train: torch.Tensor,
    real_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg: GanQualityConfig,
) -> dict[str, object]:
    """One architecture's report entry: per-class quality and gate decisions, TSTR summary.

    Args:
        samples: per class k, images generated for class k, (n, 1, H, W) in [0, 1]: the first
            `cfg.samples_per_class` are measured, the first `cfg.tstr_samples_per_class` train TSTR.
        reference: the real images' measurements (`real_reference`), shared by all architectures.
    """
    num_classes = len(classes)
    n = cfg.samples_per_class
    fake = torch.cat([x[:n] for x in samples])  # (K * n, 1, H, W): the measured images
    y_fake = torch.cat([torch.full((len(x[:n]),), k, dtype=torch.long) for k, x in enumerate(samples)])
    taught = torch.cat([x[: cfg.tstr_samples_per_class] for x in samples])  # what TSTR trains on
    y_taught = torch.cat(
        [
            torch.full((len(x[: cfg.tstr_samples_per_class]),), k, dtype=torch.long)
            for k, x in enumerate(samples)
        ]
    )
    judged = predict(reference.judge, fake)
    fidelity = per_class_recall(judged, y_fake, num_classes)
    by_member = [per_class_recall(m, y_fake, num_classes) for m in member_predictions(reference.judge, fake)]
    off_label = off_label_rates(judged, y_fake, num_classes)
    tstr = train_classifier(taught, y_taught, num_classes, **classifier_kwargs(cfg))
    tstr_pred = predict(tstr, real_val)
    tstr_recall = per_class_recall(tstr_pred, y_val, num_classes)
    tstr_other = off_label_rates(tstr_pred, y_val, num_classes)
    per_class = {}
    for k, name in enumerate(classes):
        per_class[name] = class_quality(
            samples[k][:n, 0],
            real_train[y_train == k][:, 0],
            fidelity[k],
            tstr_recall[k],
            cfg.min_fidelity,
            cfg.max_diversity_ssim,
            reference.val_recall[k],
            off_label_rate=off_label[k],
            min_label_lift=cfg.min_label_lift,
            real_diversity_ssim=reference.diversity_ssim[k],
            max_diversity_margin=cfg.max_diversity_margin,
            tstr_lift=tstr_recall[k] - tstr_other[k],
            min_tstr_lift=cfg.min_tstr_lift,
            fidelity_members=[m[k] for m in by_member],
            diversity_pairs=cfg.diversity_pairs,
            seed=cfg.seed,
        ).as_dict()
    return {
        "tstr_val_accuracy": float((tstr_pred == y_val).float().mean()) if len(y_val) else float("nan"),
        "tstr_val_balanced_accuracy": summarise(tstr_recall),
        "mean_fidelity": summarise(fidelity),
        "mean_ssim_to_real": summarise([q["ssim_to_real"] for q in per_class.values()]),
        "classes": per_class,
    }


ARCH_RULE = (
    "most admitted classes that need images, then the higher TSTR balanced accuracy on the real val split, "
    "then the earlier in gan.archs"
)


def choose_arch(entries: Mapping[str, Mapping], needed: Mapping[str, int]) -> str:
    """The architecture whose images are written under `gan.synthesize.arch: auto` (rule: `ARCH_RULE`).

    Args:
        entries: arch -> its report entry (`measure_arch`), in gan.archs order.
        needed: images needed per class.
    """

    def key(arch: str) -> tuple[int, float]:
        classes = entries[arch]["classes"]
        useful = sum(1 for name, q in classes.items() if q["admitted"] and needed.get(name, 0) > 0)
        balanced = entries[arch].get("tstr_val_balanced_accuracy", float("nan"))
        return useful, balanced if balanced == balanced else -math.inf

    return max(entries, key=key)  # max keeps the first of equals: the earlier in gan.archs


def render_markdown(report: dict) -> str:
    """The quality report as a markdown table per architecture (like Yu et al. 2023, Table 3)."""
    clf, rule = report["classifier"], report["gate"]
    members = clf.get("real_val_accuracy_members") or []
    spread = (
        f" Its members alone score {', '.join(f'{_nan(v):.3f}' for v in members)} "
        f"(sd {_nan(clf.get('real_val_accuracy_sd')):.3f}); the fidelity sd column is the spread of fidelity over them."
        if len(members) > 1
        else ""
    )
    lines = [
        "# GAN quality (generated vs. real training images, per class)",
        "",
        f"SSIM: {report['ssim_variant']}. Images compared at the GAN resolution {tuple(report['image_size'])}.",
        f"Fidelity and TSTR classifier: `{clf['name']}` "
        f"({clf['epochs']} epochs, mean of {clf.get('members', 1)} seeds); trained on real train images it scores "
        f"{clf['real_val_accuracy']:.3f} accuracy on the real val split "
        f"(per class: the judge's recall column, the ceiling of fidelity).{spread}",
        f"Gate: fidelity >= {rule['min_fidelity']}, fidelity - off-label rate >= "
        f"{rule.get('min_label_lift', 0.0)} and diversity SSIM <= {rule['max_diversity_ssim']}"
        + (
            f" and <= the real images' + {rule['max_diversity_margin']}"
            if rule.get("max_diversity_margin") is not None
            else ""
        )
        + (f" and TSTR lift >= {rule['min_tstr_lift']}" if rule.get("min_tstr_lift") is not None else "")
        + " (off-label rate: how often the judge names the class for images generated for the other classes; "
        "TSTR lift: recall of the class's real val images by a classifier trained on generated images, minus how "
        "often it names the class for the other real val images, 0 = chance).",
        "",
        "| arch | class | n gen | SSIM to real (mean) | SSIM to nearest real | diversity SSIM (gen) "
        "| diversity SSIM (real) | fidelity | fidelity sd (judge seeds) | off-label rate | judge recall (real val) "
        "| TSTR recall | TSTR lift | admitted |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arch, entry in report["archs"].items():
        for name, q in entry["classes"].items():
            lines.append(
                f"| {arch} | {name} | {q['n_generated']} | {q['ssim_to_real']:.3f} | {q['ssim_to_nearest_real']:.3f} "
                f"| {q['diversity_ssim']:.3f} | {q['real_diversity_ssim']:.3f} | {q['fidelity']:.3f} "
                f"| {_nan(q.get('fidelity_sd')):.3f} | {_nan(q.get('off_label_rate')):.3f} "
                f"| {_nan(q.get('judge_real_recall')):.3f} | {q['tstr_recall']:.3f} | {_nan(q.get('tstr_lift')):.3f} "
                f"| {'yes' if q['admitted'] else 'no'} |"
            )
    lines += [
        "",
        "| arch | generator | TSTR val accuracy | TSTR balanced accuracy | mean fidelity | mean SSIM to real |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for arch, entry in report["archs"].items():
        lines.append(
            f"| {arch} | `{entry['generator']}` | {entry['tstr_val_accuracy']:.3f} "
            f"| {_nan(entry.get('tstr_val_balanced_accuracy')):.3f} | {entry['mean_fidelity']:.3f} "
            f"| {entry['mean_ssim_to_real']:.3f} |"
        )
    synth = report["synthesis"]
    chosen = f", chosen by the gate ({synth['arch_rule']})" if synth.get("arch_choice") == "auto" else ""
    lines += [
        "",
        f"Synthesis with `{synth['arch']}`{chosen} (seed {synth['seed']}): needed {synth['needed']}, "
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
