"""Champion/challenger decision for the model registry.

A new model only replaces the champion when it is better on the same test split by a margin and
does not buy that gain by abandoning a class: a classifier that stops finding benign changes must not
win on macro F1 alone. The decision and the alias moves are pure functions so that the rules are
tested without MLflow; `bonescan.model_registry.stage` applies them to the registry's aliases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bonescan.metrics import PairedDifference

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
_INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")


@dataclass(frozen=True)
class PromotionRule:
    """How a challenger must compare to the champion.

    Attributes:
        primary_metric: key of the flat eval metrics to compare (higher is better), e.g. "macro_f1".
        min_improvement: the challenger must beat the champion by at least this much.
        min_class_recall: every `recall_<class>` of the challenger must reach this floor.
        paired: when both models' predictions on the split are known, the challenger must also win
            beyond the test split's noise: the lower bound of the paired patient-bootstrap difference
            must be above 0 (the margin still applies to the point difference). Without both
            models' predictions only the margin applies.
    """

    primary_metric: str = "macro_f1"
    min_improvement: float = 0.0
    min_class_recall: float = 0.0
    paired: bool = True


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def class_recalls(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """`recall_<class>` point estimates of flat eval metrics; interval bounds are not recalls.

    An undefined recall (None or NaN: no test sample of that class) is NaN, which no floor accepts.
    """
    return {
        k.removeprefix("recall_"): math.nan if v is None else float(v)
        for k, v in metrics.items()
        if k.startswith("recall_") and not k.endswith(_INTERVAL_SUFFIXES)
    }


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    rule: PromotionRule,
    *,
    challenger_test_split: str,
    champion_test_split: str | None = None,
    difference: PairedDifference | None = None,
) -> Decision:
    """Should the challenger become champion?

    Args:
        challenger: flat evaluation metrics of the new model.
        champion: metrics of the current champion, or None when there is none yet.
        rule: the promotion rule from params.
        challenger_test_split: fingerprint of the test split the challenger was scored on.
        champion_test_split: fingerprint of the champion's test split; comparing scores from two
            different test sets is meaningless, so a mismatch never promotes.
        difference: the paired bootstrap difference of the primary metric (challenger - champion) on
            that split, when both models' predictions are at hand (`rule.paired` then decides by it).
    """
    if not _defined(challenger.get(rule.primary_metric)):
        return Decision(False, f"challenger has no metric {rule.primary_metric!r}")
    low = {c: r for c, r in class_recalls(challenger).items() if not r >= rule.min_class_recall}  # NaN fails
    if low and rule.min_class_recall > 0:
        listed = ", ".join(
            f"{c} {r:.3f}" if math.isfinite(r) else f"{c} undefined" for c, r in sorted(low.items())
        )
        return Decision(False, f"class recall below the floor {rule.min_class_recall:.3f}: {listed}")
    score = float(challenger[rule.primary_metric])
    if champion is None:
        return Decision(True, f"no champion yet; {rule.primary_metric} {score:.4f}")
    if champion_test_split != challenger_test_split:
        return Decision(
            False, "champion was scored on a different test split; re-evaluate it before comparing"
        )
    if not _defined(champion.get(rule.primary_metric)):
        return Decision(False, f"champion has no {rule.primary_metric}; re-evaluate it before comparing")
    best = float(champion[rule.primary_metric])
    if rule.paired and difference is not None:
        return _decide_paired(difference, rule)
    gain = score - best
    if gain < rule.min_improvement or gain <= 0:
        return Decision(
            False,
            f"{rule.primary_metric} {score:.4f} vs champion {best:.4f}: gain {gain:+.4f} below the required "
            f"{rule.min_improvement:.4f}",
        )
    return Decision(True, f"{rule.primary_metric} {score:.4f} beats champion {best:.4f} by {gain:+.4f}")


def _decide_paired(d: PairedDifference, rule: PromotionRule) -> Decision:
    """Promote only when the paired difference clears the margin and its lower bound is above 0."""
    if d.metric != rule.primary_metric:
        raise ValueError(f"paired difference of {d.metric!r}, but the rule compares {rule.primary_metric!r}")
    interval = (
        f"{d.metric} {d.challenger:.4f} vs champion {d.champion:.4f}: paired difference {d.difference:+.4f}, "
        f"{100 * d.ci:.0f} % CI [{d.ci_low:+.4f}, {d.ci_high:+.4f}] over {d.n_groups} patients"
    )
    if d.difference < rule.min_improvement or d.difference <= 0:
        return Decision(False, f"{interval}: gain below the required {rule.min_improvement:.4f}")
    if not (math.isfinite(d.ci_low) and d.ci_low > 0):
        return Decision(False, f"{interval}: not better beyond the test split's noise (lower bound <= 0)")
    return Decision(True, f"{interval}: better beyond the test split's noise")


def _defined(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def aliases_after_promotion(aliases: Mapping[str, str], version: str) -> dict[str, str]:
    """Alias -> version once `version` is promoted: the old champion is kept as `previous-champion`.

    Re-promoting the current champion changes nothing; other aliases are left as they are.
    """
    after = dict(aliases)
    old = after.get(CHAMPION)
    if old == version:
        return after
    after[CHAMPION] = version
    if old is not None:
        after[PREVIOUS_CHAMPION] = old
    return after


def aliases_after_rollback(aliases: Mapping[str, str], earlier: str | None = None) -> dict[str, str]:
    """Alias -> version once the champion is rolled back to `previous-champion`.

    Args:
        aliases: the current alias -> version map.
        earlier: the champion the previous champion had itself replaced (the next rollback target),
            or None, which drops `previous-champion`.

    Raises:
        ValueError: there is no previous champion to roll back to.
    """
    previous = aliases.get(PREVIOUS_CHAMPION)
    if previous is None:
        raise ValueError(f"no {PREVIOUS_CHAMPION!r} version to roll back to")
    after = dict(aliases)
    after[CHAMPION] = previous
    if earlier is None or earlier == previous:
        after.pop(PREVIOUS_CHAMPION)
    else:
        after[PREVIOUS_CHAMPION] = earlier
    return after
