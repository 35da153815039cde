"""The MLflow model registry side of bonescan: the pyfunc model, the promote stage, the model card, the rule.

`rules` is pure (no MLflow); `pyfunc`, `stage` and `card` are, with `bonescan.tracking`, the only
modules that import mlflow.
"""

from bonescan.model_registry.card import CardSources, render_model_card
from bonescan.model_registry.pyfunc import (
    ClassifierPyfunc,
    example_input,
    inference_requirements,
    save_pyfunc,
)
from bonescan.model_registry.rules import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION
from bonescan.model_registry.stage import (
    Candidate,
    PromotionResult,
    current_aliases,
    find_version,
    load_candidate,
    promote,
    rollback,
    version_metrics,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS_CHAMPION",
    "Candidate",
    "CardSources",
    "ClassifierPyfunc",
    "PromotionResult",
    "current_aliases",
    "example_input",
    "find_version",
    "inference_requirements",
    "load_candidate",
    "promote",
    "render_model_card",
    "rollback",
    "save_pyfunc",
    "version_metrics",
]
