"""Calibration: expected calibration error, Brier score, the reliability diagram, patient-bootstrap intervals and
temperature scaling fitted on a validation split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax
from sklearn.metrics import brier_score_loss

from bonescan.calibration import (
    apply_temperature,
    assess_calibration,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    save_reliability_png,
)
from bonescan.metrics import bootstrap_indices, percentile_interval


def _confident(n_right: int, n_wrong: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Units all given `confidence` for class 0; the first `n_right` are class 0, the rest class 1."""
    rest = (1 - confidence) / 2
    prob = np.tile([confidence, rest, rest], (n_right + n_wrong, 1))
    return np.array([0] * n_right + [1] * n_wrong), prob


def test_confidence_that_matches_accuracy_has_zero_ece_and_overconfidence_shows_as_the_gap():
    assert expected_calibration_error(*_confident(8, 2, 0.8)) == pytest.approx(0.0, abs=1e-6)
    assert expected_calibration_error(*_confident(5, 5, 0.9)) == pytest.approx(0.4, abs=1e-6)


def test_brier_score_is_zero_for_certain_right_answers_and_two_thirds_for_a_uniform_guess():
    y = np.array([0, 1, 2])
    assert brier_score(y, np.eye(3)) == pytest.approx(0.0)
    assert brier_score(y, np.full((3, 3), 1 / 3)) == pytest.approx(2 / 3)
    assert brier_score(y, np.eye(3)[[1, 2, 0]]) == pytest.approx(2.0)


def test_reliability_bins_give_accuracy_per_confidence_bin_and_count_every_unit():
    y = np.array([0, 0, 1, 0, 0, 2])
    prob = np.array([[0.95, 0.03, 0.02]] * 3 + [[0.55, 0.25, 0.2]] * 3)
    bins = reliability_bins(y, prob, n_bins=10)
    assert bins["count"].tolist() == [3, 3]
    assert bins["accuracy"].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert bins["confidence"].tolist() == pytest.approx([0.55, 0.95])
    assert bins["bin_low"].tolist() == pytest.approx([0.5, 0.9])


def test_temperature_scaling_recovers_the_overconfidence_and_keeps_every_prediction():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (4000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(logits, axis=1)])  # calibrated by construction
    overconfident = softmax(3.0 * logits, axis=1)

    temperature = fit_temperature(overconfident, y)
    scaled = apply_temperature(overconfident, temperature)
    assert temperature == pytest.approx(3.0, rel=0.1)
    np.testing.assert_array_equal(scaled.argmax(1), overconfident.argmax(1))
    assert expected_calibration_error(y, scaled) < expected_calibration_error(y, overconfident) / 3


def test_intervals_resample_patients_and_bracket_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 80)
    prob = softmax(rng.normal(0, 1, (80, 3)) + 2 * np.eye(3)[y], axis=1)
    groups = np.repeat([f"P{i}" for i in range(40)], 2)
    report = assess_calibration(y, prob, groups, n_boot=100, seed=0)
    assert report.ece_interval[0] <= report.ece <= report.ece_interval[1] + 0.05
    assert report.brier_interval[0] <= report.brier <= report.brier_interval[1]
    single = assess_calibration(y, prob, np.array(["P0"] * 80), n_boot=20, seed=0)
    assert single.brier_interval == pytest.approx((single.brier, single.brier))  # one patient: no spread
    flat = report.flat("_calibrated")
    assert set(flat) == {f"{m}_calibrated{s}" for m in ("ece", "brier") for s in ("", "_ci_low", "_ci_high")}


@pytest.mark.parametrize("seed", [0, 3])
def test_brier_interval_equals_scikit_learns_brier_score_of_each_resample(seed):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"P{i:02d}" for i in range(30)], rng.integers(1, 5, 30))  # uneven patients
    y = rng.integers(0, 3, len(groups))
    prob = softmax(rng.normal(0, 1, (len(y), 3)) + 2 * np.eye(3)[y], axis=1).astype(np.float32)  # rows miss 1
    report = assess_calibration(y, prob, groups, n_boot=100, ci=0.9, seed=seed)

    rows = prob.astype(np.float64) / prob.astype(np.float64).sum(axis=1, keepdims=True)  # as brier_score does
    per_resample = [brier_score_loss(y[idx], rows[idx], labels=[0, 1, 2], scale_by_half=False)
                    for idx in bootstrap_indices(groups, 100, seed)]  # fmt: skip
    eces = [expected_calibration_error(y[idx], prob[idx]) for idx in bootstrap_indices(groups, 100, seed)]
    np.testing.assert_allclose(report.brier_interval, percentile_interval(np.array(per_resample), 0.9),
                               rtol=0, atol=1e-12)  # fmt: skip
    assert report.ece_interval == percentile_interval(np.array(eces), 0.9)


def test_reliability_diagram_is_drawn_with_and_without_the_calibrated_curve(tmp_path):
    y, prob = _confident(5, 5, 0.9)
    raw = assess_calibration(y, prob, np.arange(10).astype(str), n_boot=0)
    scaled = assess_calibration(y, apply_temperature(prob, 4.0), np.arange(10).astype(str), n_boot=0, temperature=4.0)
    assert np.isnan(raw.ece_interval[0])
    for calibrated in (None, scaled):
        path = save_reliability_png(raw, tmp_path / f"r{calibrated is None}.png", calibrated)
        assert Image.open(path).size[1] > 300
