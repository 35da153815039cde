"""Losses for small, imbalanced classification: focal, LDAM (+ deferred re-weighting), their sum.

- Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma, so well-classified
  examples of the majority class stop dominating the gradient.
- LDAM (Cao et al. 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss"):
  a per-class margin m_j proportional to n_j^(-1/4) (rare classes get the largest margin, max_m) is
  subtracted from the target logit, then logits are scaled by s. Designed for a cosine-normalised
  head (`NormedLinear`), whose logits lie in [-1, 1].
- DRW (same paper): plain weights early, effective-number class weights (1 - beta) / (1 - beta^n)
  after a given epoch (`drw_schedule`).
- `JointLoss`: alpha * focal + (1 - alpha) * LDAM.
- Logit adjustment (Menon et al. 2021, "Long-tail learning via logit adjustment"): cross-entropy on
  logits + tau * log(class prior), so the model learns the balanced (prior-free) scores and argmax
  of its raw logits is Fisher-consistent for balanced error; the adjustment is training-only.

Plain (optionally class-weighted) cross-entropy is torch's own `nn.CrossEntropyLoss`; `build_loss`
maps a config name to any of them. Class statistics live in buffers, so `.to(device)` moves them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FocalLoss",
    "JointLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "NormedLinear",
    "available_losses",
    "build_loss",
    "drw_schedule",
    "drw_weights",
    "inverse_frequency_weights",
    "ldam_margins",
]

log = logging.getLogger(__name__)


def _counts(class_counts: Sequence[int] | Tensor) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0 or bool((counts <= 0).any()):
        raise ValueError(f"class_counts must be positive for every class, got {counts.tolist()}")
    return counts


def _weighted_mean(per_sample: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Mean over the batch, weighted like `F.cross_entropy(weight=...)`: sum(w_y * l) / sum(w_y)."""
    if weight is None:
        return per_sample.mean()
    w = weight[target]
    return (w * per_sample).sum() / w.sum()


def inverse_frequency_weights(class_counts: Sequence[int] | Tensor) -> Tensor:
    """Class weights proportional to 1 / n_j, normalised to sum to the number of classes.

    Returns:
        (K,) float32 tensor.
    """
    counts = _counts(class_counts)
    w = 1.0 / counts
    return (w / w.sum() * counts.numel()).float()


def drw_weights(class_counts: Sequence[int] | Tensor, beta: float = 0.9999) -> Tensor:
    """Effective-number class weights (Cui et al. 2019) used by DRW: (1 - beta) / (1 - beta^n_j).

    Normalised to sum to the number of classes, as in Cao et al.'s reference code.

    Returns:
        (K,) float32 tensor.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = _counts(class_counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (w / w.sum() * counts.numel()).float()


def drw_schedule(
    epoch: int, class_counts: Sequence[int] | Tensor, start_epoch: int, beta: float = 0.9999
) -> Tensor | None:
    """Deferred re-weighting: no class weights before `start_epoch` (0-based), `drw_weights` from then on.

    The caller assigns the result with `loss.set_class_weight(...)` at the start of each epoch.
    """
    return None if epoch < start_epoch else drw_weights(class_counts, beta)


def ldam_margins(class_counts: Sequence[int] | Tensor, max_m: float = 0.5) -> Tensor:
    """LDAM margins m_j = C * n_j^(-1/4), with C chosen so the rarest class gets `max_m`.

    Returns:
        (K,) float32 tensor.
    """
    m = _counts(class_counts).pow(-0.25)
    return (m * (max_m / m.max())).float()


class NormedLinear(nn.Module):
    """Cosine classifier head: logits_j = cos(x, w_j), in [-1, 1] (Cao et al. 2019).

    Weight is (out_features, in_features) like `nn.Linear`, without bias, so a model's
    `reset_classifier(..., normed=True)` swaps it in place of its last linear layer.

    Args:
        in_features: feature dimension D.
        out_features: number of classes K.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        # Uniform init as in Cao et al.; the scale of the rows is irrelevant after F.normalize.
        nn.init.uniform_(self.weight, -1.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, K) cosine similarities."""
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _ClassWeighted(nn.Module):
    """Holds an optional per-class weight as a buffer, replaceable during training (DRW)."""

    weight: Tensor | None

    def __init__(self, weight: Tensor | Sequence[float] | None) -> None:
        super().__init__()
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )

    def set_class_weight(self, weight: Tensor | Sequence[float] | None) -> None:
        """Replace the class weights (None = unweighted), e.g. by `drw_schedule` at each epoch."""
        self.weight = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)

    def _weight_for(self, logits: Tensor) -> Tensor | None:
        # Weights set after `.to(device)` may still be on the CPU; follow the logits.
        return None if self.weight is None else self.weight.to(device=logits.device, dtype=logits.dtype)


class FocalLoss(_ClassWeighted):
    """Focal loss -(1 - p_t)^gamma * log p_t, averaged like weighted cross-entropy.

    With gamma = 0 it equals `F.cross_entropy(logits, target, weight=weight)`.

    Args:
        gamma: focusing parameter; 2.0 as in Lin et al. 2017.
        weight: optional (K,) class weights.
    """

    def __init__(self, gamma: float = 2.0, weight: Tensor | Sequence[float] | None = None) -> None:
        super().__init__(weight)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (B, K), target (B,) int64 -> scalar."""
        logp_t = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)  # (B,)
        focal = (1.0 - logp_t.exp()).clamp_min(0.0).pow(self.gamma)
        return _weighted_mean(-focal * logp_t, target, self._weight_for(logits))


class LDAMLoss(_ClassWeighted):
    """Label-distribution-aware margin loss: CE(s * (z - m_y * onehot(y)), y).

    Args:
        class_counts: training samples per class (K,), in label-index order.
        max_m: margin of the rarest class.
        s: logit scale; 30 as in Cao et al. for a cosine head.
        weight: optional (K,) class weights (DRW sets them late in training).
    """

    margins: Tensor

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        max_m: float = 0.5,
        s: float = 30.0,
        weight: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__(weight)
        if s <= 0:
            raise ValueError(f"s must be > 0, got {s}")
        self.register_buffer("margins", ldam_margins(class_counts, max_m))
        self.max_m = max_m
        self.s = s

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (B, K), target (B,) int64 -> scalar."""
        if logits.shape[1] != self.margins.numel():
            raise ValueError(
                f"logits have {logits.shape[1]} classes but class_counts has {self.margins.numel()}"
            )
        margin = (
            F.one_hot(target, logits.shape[1]).to(logits.dtype) * self.margins.to(logits.dtype)[target, None]
        )
        return F.cross_entropy(self.s * (logits - margin), target, weight=self._weight_for(logits))


class JointLoss(nn.Module):
    """alpha * focal + (1 - alpha) * LDAM, both on the same logits and the same class weights.

    Args:
        class_counts: training samples per class (K,).
        alpha: weight of the focal term, in [0, 1].
        gamma: focal focusing parameter.
        max_m: LDAM margin of the rarest class.
        s: LDAM logit scale.
        weight: optional (K,) class weights for both terms.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        alpha: float = 0.5,
        gamma: float = 2.0,
        max_m: float = 0.5,
        s: float = 30.0,
        weight: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.focal = FocalLoss(gamma=gamma, weight=weight)
        self.ldam = LDAMLoss(class_counts, max_m=max_m, s=s, weight=weight)

    def set_class_weight(self, weight: Tensor | None) -> None:
        """Replace the class weights of both terms (DRW)."""
        self.focal.set_class_weight(weight)
        self.ldam.set_class_weight(weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (B, K), target (B,) int64 -> scalar."""
        return self.alpha * self.focal(logits, target) + (1.0 - self.alpha) * self.ldam(logits, target)


class LogitAdjustedLoss(_ClassWeighted):
    """Logit-adjusted cross-entropy: CE(z + tau * log pi, y), pi the training class prior.

    Args:
        class_counts: training samples per class (K,).
        tau: strength of the adjustment; 1.0 is the paper's (Bayes-consistent) choice, 0 is plain CE.
        label_smoothing: as in `nn.CrossEntropyLoss`.
        weight: optional (K,) class weights (DRW sets them late in training).
    """

    log_prior: Tensor

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        tau: float = 1.0,
        label_smoothing: float = 0.0,
        weight: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__(weight)
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        raw = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
        if raw.numel() and bool((raw == 0).any()) and not bool((raw < 0).any()):
            # A class absent from the training images (a tiny split) counts as one image: log 0 would
            # make its adjusted logit -inf; the class stays untrained, as under plain CE.
            log.warning("logit_adjusted: classes %s have no training images; their prior counts 1 image",
                        [i for i, c in enumerate(raw.tolist()) if c == 0])  # fmt: skip
            raw = raw.clamp_min(1)
        counts = _counts(raw)
        self.register_buffer("log_prior", torch.log(counts / counts.sum()))
        self.tau = tau
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (B, K), target (B,) int64 -> scalar."""
        if logits.shape[1] != self.log_prior.numel():
            raise ValueError(
                f"logits have {logits.shape[1]} classes but class_counts has {self.log_prior.numel()}"
            )
        adjusted = logits + self.tau * self.log_prior.to(logits.dtype)
        return F.cross_entropy(
            adjusted, target, weight=self._weight_for(logits), label_smoothing=self.label_smoothing
        )


def _ce(class_counts: Sequence[int] | Tensor, **kw) -> nn.Module:
    return nn.CrossEntropyLoss(**kw)


def _weighted_ce(class_counts: Sequence[int] | Tensor, **kw) -> nn.Module:
    return nn.CrossEntropyLoss(weight=inverse_frequency_weights(class_counts), **kw)


def _focal(class_counts: Sequence[int] | Tensor, **kw) -> nn.Module:
    return FocalLoss(**kw)


_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _ce,
    "weighted_ce": _weighted_ce,  # inverse-frequency weights, normalised to sum to K
    "focal": _focal,
    "ldam": LDAMLoss,
    "joint": JointLoss,
    "logit_adjusted": LogitAdjustedLoss,
}


def available_losses() -> list[str]:
    """Names accepted by `build_loss`."""
    return sorted(_LOSSES)


def build_loss(name: str, class_counts: Sequence[int] | Tensor, **kwargs) -> nn.Module:
    """Loss by config name; `None` keyword arguments are dropped so the loss's own defaults apply.

    Args:
        name: one of `available_losses()`.
        class_counts: training samples per class (K,), needed by the weighted and margin losses.
        **kwargs: passed to the loss (e.g. gamma, max_m, s, alpha, weight).
    """
    try:
        factory = _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; available: {available_losses()}") from None
    return factory(class_counts, **{k: v for k, v in kwargs.items() if v is not None})
