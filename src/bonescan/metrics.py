"""Classification metrics with patient-level bootstrap confidence intervals.

Pure functions over arrays (MONAI's `compute_x(y_pred, y)` habit): labels (N,) as class indices,
probabilities (N, K) whose rows sum to 1. Point estimates come from scikit-learn; only specificity,
which scikit-learn lacks, is read off the confusion matrix. A class absent from the evaluated labels
has no recall, F1 or ROC AUC: those are NaN (and the macro averages skip them) rather than a
misleading 0.

Confidence intervals resample patients, not images: a patient's anterior and posterior views (and
repeat studies) are correlated, so resampling images would pretend to more independent evidence than
the test set holds and give intervals that are too narrow (cluster bootstrap, percentile intervals).
The replicates are computed for all resamples at once from integer multiplicity weights (how often
each row was drawn), not by calling scikit-learn on every resample: its input validation alone costs
tens of milliseconds a call, about a minute per evaluation. They equal `compute_metrics` on the
resampled rows (tested).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

if TYPE_CHECKING:
    from bonescan.classifier_file import DecisionRule

__all__ = [
    "aggregate_by_study",
    "balanced_accuracy_of",
    "fit_logit_offsets",
    "MACRO_METRICS",
    "PER_CLASS_METRICS",
    "MetricReport",
    "PairedDifference",
    "absent_classes",
    "bootstrap_indices",
    "bootstrap_weights",
    "cluster_bootstrap",
    "compute_confusion",
    "compute_metrics",
    "compute_ovr_auc",
    "compute_specificity",
    "evaluate_predictions",
    "paired_bootstrap_difference",
    "percentile_interval",
    "weighted_level_counts",
    "weighted_metrics",
]

# Summary metrics, any of which can be the primary metric used to compare and promote models.
MACRO_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_specificity",
    "macro_f1",
    "macro_auc",
)
# Per-class metrics, flattened as "<metric>_<class name>".
PER_CLASS_METRICS: tuple[str, ...] = ("precision", "recall", "specificity", "f1", "auc")


def _check(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_prob.ndim != 2 or y_true.ndim != 1 or len(y_true) != len(y_prob):
        raise ValueError(f"expected labels (N,) and probabilities (N, K), got {y_true.shape} and {y_prob.shape}")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= y_prob.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {y_prob.shape[1]}), got {sorted(set(y_true))}")
    return y_true, y_prob


def compute_confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = actual class, columns = predicted class (scikit-learn's convention)."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def compute_specificity(cm: np.ndarray) -> np.ndarray:
    """One-vs-rest specificity TN / (TN + FP) per class from a confusion matrix; NaN without negatives.

    Args:
        cm: (K, K) confusion matrix, rows actual, columns predicted.

    Returns:
        (K,) float64.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    negatives = tn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(negatives > 0, tn / negatives, np.nan)


def compute_ovr_auc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class; NaN for a class with no positives or no negatives.

    Equals the per-class terms of `roc_auc_score(y_true, y_prob, multi_class="ovr", average=None)`,
    which itself refuses any input where a class is missing.

    Returns:
        (K,) float64.
    """
    y_true, y_prob = _check(y_true, y_prob)
    out = np.full(y_prob.shape[1], np.nan)
    for k in range(y_prob.shape[1]):
        positive = y_true == k
        if 0 < positive.sum() < len(y_true):
            out[k] = roc_auc_score(positive, y_prob[:, k])
    return out


def absent_classes(y_true: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Names of the classes with no sample in `y_true`."""
    present = set(np.asarray(y_true, dtype=np.int64).tolist())
    return [name for k, name in enumerate(classes) if k not in present]


def compute_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str], decision: DecisionRule | None = None
) -> dict[str, float]:
    """All point metrics, flat: `MACRO_METRICS` plus "<metric>_<class>" for `PER_CLASS_METRICS`.

    The prediction is the decision rule's (the most probable class without one): the metrics of a
    model are those at its operating point, while ROC AUC uses the probabilities. With every class
    present, the macro values equal scikit-learn's `average="macro"` (precision of a class never
    predicted counts as 0, as there).

    Args:
        y_true: (N,) class indices.
        y_prob: (N, K) class probabilities, K == len(classes).
        classes: class names in index order.
        decision: the model's `DecisionRule`; None = argmax.

    Returns:
        metric name -> value (NaN where undefined, e.g. recall of a class absent from `y_true`).
    """
    y_true, y_prob = _check(y_true, y_prob)
    k = len(classes)
    if y_prob.shape[1] != k:
        raise ValueError(f"{y_prob.shape[1]} probability columns for {k} classes")
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    y_pred = _predict(y_prob, decision)
    present = np.bincount(y_true, minlength=k) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(k), average=None, zero_division=0.0
        )
        balanced = balanced_accuracy_score(y_true, y_pred)  # mean recall over the classes present
    predicted = np.bincount(y_pred, minlength=k) > 0
    precision = np.where(present | predicted, precision, np.nan)  # 0/0 with nothing to find: undefined
    recall = np.where(present, recall, np.nan)
    f1 = np.where(present, f1, np.nan)
    specificity = compute_specificity(compute_confusion(y_true, y_pred, k))
    auc = compute_ovr_auc(y_true, y_prob)

    per_class = {"precision": precision, "recall": recall, "specificity": specificity, "f1": f1, "auc": auc}
    out = _flat_metrics(
        np.array([accuracy_score(y_true, y_pred)]), np.array([balanced]),
        {name: np.asarray(values, dtype=np.float64)[None] for name, values in per_class.items()}, classes,
    )  # fmt: skip
    return {name: float(values[0]) for name, values in out.items()}


def _flat_metrics(
    accuracy: np.ndarray, balanced: np.ndarray, per_class: dict[str, np.ndarray], classes: Sequence[str]
) -> dict[str, np.ndarray]:
    """The flat metric dict of B evaluations: `MACRO_METRICS`, then "<metric>_<class>" per class.

    Args:
        accuracy, balanced: (B,) accuracy and balanced accuracy.
        per_class: each of `PER_CLASS_METRICS` -> (B, K); a macro value is its mean over the defined classes.
    """
    out = {"accuracy": accuracy, "balanced_accuracy": balanced}
    out |= {f"macro_{m}": _nanmean_rows(per_class[m]) for m in ("precision", "recall", "specificity", "f1", "auc")}
    for metric in PER_CLASS_METRICS:
        for c, name in enumerate(classes):
            out[f"{metric}_{name}"] = per_class[metric][:, c]
    return out


def _predict(y_prob: np.ndarray, decision: DecisionRule | None) -> np.ndarray:
    """(N,) the decision rule's classes (argmax without one); per row, so resampling rows resamples them."""
    return decision.predict(y_prob) if decision is not None else y_prob.argmax(axis=1)


def _draws(n_groups: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The groups each resample draws: the one place the resampling generator is used.

    Indices and weights both come from here, so every interval of an evaluation (metrics, curves,
    calibration) sees the same resamples for the same seed.

    Yields:
        (G,) int64 group codes, drawn with replacement, one array per resample.
    """
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n_groups, size=n_groups)


def bootstrap_indices(groups: Sequence[str] | np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of `n_boot` cluster-bootstrap resamples.

    Each resample draws as many groups (patients) as there are, with replacement, and takes every
    row of each drawn group, so rows of one patient always move together.

    Args:
        groups: (N,) group id of each row.
        n_boot: number of resamples.
        seed: seed of the resampling generator.

    Yields:
        (M,) int64 indices into the rows (M varies with the sizes of the drawn groups).
    """
    members = _group_members(groups)
    for drawn in _draws(len(members), n_boot, seed):
        yield np.concatenate([members[g] for g in drawn]) if len(drawn) else np.empty(0, dtype=np.int64)


def bootstrap_weights(groups: Sequence[str] | np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The resamples of `bootstrap_indices` as multiplicities: how often each row was drawn.

    Row i's weight in resample b is how many times its group was drawn, so a metric weighted by row b
    equals the metric of the rows `bootstrap_indices` yields b-th (same seed, same draws).

    Args:
        groups: (N,) group id of each row.
        n_boot: number of resamples.
        seed: seed of the resampling generator.

    Returns:
        (n_boot, N) int64; each row sums to the size of its resample. Memory is n_boot x N x 8 bytes.
    """
    codes, n_groups = _group_codes(groups)
    counts = np.zeros((max(n_boot, 0), n_groups), dtype=np.int64)  # (B, G)
    for b, drawn in enumerate(_draws(n_groups, n_boot, seed)):
        counts[b] = np.bincount(drawn, minlength=n_groups)
    return counts[:, codes]


def _group_codes(groups: Sequence[str] | np.ndarray) -> tuple[np.ndarray, int]:
    """(N,) code of each row's group in sorted id order, and the number of groups."""
    ids, codes = np.unique(np.asarray(groups), return_inverse=True)
    return codes.reshape(-1), len(ids)


def _group_members(groups: Sequence[str] | np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct group, groups in sorted id order."""
    codes, _ = _group_codes(groups)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds) if len(order) else []


def weighted_level_counts(
    positive: np.ndarray, score: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted positives and negatives at each distinct score, per resample: what rankings are made of.

    A resample's ROC curve, PR curve and ROC AUC depend only on how many positive and negative rows
    it holds at each score, so they can all be read off these counts (levels a resample misses count 0).

    Args:
        positive: (N,) bool, the rows of the positive class.
        score: (N,) the ranking score.
        weights: (B, N) multiplicities (`bootstrap_weights`).

    Returns:
        (B, L) positive weight and (B, L) negative weight per level, levels in ascending score.
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # first row of each level
    by_rank = weights[:, order]  # (B, N)
    pos = np.add.reduceat(by_rank * positive[order], starts, axis=1)
    neg = np.add.reduceat(by_rank * ~positive[order], starts, axis=1)
    return pos, neg


def _weighted_ovr_auc(y_true: np.ndarray, y_prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, K) one-vs-rest ROC AUC per resample: the weighted Mann-Whitney statistic, ties counted 1/2.

    That is the area under the resample's ROC curve (`roc_auc_score` on its rows); NaN for a class
    without positives or without negatives in the resample, as `compute_ovr_auc`.
    """
    out = np.full((len(weights), y_prob.shape[1]), np.nan)
    for k in range(y_prob.shape[1]):
        pos, neg = weighted_level_counts(y_true == k, y_prob[:, k], weights)  # (B, L) ascending score
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower than each level
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)  # half-integers: exact in float64
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)
    return out


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """(B, K) -> (B,) mean over the non-NaN entries of each row; NaN for a row that has none."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(defined, values, 0.0).sum(axis=1) / count, np.nan)


def weighted_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    y_pred: np.ndarray,
    weights: np.ndarray,
    classes: Sequence[str],
) -> dict[str, np.ndarray]:
    """Every metric of `compute_metrics`, for every resample at once, from multiplicity weights.

    Row b of `weights` stands for the resample that holds row i `weights[b, i]` times; the values
    equal `compute_metrics` on those rows, NaN conventions included (precision 0 for a class present
    but never predicted, NaN for one neither present nor predicted; recall, F1 and AUC NaN for a
    class absent from the resample; macro values skip NaN).

    Args:
        y_true: (N,) class indices.
        y_prob: (N, K) probabilities (ROC AUC ranks by them).
        y_pred: (N,) predicted classes (`decision.predict(y_prob)`: resampling does not change them).
        weights: (B, N) non-negative integer multiplicities, each row with a positive sum.
        classes: class names in index order.

    Returns:
        metric name -> (B,) float64, the keys of `compute_metrics` in its order.
    """
    y_true, y_prob = _check(y_true, y_prob)
    k = len(classes)
    if y_prob.shape[1] != k:
        raise ValueError(f"{y_prob.shape[1]} probability columns for {k} classes")
    y_pred = np.asarray(y_pred, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if y_pred.shape != y_true.shape or weights.ndim != 2 or weights.shape[1] != len(y_true):
        raise ValueError(f"expected predictions ({len(y_true)},) and weights (B, {len(y_true)}), "
                         f"got {y_pred.shape} and {weights.shape}")  # fmt: skip
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    cells = np.zeros((len(y_true), k * k))
    cells[np.arange(len(y_true)), y_true * k + y_pred] = 1.0
    cm = (weights @ cells).reshape(-1, k, k)  # (B, K, K) rows actual, columns predicted; integer counts
    total = cm.sum(axis=(1, 2))[:, None]
    tp = np.diagonal(cm, axis1=1, axis2=2)  # (B, K)
    actual, predicted = cm.sum(axis=2), cm.sum(axis=1)
    negatives = total - actual
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.where(actual > 0, 0.0, np.nan))
        recall = np.where(actual > 0, tp / actual, np.nan)
        f1 = np.where(actual > 0, 2.0 * tp / (actual + predicted), np.nan)  # scikit-learn's form of 2PR/(P+R)
        specificity = np.where(negatives > 0, (negatives - predicted + tp) / negatives, np.nan)
        accuracy = tp.sum(axis=1) / total[:, 0]
    auc = _weighted_ovr_auc(y_true, y_prob, weights)

    per_class = {"precision": precision, "recall": recall, "specificity": specificity, "f1": f1, "auc": auc}
    return _flat_metrics(accuracy, _nanmean_rows(recall), per_class, classes)  # balanced: mean recall of those present


def percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    """Central `ci` percentile interval of bootstrap replicates, ignoring NaN; (NaN, NaN) if all NaN."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = 100.0 * (1.0 - ci) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def cluster_bootstrap(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    decision: DecisionRule | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile confidence interval of every metric of `compute_metrics`, resampling groups.

    Args:
        y_true: (N,) class indices.
        y_prob: (N, K) probabilities.
        groups: (N,) cluster (patient) id of each row.
        classes: class names.
        n_boot: bootstrap resamples.
        ci: coverage, e.g. 0.95.
        seed: resampling seed (same seed -> same intervals).

    Returns:
        metric name -> (low, high); NaN bounds where a metric was undefined in every resample; empty
        without resamples.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    y_true, y_prob = _check(y_true, y_prob)
    if len(np.asarray(groups)) != len(y_true):
        raise ValueError(f"{len(np.asarray(groups))} group ids for {len(y_true)} samples")
    if n_boot <= 0:
        return {}
    weights = bootstrap_weights(groups, n_boot, seed)
    replicates = weighted_metrics(y_true, y_prob, _predict(y_prob, decision), weights, classes)
    return {name: percentile_interval(values, ci) for name, values in replicates.items()}


@dataclass(frozen=True)
class MetricReport:
    """Point estimates, confidence intervals and caveats of one evaluation.

    Attributes:
        point: metric name -> value (NaN where undefined).
        interval: metric name -> (low, high) bootstrap percentile interval.
        ci: coverage of the intervals.
        n_samples: evaluated units (images or studies).
        n_groups: resampled clusters (patients).
        n_boot: bootstrap resamples.
        notes: human-readable caveats (absent classes, undefined metrics).
    """

    point: dict[str, float]
    interval: dict[str, tuple[float, float]]
    ci: float
    n_samples: int
    n_groups: int
    n_boot: int
    notes: list[str] = field(default_factory=list)

    def flat(self) -> dict[str, float | int | None]:
        """DVC-metrics form: "m", "m_ci_low", "m_ci_high" per metric, plus counts; NaN -> None (JSON null)."""
        out: dict[str, float | int | None] = {}
        for name, value in self.point.items():
            low, high = self.interval.get(name, (math.nan, math.nan))
            out[name] = _none_if_nan(value)
            out[f"{name}_ci_low"] = _none_if_nan(low)
            out[f"{name}_ci_high"] = _none_if_nan(high)
        out.update(n_samples=self.n_samples, n_patients=self.n_groups, n_boot=self.n_boot)
        return out


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def evaluate_predictions(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    decision: DecisionRule | None = None,
) -> MetricReport:
    """Point metrics at the decision rule's predictions, patient-bootstrap intervals and notes, in one report."""
    point = compute_metrics(y_true, y_prob, classes, decision)
    interval = cluster_bootstrap(y_true, y_prob, groups, classes, n_boot, ci, seed, decision) if n_boot > 0 else {}
    notes = [
        f"class {name!r} has no sample in the evaluated set: its recall, F1 and ROC AUC are undefined (NaN) "
        "and the macro averages are over the other classes"
        for name in absent_classes(y_true, classes)
    ]
    n_groups = len(np.unique(np.asarray(groups)))
    if n_boot > 0 and n_groups < 10:
        notes.append(f"only {n_groups} patients: bootstrap intervals are rough")
    return MetricReport(point, interval, ci, len(np.asarray(y_true)), n_groups, n_boot, notes)


def aggregate_by_study(
    predictions: pd.DataFrame, classes: Sequence[str], decision: DecisionRule | None = None
) -> pd.DataFrame:
    """Mean view probabilities per study -> one row per study.

    Args:
        predictions: per-image rows with study_id, patient_id, label and `p_<class>` columns.
        classes: class names in index order.
        decision: how a study's mean probabilities become its class (default: argmax).

    Returns:
        study_id, patient_id, n_views, label, predicted, p_<class>..., in first-appearance order.

    Raises:
        ValueError: a study whose images carry different labels or patients.
    """
    prob_cols = [f"p_{c}" for c in classes]
    grouped = predictions.groupby("study_id", sort=False)
    for column in ("label", "patient_id"):
        mixed = grouped[column].nunique()
        if (mixed > 1).any():
            raise ValueError(f"{int((mixed > 1).sum())} study/studies with images of different {column}s")
    studies = grouped.agg(
        patient_id=("patient_id", "first"), n_views=("label", "size"), label=("label", "first")
    ).join(grouped[prob_cols].mean())
    mean = studies[prob_cols].to_numpy()
    studies["predicted"] = [classes[i] for i in (decision.predict(mean) if decision else mean.argmax(axis=1))]
    return studies.reset_index()[["study_id", "patient_id", "n_views", "label", "predicted", *prob_cols]]


def balanced_accuracy_of(y_true: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in `y_true` (what an imbalanced task is judged by)."""
    recalls = [float(np.mean(predicted[y_true == k] == k)) for k in range(num_classes) if np.any(y_true == k)]
    return float(np.mean(recalls)) if recalls else float("nan")


def fit_logit_offsets(
    probabilities: np.ndarray,
    y_true: np.ndarray,
    *,
    grid: np.ndarray | None = None,
    sweeps: int = 3,
) -> tuple[tuple[float, ...], float, float]:
    """Per-class log-probability offsets that maximise balanced accuracy (the operating point).

    The class 0 offset stays 0 (only differences matter). Coordinate ascent over `grid` (for two
    classes one sweep is an exact threshold search); among equal scores the offset closest to 0 wins,
    so a rule that gains nothing stays argmax.

    Args:
        probabilities: (N, K) class probabilities of a split the model did not train on (validation).
        y_true: (N,) class indices.

    Returns:
        (offsets, balanced accuracy at the offsets, balanced accuracy at argmax).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_true = np.asarray(y_true)
    k = probabilities.shape[1]
    logp = np.log(np.clip(probabilities, 1e-12, None))
    grid = np.round(np.arange(-4.0, 4.0001, 0.05), 4) if grid is None else np.asarray(grid)
    grid = grid[np.argsort(np.abs(grid), kind="stable")]  # ties go to the smallest shift

    def score(offsets: np.ndarray) -> float:
        return balanced_accuracy_of(y_true, (logp + offsets).argmax(axis=1), k)

    offsets = np.zeros(k)
    baseline = best = score(offsets)
    for _ in range(sweeps if k > 2 else 1):
        improved = False
        for c in range(1, k):
            for value in grid:
                trial = offsets.copy()
                trial[c] = value
                s = score(trial)
                if s > best + 1e-12:
                    best, offsets, improved = s, trial, True
        if not improved:
            break
    return tuple(float(o) for o in offsets), float(best), float(baseline)


@dataclass(frozen=True)
class PairedDifference:
    """Challenger minus champion in one metric, on the same units, with a paired bootstrap interval.

    Both models are scored on every resample of the same patients, so the interval reflects how
    much the *difference* moves with the test set, not each model's own (much wider) interval.
    """

    metric: str
    challenger: float
    champion: float
    difference: float
    ci_low: float
    ci_high: float
    ci: float
    n_boot: int
    n_units: int
    n_groups: int

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {k: (_none_if_nan(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def paired_bootstrap_difference(
    y_true: np.ndarray,
    challenger_prob: np.ndarray,
    champion_prob: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    classes: Sequence[str],
    metric: str,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """metric(challenger) - metric(champion) and its patient-bootstrap percentile interval.

    Args:
        y_true: (N,) class indices of the shared units (studies), in the same order for both models.
        challenger_prob, champion_prob: (N, K) probabilities of each model on those units (argmax
            is each model's prediction, as in `compute_metrics`).
        groups: (N,) patient of each unit; resampled as clusters.
        metric: a key of `compute_metrics`, e.g. "macro_f1".
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    y_true, challenger_prob = _check(y_true, challenger_prob)
    _, champion_prob = _check(y_true, champion_prob)
    if challenger_prob.shape != champion_prob.shape:
        raise ValueError(f"challenger {challenger_prob.shape} and champion {champion_prob.shape} probabilities differ")
    if len(np.asarray(groups)) != len(y_true):
        raise ValueError(f"{len(np.asarray(groups))} group ids for {len(y_true)} samples")

    def value(prob: np.ndarray) -> float:
        metrics = compute_metrics(y_true, prob, classes)
        if metric not in metrics:
            raise ValueError(f"unknown metric {metric!r}; known: {sorted(metrics)}")
        return metrics[metric]

    a, b = value(challenger_prob), value(champion_prob)
    low = high = math.nan
    if n_boot > 0:
        weights = bootstrap_weights(groups, n_boot, seed)  # both models on the same resamples

        def replicates(prob: np.ndarray) -> np.ndarray:
            return weighted_metrics(y_true, prob, _predict(prob, None), weights, classes)[metric]

        low, high = percentile_interval(replicates(challenger_prob) - replicates(champion_prob), ci)
    n_groups = len(np.unique(np.asarray(groups)))
    return PairedDifference(metric, a, b, a - b, low, high, ci, n_boot, len(y_true), n_groups)
