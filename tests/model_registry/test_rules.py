"""Specification of the champion/challenger rule."""

from __future__ import annotations

import numpy as np
import pytest

from bonescan.metrics import paired_bootstrap_difference
from bonescan.model_registry.rules import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    PromotionRule,
    aliases_after_promotion,
    aliases_after_rollback,
    class_recalls,
    decide,
)

RULE = PromotionRule(primary_metric="macro_f1", min_improvement=0.01, min_class_recall=0.5)
GOOD = {"macro_f1": 0.80, "recall_healthy": 0.9, "recall_metastasis": 0.8, "recall_benign": 0.6}


def test_first_model_becomes_champion():
    decision = decide(GOOD, None, RULE, challenger_test_split="abc")
    assert decision.promote
    assert "no champion yet" in decision.reason


def test_better_by_the_margin_is_promoted():
    champion = GOOD | {"macro_f1": 0.78}
    assert decide(GOOD, champion, RULE, challenger_test_split="abc", champion_test_split="abc").promote


@pytest.mark.parametrize("champion_f1", [0.795, 0.80, 0.85])
def test_gain_below_the_margin_is_not_promoted(champion_f1):
    champion = GOOD | {"macro_f1": champion_f1}
    decision = decide(GOOD, champion, RULE, challenger_test_split="abc", champion_test_split="abc")
    assert not decision.promote
    assert "below the required" in decision.reason


def test_a_class_recall_below_the_floor_blocks_promotion_even_with_a_better_score():
    challenger = GOOD | {"macro_f1": 0.95, "recall_benign": 0.3}
    decision = decide(challenger, GOOD, RULE, challenger_test_split="abc", champion_test_split="abc")
    assert not decision.promote
    assert "benign 0.300" in decision.reason


def test_scores_on_different_test_splits_are_never_compared():
    champion = GOOD | {"macro_f1": 0.5}
    decision = decide(GOOD, champion, RULE, challenger_test_split="new", champion_test_split="old")
    assert not decision.promote
    assert "different test split" in decision.reason


def test_missing_primary_metric_is_not_promoted():
    assert not decide({"accuracy": 0.9}, None, RULE, challenger_test_split="abc").promote


def test_recall_interval_bounds_are_not_class_recalls():
    metrics = GOOD | {"recall_benign_ci_low": 0.1, "recall_benign_ci_high": 0.9}
    assert class_recalls(metrics) == {"healthy": 0.9, "metastasis": 0.8, "benign": 0.6}
    assert decide(metrics, None, RULE, challenger_test_split="abc").promote


def test_an_undefined_class_recall_fails_a_floor_but_not_a_zero_floor():
    challenger = GOOD | {"recall_benign": None}
    decision = decide(challenger, None, RULE, challenger_test_split="abc")
    assert not decision.promote and "benign undefined" in decision.reason
    assert decide(challenger, None, PromotionRule(min_class_recall=0.0), challenger_test_split="abc").promote


def test_a_champion_without_the_primary_metric_is_not_replaced_blindly():
    decision = decide(GOOD, {"accuracy": 0.5}, RULE, challenger_test_split="abc", champion_test_split="abc")
    assert not decision.promote and "re-evaluate" in decision.reason


def test_promotion_keeps_the_old_champion_as_previous_champion():
    assert aliases_after_promotion({}, "1") == {CHAMPION: "1"}
    before = {CHAMPION: "1", CHALLENGER: "2", PREVIOUS_CHAMPION: "0"}
    assert aliases_after_promotion(before, "2") == {CHAMPION: "2", CHALLENGER: "2", PREVIOUS_CHAMPION: "1"}
    assert aliases_after_promotion(before, "1") == before


def test_rollback_restores_the_previous_champion_and_steps_further_back():
    before = {CHAMPION: "3", CHALLENGER: "3", PREVIOUS_CHAMPION: "2"}
    assert aliases_after_rollback(before, earlier="1") == {
        CHAMPION: "2",
        CHALLENGER: "3",
        PREVIOUS_CHAMPION: "1",
    }
    assert aliases_after_rollback(before) == {CHAMPION: "2", CHALLENGER: "3"}
    with pytest.raises(ValueError, match="no 'previous-champion'"):
        aliases_after_rollback({CHAMPION: "1"})


# --------------------------------------------------------------------------- paired bootstrap


def _studies(n_patients: int, champion_errors: int, challenger_errors: int, seed: int = 0):
    """Two-class studies (one per patient) where each model gets a chosen number of them wrong."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_patients)
    right = np.eye(2)[y] * 0.8 + 0.1

    def with_errors(count: int) -> np.ndarray:
        prob = right.copy()
        prob[:count] = prob[:count, ::-1]
        return prob

    return y, with_errors(challenger_errors), with_errors(champion_errors), [f"p{i:03d}" for i in range(n_patients)]


def test_the_paired_difference_is_the_metric_gap_with_an_interval_around_it():
    y, challenger, champion, patients = _studies(200, champion_errors=40, challenger_errors=10)
    d = paired_bootstrap_difference(y, challenger, champion, patients, ["a", "b"], "accuracy", n_boot=200)
    assert d.difference == pytest.approx(0.15) == d.challenger - d.champion
    assert 0 < d.ci_low < d.difference < d.ci_high
    assert (d.n_units, d.n_groups, d.n_boot) == (200, 200, 200)


def test_a_gain_inside_the_test_splits_noise_is_not_promoted_though_it_clears_the_margin():
    """52 minority studies, two more right: +0.02 clears a fixed 0.01 margin, not the paired interval."""
    y, challenger, champion, patients = _studies(52, champion_errors=8, challenger_errors=7)
    d = paired_bootstrap_difference(y, challenger, champion, patients, ["a", "b"], "accuracy", n_boot=200)
    rule = PromotionRule("accuracy", min_improvement=0.01)
    metrics = {"accuracy": d.challenger}
    split = {"challenger_test_split": "abc", "champion_test_split": "abc"}
    assert decide(metrics, {"accuracy": d.champion}, PromotionRule("accuracy", 0.01, paired=False), **split).promote
    decision = decide(metrics, {"accuracy": d.champion}, rule, difference=d, **split)
    assert not decision.promote and "noise" in decision.reason and "CI" in decision.reason


def test_a_gain_beyond_the_noise_is_promoted_with_its_interval_in_the_reason():
    y, challenger, champion, patients = _studies(200, champion_errors=40, challenger_errors=10)
    d = paired_bootstrap_difference(y, challenger, champion, patients, ["a", "b"], "accuracy", n_boot=200)
    decision = decide({"accuracy": d.challenger}, {"accuracy": d.champion}, PromotionRule("accuracy", 0.01),
                      challenger_test_split="abc", champion_test_split="abc", difference=d)  # fmt: skip
    assert decision.promote and f"{d.ci_low:+.4f}" in decision.reason
