"""One-vs-rest ROC and precision-recall curves with patient-bootstrap bands, the operating point, and
training curves: as data (DVC plot files) and as pictures (PNG).

The curves themselves come from scikit-learn (`roc_curve`, `precision_recall_curve`); this module only
resamples them. A band is the pointwise percentile interval of the curves of the patient-bootstrap
resamples of `bonescan.metrics` (the same resampling as the metric intervals: a patient's studies move
together), read on a common grid: true-positive rate at each false-positive rate for ROC, and
interpolated precision (the best precision at that recall or above, as in Pascal VOC) at each recall
for PR. The operating point is where the saved model's `DecisionRule` sits on each class's curve: an
ROC curve shows every threshold, the point shows the one the model actually uses.

The resamples' curves are not recomputed by scikit-learn one by one (its input validation dominated
evaluate's time): they are read off weighted cumulative counts over the score levels of the whole
set (`bonescan.metrics.weighted_level_counts`), point for point the curves `roc_curve` and
`precision_recall_curve` give on the resampled rows (tested).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from bonescan.metrics import bootstrap_weights, compute_confusion, weighted_level_counts
from bonescan.runtime import atomic_path

__all__ = [
    "ClassCurve",
    "CurveSet",
    "ovr_curves",
    "save_curves_png",
    "save_training_curves_png",
    "write_curve_plots",
]

KINDS = ("roc", "pr")
_AXES = {"roc": ("fpr", "tpr"), "pr": ("recall", "precision")}  # (x, y) column names of the plot files
_LABELS = {"roc": ("false-positive rate (1 - specificity)", "true-positive rate (sensitivity)"),
           "pr": ("recall (sensitivity)", "precision (PPV)")}  # fmt: skip


@dataclass(frozen=True)
class ClassCurve:
    """One class's one-vs-rest curve, its bootstrap band and the model's operating point on it.

    Attributes:
        name: the class (positive) name.
        kind: "roc" (x FPR, y TPR) or "pr" (x recall, y precision).
        x, y: (M,) the curve of the evaluated units, from scikit-learn.
        area: ROC AUC or average precision.
        grid: (G,) x values of the band.
        low, high: (G,) pointwise percentile interval of y on `grid` (NaN without resamples).
        point: (x, y) of the decision rule's predictions for this class.
        prevalence: share of positives (the PR curve of a random ranking).
    """

    name: str
    kind: str
    x: np.ndarray
    y: np.ndarray
    area: float
    grid: np.ndarray
    low: np.ndarray
    high: np.ndarray
    point: tuple[float, float]
    prevalence: float

    def on_grid(self) -> np.ndarray:
        """(G,) the curve itself on the band's grid."""
        return _on_grid(self.kind, self.x, self.y, self.grid)


@dataclass(frozen=True)
class CurveSet:
    """Every class's ROC and PR curves of one evaluation.

    Attributes:
        curves: kind -> the curves of the classes that have positives and negatives, in class order.
        ci: coverage of the bands.
        n_boot: resamples behind the bands (0: no bands).
        skipped: classes without a curve (no positive or no negative unit), with the reason.
    """

    curves: Mapping[str, list[ClassCurve]]
    ci: float
    n_boot: int
    skipped: Mapping[str, str]


def _roc(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(positive, score)
    return fpr, tpr


def _pr(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    precision, recall, _ = precision_recall_curve(positive, score)
    return recall, precision


_CURVE = {"roc": _roc, "pr": _pr}


def _on_grid(kind: str, x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A curve read at `grid`: TPR (the highest at a given FPR) or interpolated precision."""
    if kind == "roc":
        xs, inverse = np.unique(x, return_inverse=True)  # vertical steps: keep their top
        top = np.full(len(xs), -np.inf)
        np.maximum.at(top, inverse, y)
        return np.interp(grid, xs, top)
    order = np.argsort(x, kind="stable")
    xs, best = x[order], np.maximum.accumulate(y[order][::-1])[::-1]  # best precision at recall >= x
    at = np.searchsorted(xs, grid, side="left")
    return np.where(at < len(xs), best[np.minimum(at, len(xs) - 1)], 0.0)


def _roc_corners(pos: np.ndarray, neg: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(B, L) the levels `roc_curve` keeps: present, and not dropped as collinear (`drop_intermediate`).

    scikit-learn drops a threshold whose step (new negatives, new positives) equals the next present
    threshold's step, except the first and the last. The reading on the grid interpolates between the
    tops of vertical steps, so such a point would change the band there: it is dropped here too.

    Args:
        pos, neg: (B, L) weight per level, levels in descending score.
        present: (B, L) levels with any weight in the resample (the resample's thresholds).
    """
    n_boot, n_levels = pos.shape
    at = np.where(present, np.arange(n_levels), n_levels)
    upcoming = np.minimum.accumulate(at[:, ::-1], axis=1)[:, ::-1]  # first present level at or after j
    after = np.concatenate([upcoming[:, 1:], np.full((n_boot, 1), n_levels)], axis=1)  # ... after j
    pad = np.full((n_boot, 1), np.nan)
    next_pos = np.take_along_axis(np.concatenate([pos, pad], axis=1), after, axis=1)
    next_neg = np.take_along_axis(np.concatenate([neg, pad], axis=1), after, axis=1)
    first = np.cumsum(present, axis=1) == 1
    last = after == n_levels
    return present & (first | last | (next_pos != pos) | (next_neg != neg))


def _resampled_curves(pos: np.ndarray, neg: np.ndarray) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """scikit-learn's ROC and PR points of each resample that has positives and negatives.

    Args:
        pos, neg: (B, L) weighted positives and negatives per score level, levels in descending score.

    Returns:
        per kept resample, kind -> (x, y) as `_CURVE[kind]` gives them on the resampled rows.
    """
    n_boot = len(pos)
    tps, fps = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    n_pos, n_neg = tps[:, -1:], fps[:, -1:]
    present = (pos + neg) > 0  # a level no drawn row holds is no threshold (and has tp + fp = 0 at the top)
    zeros, ones, always = np.zeros((n_boot, 1)), np.ones((n_boot, 1)), np.ones((n_boot, 1), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        # ROC from (0, 0) up; PR from the lowest threshold (recall 1) down, ending at (0, 1), as sklearn.
        fpr = np.concatenate([zeros, fps], axis=1) / n_neg
        tpr = np.concatenate([zeros, tps], axis=1) / n_pos
        recall = np.concatenate([(tps / n_pos)[:, ::-1], zeros], axis=1)
        precision = np.concatenate([(tps / (tps + fps))[:, ::-1], ones], axis=1)
    on_roc = np.concatenate([always, _roc_corners(pos, neg, present)], axis=1)
    on_pr = np.concatenate([present[:, ::-1], always], axis=1)
    defined = (n_pos[:, 0] > 0) & (n_neg[:, 0] > 0)  # else undefined: left out, as the metric intervals do
    return [{"roc": (fpr[b, on_roc[b]], tpr[b, on_roc[b]]),
             "pr": (recall[b, on_pr[b]], precision[b, on_pr[b]])} for b in np.flatnonzero(defined)]  # fmt: skip


def _operating_point(kind: str, cm: np.ndarray, k: int) -> tuple[float, float]:
    tp = cm[k, k]
    fn = cm[k].sum() - tp
    fp = cm[:, k].sum() - tp
    tn = cm.sum() - tp - fn - fp
    recall = tp / (tp + fn) if tp + fn else math.nan
    if kind == "roc":
        return (fp / (fp + tn) if fp + tn else math.nan), recall
    return recall, (tp / (tp + fp) if tp + fp else math.nan)


def ovr_curves(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    y_pred: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    points: int = 101,
) -> CurveSet:
    """Per class one-vs-rest ROC and PR curves with patient-bootstrap bands and the operating point.

    Args:
        y_true: (N,) class indices.
        y_prob: (N, K) probabilities; class k's column is its score.
        y_pred: (N,) the decision rule's predictions (the operating point).
        groups: (N,) patient of each unit (bootstrap clusters).
        classes: class names in index order.
        n_boot: resamples; 0 gives curves without bands.
        ci: coverage of the bands.
        seed: resampling seed (the metric intervals' seed gives the same resamples).
        points: size of the band grid on [0, 1].
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if len(np.asarray(groups)) != len(y_true):
        raise ValueError(f"{len(np.asarray(groups))} group ids for {len(y_true)} units")
    grid = np.linspace(0.0, 1.0, points)
    cm = compute_confusion(y_true, y_pred, len(classes))
    present, skipped = [], {}
    for k, name in enumerate(classes):
        n_pos = int((y_true == k).sum())
        if n_pos == 0 or n_pos == len(y_true):
            skipped[name] = "no positive unit" if n_pos == 0 else "no negative unit"
        else:
            present.append(k)

    samples: dict[tuple[str, int], list[np.ndarray]] = {(kind, k): [] for kind in KINDS for k in present}
    if n_boot > 0 and present:
        weights = bootstrap_weights(groups, n_boot, seed).astype(np.float64)  # (B, N)
        for k in present:
            pos, neg = weighted_level_counts(y_true == k, y_prob[:, k], weights)
            for resample in _resampled_curves(pos[:, ::-1], neg[:, ::-1]):  # thresholds high to low
                for kind in KINDS:
                    samples[kind, k].append(_on_grid(kind, *resample[kind], grid))

    tail = 100.0 * (1.0 - ci) / 2.0
    curves: dict[str, list[ClassCurve]] = {kind: [] for kind in KINDS}
    for k in present:
        positive = y_true == k
        areas = {"roc": roc_auc_score(positive, y_prob[:, k]), "pr": average_precision_score(positive, y_prob[:, k])}
        for kind in KINDS:
            x, y = _CURVE[kind](positive, y_prob[:, k])
            drawn = np.asarray(samples[kind, k])
            if len(drawn):
                low, high = np.percentile(drawn, [tail, 100.0 - tail], axis=0)
            else:
                low = high = np.full(len(grid), np.nan)
            curves[kind].append(ClassCurve(
                classes[k], kind, x, y, float(areas[kind]), grid, low, high,
                _operating_point(kind, cm, k), float(positive.mean()),
            ))  # fmt: skip
    return CurveSet(curves, ci, n_boot, skipped)


def _file_name(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name) + ".csv"


def write_curve_plots(curves: CurveSet, plots_dir: str | Path) -> dict[str, Path]:
    """DVC plot files: `roc/<class>.csv` (fpr, tpr, tpr_ci_low, tpr_ci_high) and `pr/<class>.csv`.

    Each file holds the curve and its band on the band's grid, so one chart draws all three lines.
    Files of classes that no longer have a curve are removed (a stale curve must not pass for today's).
    """
    written: dict[str, Path] = {}
    for kind in KINDS:
        folder = Path(plots_dir) / kind
        folder.mkdir(parents=True, exist_ok=True)
        keep = set()
        x_name, y_name = _AXES[kind]
        for curve in curves.curves[kind]:
            frame = pd.DataFrame({x_name: curve.grid, y_name: curve.on_grid(),
                                  f"{y_name}_ci_low": curve.low, f"{y_name}_ci_high": curve.high})  # fmt: skip
            path = folder / _file_name(curve.name)
            with atomic_path(path) as tmp:
                frame.to_csv(tmp, index=False, float_format="%.6f")
            keep.add(path.name)
        for stale in folder.glob("*.csv"):
            if stale.name not in keep:
                stale.unlink()
        written[f"{kind}_plots"] = folder
    return written


def save_curves_png(curves: CurveSet, kind: str, path: str | Path, title: str = "") -> Path:
    """One panel per class: the curve, its band (shaded) and the operating point (a marked dot)."""
    shown = curves.curves[kind]
    cols = max(1, len(shown))
    fig = Figure(figsize=(3.2 * cols, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cols, squeeze=False)[0]
    x_label, y_label = _LABELS[kind]
    pct = round(100 * curves.ci)
    for ax, curve in zip(axes, shown, strict=False):
        if np.isfinite(curve.low).any():
            ax.fill_between(curve.grid, curve.low, curve.high, color="tab:blue", alpha=0.2, step=None,
                            label=f"{pct} % patient bootstrap")  # fmt: skip
        ax.plot(curve.x, curve.y, color="tab:blue", lw=1.5, drawstyle="steps-post",  # as scikit-learn's displays
                label=f"{'AUC' if kind == 'roc' else 'AP'} {curve.area:.3f}")  # fmt: skip
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        else:
            ax.axhline(curve.prevalence, color="grey", lw=0.8, ls="--", label=f"prevalence {curve.prevalence:.2f}")
        if all(math.isfinite(v) for v in curve.point):
            ax.plot(*curve.point, "o", color="tab:red", ms=6, label="operating point")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=curve.name, xlabel=x_label)
        ax.set_ylabel(y_label, fontsize=8)
        ax.xaxis.label.set_size(8)
        ax.title.set_size(9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right" if kind == "roc" else "lower left")
    for ax in axes[len(shown):]:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no curve: a class lacks positives or negatives", ha="center", fontsize=7)
    fig.suptitle(title or ("ROC curves (one vs rest)" if kind == "roc" else "precision-recall curves (one vs rest)"),
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def save_training_curves_png(history: Sequence[Mapping[str, object]], path: str | Path, title: str = "") -> Path | None:
    """Loss (train and val) and the validation metrics per epoch, from a classifier file's history.

    Returns None, writing nothing, for an empty history (a model saved without training).
    """
    frame = pd.DataFrame(list(history))
    if frame.empty or "epoch" not in frame:
        return None
    fig = Figure(figsize=(8.0, 3.2))
    FigureCanvasAgg(fig)
    loss_ax, metric_ax = fig.subplots(1, 2)
    for column in ("train_loss", "val_loss"):
        if column in frame:
            loss_ax.plot(frame["epoch"], frame[column], marker=".", label=column)
    for column in ("val_macro_f1", "val_accuracy"):
        if column in frame:
            metric_ax.plot(frame["epoch"], frame[column], marker=".", label=column)
    loss_ax.set(xlabel="epoch", title="loss")
    metric_ax.set(xlabel="epoch", title="validation", ylim=(-0.02, 1.02))
    for ax in (loss_ax, metric_ax):
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(title or "classifier training", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
