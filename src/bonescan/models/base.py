"""The interface every bonescan classifier exposes (timm's split of a network into trunk and head).

Transfer learning swaps the head (`reset_classifier`), Grad-CAM hooks named trunk layers
(`gradcam_layers`), embeddings come from `forward_head(..., pre_logits=True)`, and weight loading
needs to know which parameters belong to the head (`classifier_name`) or are new relative to the
architecture the weights were trained on (`pretrained_optional`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from bonescan.losses import NormedLinear


class Classifier(nn.Module, ABC):
    """Base class: `forward(x) = forward_head(forward_features(x))` -> logits (B, num_classes).

    Subclasses set `num_features` (input width of the last linear layer), `classifier_name` (dotted
    path of that layer), `in_chans`, `num_classes` and, if the architecture has a lower bound on
    the input, `min_input_size` (H, W).
    """

    num_features: int
    classifier_name: str
    in_chans: int
    num_classes: int
    min_input_size: tuple[int, int] = (32, 32)
    # Dotted prefixes of parameters absent from the checkpoints this architecture loads (new blocks).
    pretrained_optional: tuple[str, ...] = ()

    @abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> features the head consumes (a (B, C, h, w) map unless documented)."""

    @abstractmethod
    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Features -> logits (B, num_classes), or the (B, num_features) input of the last layer."""

    @abstractmethod
    def gradcam_layers(self) -> dict[str, nn.Module]:
        """Named target layers for Grad-CAM (one per branch for multi-branch models)."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The last layer, mapping (B, num_features) to logits."""
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int, normed: bool = False) -> None:
        """Replace the last layer with a freshly initialised one for `num_classes` classes.

        Args:
            num_classes: new number of outputs.
            normed: use a cosine head (`NormedLinear`, for LDAM) instead of `nn.Linear`.
        """
        head: nn.Module = (
            NormedLinear(self.num_features, num_classes)
            if normed
            else nn.Linear(self.num_features, num_classes)
        )
        parent_name, _, child = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, child, head)
        self.num_classes = num_classes

    def check_input(self, x: Tensor) -> None:
        """Fail with a clear message instead of a shape error deep inside the network."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        h, w = self.min_input_size
        if x.shape[2] < h or x.shape[3] < w:
            raise ValueError(
                f"{type(self).__name__} needs inputs of at least {h}x{w} pixels, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
