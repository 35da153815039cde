"""Classifier files made in a test: what clf_finetune writes, without training (the saved-model contract)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bonescan import classifier_file
from bonescan.classifier_file import ClassifierFile
from bonescan.config import ClassifierConfig, Preprocessing, Size
from bonescan.models import build


def write_classifier(
    path: Path,
    classes: Sequence[str],
    size: Size,
    *,
    seed: int = 0,
    model_name: str = "soft_threshold_net",
    preprocessing: Preprocessing | None = None,
) -> ClassifierFile:
    """A randomly initialised (seeded) classifier saved at `path` as clf_finetune saves one."""
    torch.manual_seed(seed)
    model = build(model_name, len(classes), in_chans=1)
    record = ClassifierFile.from_model(
        model, model_name, classes, size, normed_head=False, preprocessing=preprocessing, stage="finetune",
        config=ClassifierConfig(model=model_name).model_dump(mode="json"),
    )  # fmt: skip
    classifier_file.save(record, path)
    return record
