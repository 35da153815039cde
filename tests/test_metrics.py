"""Metric definitions agree with scikit-learn; bootstrap intervals resample whole patients."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from bonescan.classifier_file import DecisionRule
from bonescan.metrics import (
    MACRO_METRICS,
    bootstrap_indices,
    bootstrap_weights,
    cluster_bootstrap,
    compute_confusion,
    compute_metrics,
    compute_ovr_auc,
    compute_specificity,
    evaluate_predictions,
    paired_bootstrap_difference,
    percentile_interval,
    weighted_metrics,
)

CLASSES = ("healthy", "metastasis", "benign")


def _random_predictions(n: int, seed: int, skill: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that are better than chance but far from perfect."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), y] += skill
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, prob


FAVOUR_BENIGN = DecisionRule("offsets", (0.0, 0.0, 1.5), chosen_on="test")


def _uneven_patients(seed: int, n_patients: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patients with 1-4 units in shuffled order, probabilities rounded to 0.05 (tied scores), and a
    rare class, benign, held by two patients (so absent from some resamples) that argmax never predicts."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"P{i:02d}" for i in range(n_patients)], rng.integers(1, 5, n_patients))
    rng.shuffle(groups)
    n = len(groups)
    y = np.where(np.isin(groups, ["P00", "P01"]), 2, rng.integers(0, 2, n))
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), y] += 1.5
    logits[:, 2] = np.minimum(logits[:, 2], logits[:, :2].max(axis=1) - 0.2)  # argmax is never benign
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, np.round(prob / 0.05) * 0.05, groups


def _per_resample(y, prob, groups, n_boot, seed, decision=None) -> dict[str, np.ndarray]:
    """The reference: `compute_metrics` (scikit-learn) on the rows of each resample, one by one."""
    replicates: dict[str, list[float]] = {}
    for idx in bootstrap_indices(groups, n_boot, seed):
        for name, value in compute_metrics(y[idx], prob[idx], CLASSES, decision).items():
            replicates.setdefault(name, []).append(value)
    return {name: np.asarray(values) for name, values in replicates.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_metrics_match_scikit_learn(seed):
    y, prob = _random_predictions(80, seed)
    pred = prob.argmax(axis=1)
    got = compute_metrics(y, prob, CLASSES)

    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], average=None, zero_division=0.0)
    mp, mr, mf, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0.0)
    assert got["accuracy"] == pytest.approx(np.mean(y == pred))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert got["macro_precision"] == pytest.approx(mp)
    assert got["macro_recall"] == pytest.approx(mr)
    assert got["macro_f1"] == pytest.approx(mf)
    assert got["macro_auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    per_class_auc = roc_auc_score(y, prob, multi_class="ovr", average=None)
    for k, name in enumerate(CLASSES):
        assert got[f"precision_{name}"] == pytest.approx(p[k])
        assert got[f"recall_{name}"] == pytest.approx(r[k])
        assert got[f"f1_{name}"] == pytest.approx(f[k])
        assert got[f"auc_{name}"] == pytest.approx(per_class_auc[k])


def test_specificity_by_hand_on_a_small_confusion_matrix():
    # actual:    0  0  0  1  1  2
    # predicted: 0  0  1  1  2  2
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    cm = compute_confusion(y, pred, 3)
    np.testing.assert_array_equal(cm, confusion_matrix(y, pred, labels=[0, 1, 2]))
    # class 0: negatives are the 3 rows of classes 1 and 2, none predicted 0 -> 3/3
    # class 1: negatives are 4 rows (three 0s, one 2); one 0 was predicted 1 -> 3/4
    # class 2: negatives are 5 rows (three 0s, two 1s); one 1 was predicted 2 -> 4/5
    np.testing.assert_allclose(compute_specificity(cm), [1.0, 0.75, 0.8])


def test_specificity_of_one_class_data_is_nan_for_that_class():
    cm = compute_confusion(np.array([0, 0]), np.array([0, 1]), 2)
    spec = compute_specificity(cm)
    assert math.isnan(spec[0]) and spec[1] == pytest.approx(0.5)


def test_class_absent_from_labels_is_nan_not_a_crash():
    y, prob = _random_predictions(60, 3)
    keep = y != 2  # no benign in the evaluated set
    got = compute_metrics(y[keep], prob[keep], CLASSES)
    for metric in ("recall", "f1", "auc"):
        assert math.isnan(got[f"{metric}_benign"])
    assert not math.isnan(got["specificity_benign"])
    assert got["macro_recall"] == pytest.approx(np.mean([got["recall_healthy"], got["recall_metastasis"]]))
    assert got["balanced_accuracy"] == pytest.approx(got["macro_recall"])
    assert got["macro_auc"] == pytest.approx(np.mean([got["auc_healthy"], got["auc_metastasis"]]))

    report = evaluate_predictions(y[keep], prob[keep], np.arange(keep.sum()), CLASSES, n_boot=20, seed=0)
    assert any("'benign'" in note for note in report.notes)
    assert report.flat()["recall_benign"] is None  # JSON null, not NaN


def test_ovr_auc_matches_sklearn_and_is_nan_for_a_missing_class():
    y, prob = _random_predictions(50, 4)
    np.testing.assert_allclose(compute_ovr_auc(y, prob), roc_auc_score(y, prob, multi_class="ovr", average=None))
    auc = compute_ovr_auc(np.zeros(5, dtype=int), prob[:5])
    assert np.isnan(auc).all()  # class 0 has no negatives, the others no positives


def test_bootstrap_moves_all_images_of_a_patient_together():
    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    for idx in bootstrap_indices(groups, n_boot=50, seed=0):
        drawn = groups[idx]
        for patient, size in (("p1", 2), ("p2", 1), ("p3", 3)):
            assert (drawn == patient).sum() % size == 0
        # one draw per patient of the cohort: 3 patients drawn, each with all of its rows
        counts = {p: (drawn == p).sum() // s for p, s in (("p1", 2), ("p2", 1), ("p3", 3))}
        assert sum(counts.values()) == 3


def test_bootstrap_is_reproducible_for_a_seed():
    groups = np.repeat(np.arange(10), 2)
    a = [i.tolist() for i in bootstrap_indices(groups, 5, seed=7)]
    b = [i.tolist() for i in bootstrap_indices(groups, 5, seed=7)]
    c = [i.tolist() for i in bootstrap_indices(groups, 5, seed=8)]
    assert a == b and a != c


def test_weights_count_how_often_each_row_is_in_the_resample_of_bootstrap_indices():
    groups = np.array(["p3", "p1", "p3", "p2", "p3", "p1", "p4"])  # uneven, unsorted, rows not adjacent
    weights = bootstrap_weights(groups, n_boot=200, seed=3)
    assert weights.shape == (200, len(groups)) and weights.dtype == np.int64
    for w, idx in zip(weights, bootstrap_indices(groups, n_boot=200, seed=3), strict=True):
        np.testing.assert_array_equal(np.repeat(np.arange(len(groups)), w), np.sort(idx))
    assert bootstrap_weights(groups, n_boot=0, seed=3).shape == (0, len(groups))


@pytest.mark.parametrize("decision", [None, FAVOUR_BENIGN], ids=["argmax", "offsets"])
def test_vectorised_replicates_equal_compute_metrics_on_the_rows_of_each_resample(decision):
    y, prob, groups = _uneven_patients(0)
    pred = decision.predict(prob) if decision else prob.argmax(axis=1)
    got = weighted_metrics(y, prob, pred, bootstrap_weights(groups, 80, seed=1), CLASSES)
    want = _per_resample(y, prob, groups, 80, seed=1, decision=decision)
    assert list(got) == list(want)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, rtol=0, atol=1e-12, equal_nan=True, err_msg=name)

    # the data exercise every convention: ties, a class absent from some resamples, one never predicted
    assert len(np.unique(prob[:, 1])) < len(prob) / 3
    assert np.isnan(want["recall_benign"]).any() and not np.isnan(want["recall_benign"]).all()
    if decision is None:
        assert 2 not in pred  # precision 0 where benign is present, NaN where it is absent too
        assert set(np.nan_to_num(want["precision_benign"], nan=-1.0)) == {-1.0, 0.0}
    else:
        assert 2 in pred and np.nanmax(want["precision_benign"]) > 0


@pytest.mark.parametrize("seed", [0, 7])
def test_intervals_equal_those_of_compute_metrics_on_every_resample(seed):
    y, prob, groups = _uneven_patients(1)
    got = cluster_bootstrap(y, prob, groups, CLASSES, n_boot=40, ci=0.9, seed=seed, decision=FAVOUR_BENIGN)
    want = {name: percentile_interval(values, 0.9)
            for name, values in _per_resample(y, prob, groups, 40, seed, FAVOUR_BENIGN).items()}  # fmt: skip
    assert list(got) == list(want)
    for name, interval in want.items():
        np.testing.assert_allclose(got[name], interval, rtol=0, atol=1e-12, equal_nan=True, err_msg=name)
    assert cluster_bootstrap(y, prob, groups, CLASSES, n_boot=0) == {}


@pytest.mark.parametrize("seed", [0, 7])
def test_paired_difference_interval_equals_the_per_resample_difference_of_compute_metrics(seed):
    y, challenger, groups = _uneven_patients(2)
    noise = np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)), len(y))
    champion = np.round((0.6 * challenger + 0.4 * noise) / 0.05) * 0.05
    reference = {name: _per_resample(y, prob, groups, 40, seed) for name, prob in
                 (("challenger", challenger), ("champion", champion))}  # fmt: skip
    for metric in ("macro_f1", "macro_auc", "recall_benign"):
        got = paired_bootstrap_difference(y, challenger, champion, groups, CLASSES, metric, 40, seed=seed)
        want = percentile_interval(reference["challenger"][metric] - reference["champion"][metric], 0.95)
        np.testing.assert_allclose((got.ci_low, got.ci_high), want, rtol=0, atol=1e-12, err_msg=metric)
        assert got.difference == compute_metrics(y, challenger, CLASSES)[metric] - got.champion
    with pytest.raises(ValueError, match="unknown metric 'f2'.*macro_f1"):
        paired_bootstrap_difference(y, challenger, champion, groups, CLASSES, "f2", n_boot=5)


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_patients():
    widths = []
    for n_patients in (20, 320):
        y, prob = _random_predictions(2 * n_patients, seed=5)
        groups = np.repeat(np.arange(n_patients), 2)
        point = compute_metrics(y, prob, CLASSES)
        interval = cluster_bootstrap(y, prob, groups, CLASSES, n_boot=200, ci=0.95, seed=0)
        for name in MACRO_METRICS:
            low, high = interval[name]
            assert low <= point[name] <= high, name
        widths.append(interval["accuracy"][1] - interval["accuracy"][0])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(16) of the width with 16x the patients


def test_percentile_interval_ignores_nan_and_is_nan_when_all_nan():
    assert percentile_interval(np.array([np.nan, 1.0, 2.0, 3.0]), 0.5) == pytest.approx((1.5, 2.5))
    low, high = percentile_interval(np.array([np.nan, np.nan]), 0.95)
    assert math.isnan(low) and math.isnan(high)


def test_flat_report_has_point_and_interval_for_every_metric():
    y, prob = _random_predictions(30, 6)
    flat = evaluate_predictions(y, prob, np.arange(30) // 2, CLASSES, n_boot=20, seed=0).flat()
    for name in (*MACRO_METRICS, "recall_benign", "specificity_healthy"):
        assert {name, f"{name}_ci_low", f"{name}_ci_high"} <= set(flat)
    assert flat["n_samples"] == 30 and flat["n_patients"] == 15 and flat["n_boot"] == 20


def test_bad_shapes_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="probability columns"):
        compute_metrics(np.array([0, 1]), np.full((2, 2), 0.5), CLASSES)
    with pytest.raises(ValueError, match="class indices"):
        compute_metrics(np.array([0, 5]), np.full((2, 3), 1 / 3), CLASSES)


def test_logit_offsets_recover_the_minority_class_that_argmax_misses():
    from bonescan.metrics import balanced_accuracy_of, fit_logit_offsets

    rng = np.random.default_rng(0)
    y = np.array([0] * 90 + [1] * 10)
    p1 = np.clip(np.where(y == 1, 0.35, 0.15) + rng.normal(0, 0.05, y.size), 0.01, 0.99)  # ranks well, under 0.5
    prob = np.stack([1 - p1, p1], axis=1)
    offsets, at_rule, at_argmax = fit_logit_offsets(prob, y)
    assert at_argmax == balanced_accuracy_of(y, prob.argmax(axis=1), 2) == 0.5
    assert at_rule > 0.9 and offsets[0] == 0.0 and offsets[1] > 0
    assert balanced_accuracy_of(y, (np.log(prob) + offsets).argmax(axis=1), 2) == at_rule


def test_logit_offsets_stay_zero_when_argmax_is_already_best():
    from bonescan.metrics import fit_logit_offsets

    prob = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.7, 0.2, 0.1]])
    offsets, at_rule, at_argmax = fit_logit_offsets(prob, np.array([0, 1, 2, 0]))
    assert offsets == (0.0, 0.0, 0.0) and at_rule == at_argmax == 1.0
