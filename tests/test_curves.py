"""One-vs-rest ROC and PR curves: scikit-learn's curves, patient-bootstrap bands, the operating point, the DVC
plot files and the pictures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from bonescan.curves import _on_grid, ovr_curves, save_curves_png, save_training_curves_png, write_curve_plots
from bonescan.metrics import bootstrap_indices

CLASSES = ("healthy", "metastasis", "benign")


def _scores(n: int = 60, seed: int = 0):
    """Labels, informative probabilities, and two units per patient."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 3, n // 2), 2)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.5
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    groups = np.repeat([f"P{i}" for i in range(n // 2)], 2)
    return y, prob, groups


def test_each_classs_curve_and_area_are_scikit_learns_one_vs_rest_curve():
    y, prob, groups = _scores()
    curves = ovr_curves(y, prob, prob.argmax(1), groups, CLASSES, n_boot=0)
    for k, curve in enumerate(curves.curves["roc"]):
        fpr, tpr, _ = roc_curve(y == k, prob[:, k])
        np.testing.assert_array_equal(curve.x, fpr)
        np.testing.assert_array_equal(curve.y, tpr)
        assert curve.area == pytest.approx(roc_auc_score(y == k, prob[:, k]))
    for k, curve in enumerate(curves.curves["pr"]):
        assert curve.area == pytest.approx(average_precision_score(y == k, prob[:, k]))
        assert curve.prevalence == pytest.approx(np.mean(y == k))
    assert all(np.isnan(c.low).all() for c in curves.curves["roc"]), "no resamples, no band"


def test_the_band_mostly_brackets_the_curve_and_is_reproducible():
    y, prob, groups = _scores()
    first = ovr_curves(y, prob, prob.argmax(1), groups, CLASSES, n_boot=200, seed=3)
    again = ovr_curves(y, prob, prob.argmax(1), groups, CLASSES, n_boot=200, seed=3)
    for kind in ("roc", "pr"):
        for a, b in zip(first.curves[kind], again.curves[kind], strict=True):
            np.testing.assert_array_equal(a.low, b.low)
            inside = (a.low - 1e-9 <= a.on_grid()) & (a.on_grid() <= a.high + 1e-9)
            assert inside.mean() > 0.9, (kind, a.name)
            assert (a.high - a.low).max() > 0.05, "a real band, not a line"


def _tied_uneven(seed: int):
    """Labels, probabilities rounded to 0.05 (many tied scores), 30 patients of 1-4 units, and benign held
    by two patients only (absent from some resamples)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"P{i:02d}" for i in range(30)], rng.integers(1, 5, 30))
    rng.shuffle(groups)
    y = np.where(np.isin(groups, ["P00", "P01"]), 2, rng.integers(0, 2, len(groups)))
    logits = rng.normal(0, 1, (len(y), 3))
    logits[np.arange(len(y)), y] += 1.5
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, np.round(prob / 0.05) * 0.05, groups


def _sklearn_bands(y, prob, groups, n_boot, seed, ci, grid):
    """The reference: scikit-learn's curves of each resample's rows, read on the grid, then percentiles."""
    drawn = {(kind, k): [] for kind in ("roc", "pr") for k in range(3)}
    for idx in bootstrap_indices(groups, n_boot, seed):
        for k in range(3):
            positive = y[idx] == k
            if positive.all() or not positive.any():
                continue
            fpr, tpr, _ = roc_curve(positive, prob[idx, k])
            precision, recall, _ = precision_recall_curve(positive, prob[idx, k])
            drawn["roc", k].append(_on_grid("roc", fpr, tpr, grid))
            drawn["pr", k].append(_on_grid("pr", recall, precision, grid))
    tail = 100.0 * (1.0 - ci) / 2.0
    return {key: (np.percentile(rows, [tail, 100.0 - tail], axis=0), len(rows))
            for key, rows in drawn.items()}  # fmt: skip


@pytest.mark.parametrize("seed", [0, 5])
def test_bands_equal_scikit_learns_curves_of_each_resample_read_on_the_grid(seed):
    y, prob, groups = _tied_uneven(seed)
    curves = ovr_curves(y, prob, prob.argmax(1), groups, CLASSES, n_boot=150, ci=0.9, seed=seed, points=51)
    want = _sklearn_bands(y, prob, groups, 150, seed, 0.9, curves.curves["roc"][0].grid)
    assert want["roc", 2][1] < 150, "benign is missing from some resamples: those are left out"
    for kind in ("roc", "pr"):
        assert [c.name for c in curves.curves[kind]] == list(CLASSES)
        for k, curve in enumerate(curves.curves[kind]):
            (low, high), _ = want[kind, k]
            np.testing.assert_allclose(curve.low, low, rtol=0, atol=1e-12, err_msg=f"{kind} {curve.name}")
            np.testing.assert_allclose(curve.high, high, rtol=0, atol=1e-12, err_msg=f"{kind} {curve.name}")


def test_bands_resample_patients_so_one_patient_gives_no_spread():
    """Every resample of a single patient is the whole set: image-level resampling would spread."""
    y, prob, _ = _scores()
    curves = ovr_curves(y, prob, prob.argmax(1), np.array(["P0"] * len(y)), CLASSES, n_boot=30)
    for curve in curves.curves["roc"]:
        np.testing.assert_allclose(curve.low, curve.high)
        np.testing.assert_allclose(curve.low, curve.on_grid())


def test_the_band_leaves_out_the_collinear_points_roc_curve_drops_as_the_curve_does():
    """With one patient every resample is the whole set, so the band is the curve itself on the grid.

    Three negatives in a row make two collinear points that roc_curve drops; the grid reading joins the
    tops of vertical steps, so keeping them would lower the band at FPR 1/2 from 0.75 to 0.5.
    """
    score = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    y = np.array([1, 0, 0, 0, 1])
    prob = np.stack([1 - score, score], axis=1)
    one_patient = np.array(["P0"] * 5)
    curves = ovr_curves(y, prob, prob.argmax(1), one_patient, ("healthy", "metastasis"), n_boot=5, points=5)
    roc = curves.curves["roc"][1]
    np.testing.assert_allclose(roc.on_grid(), [0.5, 0.625, 0.75, 0.875, 1.0])
    for curve in (*curves.curves["roc"], *curves.curves["pr"]):
        np.testing.assert_array_equal(curve.low, curve.on_grid())
        np.testing.assert_array_equal(curve.high, curve.on_grid())


def test_the_operating_point_is_where_the_decision_rule_predicts():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    prob = np.full((8, 3), 1 / 3)
    predicted = np.array([0, 0, 1, 1, 0, 2, 2, 0])
    curves = ovr_curves(y, prob, predicted, np.arange(8).astype(str), CLASSES, n_boot=0)
    roc = {c.name: c.point for c in curves.curves["roc"]}
    pr = {c.name: c.point for c in curves.curves["pr"]}
    assert roc["healthy"] == pytest.approx((2 / 5, 2 / 3))  # FP: one metastasis, one benign; TP 2 of 3
    assert pr["healthy"] == pytest.approx((2 / 3, 2 / 4))
    assert roc["benign"] == pytest.approx((0.0, 2 / 3)) and pr["benign"] == pytest.approx((2 / 3, 1.0))


def test_a_class_without_positives_has_no_curve_and_says_why():
    y, prob, groups = _scores()
    y = np.where(y == 2, 0, y)
    curves = ovr_curves(y, prob, prob.argmax(1), groups, CLASSES, n_boot=10)
    assert [c.name for c in curves.curves["roc"]] == ["healthy", "metastasis"]
    assert curves.skipped == {"benign": "no positive unit"}


def test_plot_files_hold_curve_and_band_per_class_and_stale_classes_are_removed(tmp_path):
    y, prob, groups = _scores()
    (tmp_path / "roc").mkdir()
    (tmp_path / "roc" / "old_class.csv").write_text("fpr,tpr\n0,0\n")
    write_curve_plots(ovr_curves(y, prob, prob.argmax(1), groups, CLASSES, n_boot=20, points=11), tmp_path)

    assert sorted(p.name for p in (tmp_path / "roc").iterdir()) == ["benign.csv", "healthy.csv", "metastasis.csv"]
    roc = pd.read_csv(tmp_path / "roc" / "healthy.csv")
    pr = pd.read_csv(tmp_path / "pr" / "healthy.csv")
    assert list(roc.columns) == ["fpr", "tpr", "tpr_ci_low", "tpr_ci_high"] and len(roc) == 11
    assert list(pr.columns) == ["recall", "precision", "precision_ci_low", "precision_ci_high"]
    assert roc["tpr"].is_monotonic_increasing and roc["tpr"].iloc[-1] == 1.0


def test_curve_and_training_pictures_are_written_and_an_empty_history_draws_nothing(tmp_path):
    y, prob, groups = _scores()
    curves = ovr_curves(y, prob, prob.argmax(1), groups, CLASSES, n_boot=20)
    roc = Image.open(save_curves_png(curves, "roc", tmp_path / "roc.png"))
    assert roc.size[0] > 2 * roc.size[1], "one panel per class, side by side"
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_macro_f1": 0.1 * e} for e in (1, 2, 3)]
    assert Image.open(save_training_curves_png(history, tmp_path / "training.png")).size[0] > 300
    assert save_training_curves_png([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
