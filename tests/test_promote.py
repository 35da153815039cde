"""Specification of the champion/challenger rule."""

from __future__ import annotations

import pytest

from bonescan.promote import PromotionRule, decide

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
