"""Classifiers behind one registry: `build(name, num_classes, in_chans=1, pretrained=None)`.

Importing this package registers every model family; `available()` lists their names.
"""

from bonescan.models import (  # noqa: F401  (imported for their @register_model side effect)
    di_mobilenet,
    mobilenet_caco,
    multiscale,
    soft_threshold_net,
    torchvision_zoo,
)
from bonescan.models.attention import make_attention
from bonescan.models.base import Classifier
from bonescan.models.registry import (
    available,
    build,
    check_input_size,
    count_parameters,
    min_input_size,
    register_model,
)

__all__ = [
    "Classifier", "available", "build", "check_input_size", "count_parameters", "make_attention",
    "min_input_size", "register_model",
]  # fmt: skip
