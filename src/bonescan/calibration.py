"""Calibration: do the probabilities mean what they say? Reliability diagram, expected calibration error,
Brier score with patient-bootstrap intervals, and temperature scaling fitted on the validation split.

A reader of a report weighs "metastasis 0.9" differently from "metastasis 0.55"; that is only fair if,
of all units given 0.9, about 90 % are right. The reliability diagram bins units by their top-label
confidence (scikit-learn's `calibration_curve` over "the predicted class is right"); the expected
calibration error (ECE) is the count-weighted gap between confidence and accuracy over those bins
(torchmetrics' `multiclass_calibration_error`, L1, equal-width bins); the Brier score is the mean
squared distance of the probability vector from the one-hot label (summed over classes, range [0, 2];
scikit-learn's `brier_score_loss` with `scale_by_half=False`). Intervals resample patients with
`bonescan.metrics`, as every other interval of the evaluation does; the Brier replicates are weighted
means of the per-unit terms over all resamples at once (scikit-learn per resample cost seconds).

Temperature scaling (Guo et al. 2017) divides the logits by one scalar T fitted by maximum likelihood on
the validation split; it changes no argmax, only confidence. Saved probabilities stand in for logits:
softmax(log p / T) equals softmax(z / T) because softmax ignores a per-row constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from bonescan.metrics import bootstrap_indices, bootstrap_weights, percentile_interval

__all__ = [
    "CalibrationReport",
    "apply_temperature",
    "assess_calibration",
    "brier_score",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "save_reliability_png",
]

_TEMPERATURE_BOUNDS = (0.05, 20.0)  # beyond these a model is broken, not miscalibrated
_EPS = 1e-12


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE over `n_bins` equal-width confidence bins (torchmetrics, L1 norm)."""
    y_prob = np.asarray(y_prob, dtype=np.float64)
    return float(multiclass_calibration_error(
        torch.as_tensor(y_prob, dtype=torch.float64), torch.as_tensor(np.asarray(y_true), dtype=torch.long),
        num_classes=y_prob.shape[1], n_bins=n_bins, norm="l1", validate_args=False,
    ))  # fmt: skip


def _normalised(y_prob: np.ndarray) -> np.ndarray:
    y_prob = np.asarray(y_prob, dtype=np.float64)
    return y_prob / y_prob.sum(axis=1, keepdims=True)  # float32 softmax rows miss 1 by more than sklearn allows


def _brier_terms(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """(N,) each unit's sum_k (p_k - [y = k])^2: the Brier score is their mean."""
    y_prob = _normalised(y_prob)
    return ((np.eye(y_prob.shape[1])[np.asarray(y_true, dtype=np.int64)] - y_prob) ** 2).sum(axis=1)


def brier_score(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Multi-class Brier score: mean over units of sum_k (p_k - [y = k])^2, in [0, 2]."""
    y_prob = _normalised(y_prob)
    return float(brier_score_loss(np.asarray(y_true), y_prob, labels=np.arange(y_prob.shape[1]),
                                  scale_by_half=False))  # fmt: skip


def reliability_bins(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """The reliability diagram's points: per non-empty confidence bin, mean confidence, accuracy, count.

    Returns:
        columns confidence, accuracy, count, bin_low, bin_high (one row per non-empty bin).
    """
    y_prob = np.asarray(y_prob, dtype=np.float64)
    confidence = y_prob.max(axis=1)
    correct = (y_prob.argmax(axis=1) == np.asarray(y_true)).astype(int)
    accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], confidence)  # calibration_curve's own binning
    counts = np.bincount(ids, minlength=n_bins)
    used = np.flatnonzero(counts)
    return pd.DataFrame({"confidence": mean_conf, "accuracy": accuracy, "count": counts[used],
                         "bin_low": edges[used], "bin_high": edges[used + 1]})  # fmt: skip


def apply_temperature(y_prob: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): (N, K) probabilities with the same argmax, sharper (T < 1) or softer (T > 1)."""
    logits = np.log(np.clip(np.asarray(y_prob, dtype=np.float64), _EPS, None))
    return softmax(logits / temperature, axis=1)


def fit_temperature(y_prob: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `y_true` (a split not trained on).

    Args:
        y_prob: (N, K) probabilities of the validation split.
        y_true: (N,) class indices.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        raise ValueError("no validation units to fit a temperature on")
    logits = np.log(np.clip(np.asarray(y_prob, dtype=np.float64), _EPS, None))
    rows = np.arange(len(y_true))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t), axis=1)[rows, y_true].mean())

    low, high = (math.log(b) for b in _TEMPERATURE_BOUNDS)
    best = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(best.x))


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration of one set of probabilities.

    Attributes:
        ece: expected calibration error (top label, L1).
        ece_interval: patient-bootstrap percentile interval of the ECE.
        brier: multi-class Brier score.
        brier_interval: its interval.
        bins: the reliability diagram (`reliability_bins`).
        n_bins: equal-width bins.
        temperature: the temperature applied before measuring (None: raw probabilities).
    """

    ece: float
    ece_interval: tuple[float, float]
    brier: float
    brier_interval: tuple[float, float]
    bins: pd.DataFrame = field(repr=False)
    n_bins: int = 10
    temperature: float | None = None

    def flat(self, suffix: str = "") -> dict[str, float | None]:
        """DVC-metrics form: ece, ece_ci_low, ece_ci_high, brier, ... (suffix e.g. "_calibrated")."""
        out: dict[str, float | None] = {}
        for name, value, (low, high) in (("ece", self.ece, self.ece_interval),
                                         ("brier", self.brier, self.brier_interval)):  # fmt: skip
            out[f"{name}{suffix}"] = _round(value)
            out[f"{name}{suffix}_ci_low"] = _round(low)
            out[f"{name}{suffix}_ci_high"] = _round(high)
        return out


def _round(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def assess_calibration(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: np.ndarray,
    *,
    n_bins: int = 10,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    temperature: float | None = None,
) -> CalibrationReport:
    """ECE and Brier score with patient-bootstrap intervals, and the reliability diagram's bins.

    Args:
        y_true: (N,) class indices.
        y_prob: (N, K) probabilities (already temperature-scaled if `temperature` is given).
        groups: (N,) patient of each unit.
        n_bins: equal-width confidence bins.
        n_boot: resamples; 0: no intervals (NaN).
        ci: coverage.
        seed: resampling seed.
        temperature: recorded only: the temperature `y_prob` was scaled with.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    eces = [expected_calibration_error(y_true[idx], y_prob[idx], n_bins)
            for idx in (bootstrap_indices(groups, n_boot, seed) if n_boot > 0 else ())]  # fmt: skip
    briers = np.empty(0)
    if n_boot > 0:
        weights = bootstrap_weights(groups, n_boot, seed).astype(np.float64)  # the resamples of the ECE's
        briers = weights @ _brier_terms(y_true, y_prob) / weights.sum(axis=1)
    return CalibrationReport(
        expected_calibration_error(y_true, y_prob, n_bins), percentile_interval(np.asarray(eces), ci),
        brier_score(y_true, y_prob), percentile_interval(briers, ci),
        reliability_bins(y_true, y_prob, n_bins), n_bins, temperature,
    )  # fmt: skip


def save_reliability_png(
    raw: CalibrationReport, path: str | Path, calibrated: CalibrationReport | None = None, title: str = ""
) -> Path:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), bin counts below."""
    fig = Figure(figsize=(4.2, 4.6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    series = [("raw", raw, "tab:blue")] + ([("temperature-scaled", calibrated, "tab:orange")] if calibrated else [])
    width = 1.0 / raw.n_bins
    for offset, (name, report, colour) in enumerate(series):
        label = f"{name}: ECE {report.ece:.3f}" + (f" (T = {report.temperature:.2f})" if report.temperature else "")
        top.plot(report.bins["confidence"], report.bins["accuracy"], "o-", color=colour, ms=4, label=label)
        shift = (offset - (len(series) - 1) / 2) * width / len(series)
        bottom.bar(report.bins["bin_low"] + width / 2 + shift, report.bins["count"], width=width / len(series) * 0.9,
                   color=colour, alpha=0.7)  # fmt: skip
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="accuracy (fraction correct)")
    top.legend(fontsize=7, loc="upper left")
    bottom.set(xlabel="confidence (top-label probability)", ylabel="units")
    for ax in (top, bottom):
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
    fig.suptitle(title or "reliability diagram", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
