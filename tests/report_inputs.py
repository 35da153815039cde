"""A finished pipeline run's outputs, made in the test: what the report stage reads.

The evaluation outputs come from a real (tiny) `run_evaluate`, so the report is checked against the
files evaluate actually writes; the other stages' outputs are small JSON files of the shapes those
stages write (see a `make demo` run's reports/ and metrics/), and tiny PNG sample grids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bonescan import classifier_file
from bonescan.classifier_file import ClassifierFile
from bonescan.config import ClassifierConfig, Params
from bonescan.evaluate import run_evaluate
from bonescan.models import build
from tests.png_cohorts import SIZE, write_cohort

CLASSES = ["healthy", "metastasis", "benign"]
HISTORY = [{"epoch": e, "train_loss": 1.2 / e, "val_loss": 1.3 / e ** 0.5, "val_accuracy": 0.3 + 0.1 * e,
            "val_macro_f1": 0.25 + 0.1 * e} for e in range(1, 5)]  # fmt: skip


def _json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def _png(path: Path, size: tuple[int, int] = (48, 96), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)


def run_params(project_params: Params) -> Params:
    """The project's params with a quick evaluation (few resamples, CPU, temperature scaling on)."""
    evaluate = project_params.evaluate.model_copy(update={
        "n_boot": 20, "device": "cpu", "gradcam_per_class": 1, "temperature_scaling": True, "batch_size": 8,
    })  # fmt: skip
    return project_params.model_copy(update={"evaluate": evaluate})


def write_run_outputs(root: Path, params: Params, *, gan: bool = True, promote: bool = True) -> None:
    """Every stage output the report reads, under `root` (paths as `ReportSources.from_params(params, root)`)."""
    for name, ds in params.datasets.items():
        classes = list(ds.classes)
        _json(root / ds.reports_dir / "ingest.json", {
            "dataset": name, "files_seen": 14, "images_written": 24, "quarantined": 2, "patients": 6,
            "studies": 12, "phi_files": 12, "phi_leaks": 0, "quarantined_not_dicom": 1,
            "quarantined_burned_in": 1, **{f"images_{c}": 8 for c in classes},
        })  # fmt: skip
        _json(root / ds.reports_dir / "phi_scan.json", {"files": 12, "leaks": 0, "details": []})
        split = {"patients_in_two_splits": 0, "unassigned_images": 0}
        for s, n in (("train", 4), ("val", 2), ("test", 2)):
            split |= {f"{s}_images": n * len(classes), f"{s}_patients": n} | {f"{s}_{c}_images": n for c in classes}
        _json(root / ds.metrics_dir / "split.json", split)
    if gan:
        quality = {c: {"fidelity": 0.6, "diversity_ssim": 0.5, "ssim_to_real": 0.45, "tstr_recall": 0.5,
                       "admitted": c == "benign", "reason": f"{'admitted' if c == 'benign' else 'rejected'}: ..."}
                   for c in CLASSES}  # fmt: skip
        _json(root / params.gan.report, {
            "gate": {"min_fidelity": 0.5, "min_label_lift": 0.2, "max_diversity_ssim": 0.9},
            "archs": {arch: {"classes": quality} for arch in params.gan.archs},
            "synthesis": {"arch": params.gan.synthesize.arch, "written": {c: 5 * (c == "benign") for c in CLASSES}},
        })  # fmt: skip
        for stage in ("pretrain", "finetune"):
            for i, arch in enumerate(params.gan.archs):
                _png(root / params.gan.plots_dir / stage / "samples" / f"{arch}_final.png", seed=i)
    for stage in ("pretrain", "finetune"):
        _json(root / params.clf.metrics_dir / f"clf_{stage}.json", {
            "model": "soft_threshold_net", "init": "source", "train_images": 12, "val_images": 6, "best_epoch": 3,
            "val_macro_f1": 0.55, "val_accuracy": 0.6,
        })  # fmt: skip

    manifest = write_cohort(root, "processed", CLASSES,
                            {"train": dict.fromkeys(CLASSES, 1), "val": dict.fromkeys(CLASSES, 4),
                             "test": dict.fromkeys(CLASSES, 5)})  # fmt: skip
    torch.manual_seed(0)
    model = build("soft_threshold_net", len(CLASSES), in_chans=1)
    record = ClassifierFile.from_model(model, "soft_threshold_net", CLASSES, SIZE, normed_head=False,
                                       stage="finetune", config=ClassifierConfig().model_dump(mode="json"),
                                       history=HISTORY)  # fmt: skip
    classifier_file.save(record, root / "models/classifier/model.pt")
    run_evaluate(params.evaluate, CLASSES, manifest, root / "models/classifier/model.pt", root=root)

    if promote:
        _json(root / params.promote.report, {
            "action": "promote", "promoted": True, "reason": "macro_f1 0.61 vs no champion: first model",
            "registered_model": "bonescan-classifier", "version": "3", "primary_metric": "macro_f1",
            "challenger_value": 0.61, "champion_value": None, "aliases_after": {"champion": "3", "challenger": "3"},
            "dry_run": False,
        })  # fmt: skip
        card = root / params.promote.model_card
        card.write_text(
            "# Model card: bonescan-classifier version 3\n\n- Model: `soft_threshold_net`\n\n"
            "| metric | value |\n|---|---|\n| macro_f1 | 0.61 |\n\n"
            "![confusion matrix](eval/confusion_matrix.png)\n\n"
            "![remote](https://203.0.113.7/tracker.png) <script>alert('card')</script>\n"
        )
