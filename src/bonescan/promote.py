"""Champion/challenger decision for the model registry.

A new model only replaces the champion when it is better on the same test split by a margin and
does not buy that gain by abandoning a class: a classifier that stops finding benign changes must not
win on macro F1 alone. The decision is a pure function so that the rule is tested without MLflow;
`tracking.py` applies it to registry aliases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionRule:
    """How a challenger must compare to the champion.

    Attributes:
        primary_metric: key of the flat eval metrics to compare (higher is better), e.g. "macro_f1".
        min_improvement: the challenger must beat the champion by at least this much.
        min_class_recall: every `recall_<class>` of the challenger must reach this floor.
    """

    primary_metric: str = "macro_f1"
    min_improvement: float = 0.0
    min_class_recall: float = 0.0


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def class_recalls(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k.removeprefix("recall_"): float(v) for k, v in metrics.items() if k.startswith("recall_")}


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    rule: PromotionRule,
    *,
    challenger_test_split: str,
    champion_test_split: str | None = None,
) -> Decision:
    """Should the challenger become champion?

    Args:
        challenger: flat evaluation metrics of the new model.
        champion: metrics of the current champion, or None when there is none yet.
        rule: the promotion rule from params.
        challenger_test_split: fingerprint of the test split the challenger was scored on.
        champion_test_split: fingerprint of the champion's test split; comparing scores from two
            different test sets is meaningless, so a mismatch never promotes.
    """
    if rule.primary_metric not in challenger:
        return Decision(False, f"challenger has no metric {rule.primary_metric!r}")
    low = {c: r for c, r in class_recalls(challenger).items() if r < rule.min_class_recall}
    if low:
        listed = ", ".join(f"{c} {r:.3f}" for c, r in sorted(low.items()))
        return Decision(False, f"class recall below the floor {rule.min_class_recall:.3f}: {listed}")
    score = float(challenger[rule.primary_metric])
    if champion is None:
        return Decision(True, f"no champion yet; {rule.primary_metric} {score:.4f}")
    if champion_test_split != challenger_test_split:
        return Decision(False, "champion was scored on a different test split; re-evaluate it before comparing")
    best = float(champion[rule.primary_metric])
    gain = score - best
    if gain < rule.min_improvement or gain <= 0:
        return Decision(
            False,
            f"{rule.primary_metric} {score:.4f} vs champion {best:.4f}: gain {gain:+.4f} below the required "
            f"{rule.min_improvement:.4f}",
        )
    return Decision(True, f"{rule.primary_metric} {score:.4f} beats champion {best:.4f} by {gain:+.4f}")
