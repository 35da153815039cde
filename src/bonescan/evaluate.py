"""The `evaluate` stage: score the fine-tuned classifier on held-out patients.

Only real images of the test split are scored (synthetic and augmented images never reach it). By
default the unit is the study: the probabilities of its anterior and posterior views are averaged,
because a report is written per study, not per view. Intervals come from a patient-level bootstrap
(`bonescan.metrics`), since one patient contributes several correlated images. Outputs: flat DVC
metrics, a per-image prediction table (pseudonymous ids only), a confusion matrix as PNG and as a
DVC plot, a markdown report, and a Grad-CAM gallery over a few test images per class.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay
from torch import nn

from bonescan import classifier_file
from bonescan.classifier_file import DecisionRule, model_input, predict_probabilities
from bonescan.config import EvaluateConfig
from bonescan.data.dataset import ManifestDataset, label_indices, load_split
from bonescan.gradcam import GalleryItem, gradcam_maps, save_gallery, save_overlays
from bonescan.metrics import (
    MACRO_METRICS,
    PER_CLASS_METRICS,
    MetricReport,
    aggregate_by_study,
    compute_confusion,
    evaluate_predictions,
)
from bonescan.runtime import atomic_path, atomic_write, atomic_write_json, resolve_device

__all__ = [
    "EvalResult",
    "aggregate_by_study",
    "evaluate_model",
    "predict_probabilities",
    "run_evaluate",
    "select_gradcam_rows",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """What the evaluate stage measured and wrote.

    Attributes:
        metrics: the flat metrics written to `cfg.metrics_file` (None where undefined).
        report: point estimates, intervals and notes.
        unit: "image" or "study".
        n_images: real test images scored.
        n_units: scored units (images or studies).
        n_patients: distinct patients (bootstrap clusters).
        fingerprint: hash of the scored image ids and labels; two results compare only if equal.
        seconds: wall time of the stage.
        files: name -> path of every file written.
    """

    metrics: dict[str, float | int | None]
    report: MetricReport
    unit: str
    n_images: int
    n_units: int
    n_patients: int
    fingerprint: str
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        return self.report.notes


def select_gradcam_rows(labels: Sequence[str], classes: Sequence[str], per_class: int, seed: int) -> list[int]:
    """Row positions of up to `per_class` images of each class, drawn reproducibly, class by class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen: list[int] = []
    for name in classes:
        rows = np.flatnonzero(labels == name)
        chosen.extend(int(i) for i in rng.permutation(rows)[:per_class])
    return chosen


def _fingerprint(images: pd.DataFrame) -> str:
    keyed = sorted(f"{i}:{lab}" for i, lab in zip(images["image_id"], images["label"], strict=True))
    return hashlib.sha256("\n".join(keyed).encode()).hexdigest()[:16]


def evaluate_model(
    model: nn.Module,
    images: pd.DataFrame,
    classes: Sequence[str],
    cfg: EvaluateConfig,
    *,
    root: str | Path = ".",
    image_size: Sequence[int] | None = None,
    model_name: str = "",
    model_digest: str = "",
    decision: DecisionRule | None = None,
) -> EvalResult:
    """Score `model` on manifest rows and write every output named in `cfg`.

    Args:
        model: classifier returning logits (B, K); its `gradcam_layers()` feed the gallery.
        images: manifest rows to score (real images of one split).
        classes: class names in label-index order (the model's output order).
        cfg: the evaluate section of params.
        root: directory the manifest paths and the output paths are relative to.
        image_size: (H, W) the model was trained at; images of another size are resized to it.
        model_name: shown in the report.
        model_digest: `classifier_file.model_digest` of the scored model, recorded in summary.json so
            promote can refuse to pair these metrics with any other model.
        decision: the model's decision rule (default: argmax).
    """
    start = time.perf_counter()
    if images.empty:
        raise ValueError(f"no real images in the {cfg.split} split to evaluate")
    root = Path(root)
    device = resolve_device(cfg.device, "evaluate.device")
    rule = decision or DecisionRule()
    model = model.to(device).eval()
    images = images.reset_index(drop=True)
    dataset = ManifestDataset(images, classes, root=root)
    prob = predict_probabilities(model, dataset, cfg.batch_size, device, image_size)
    log.info("scored %d %s images in %.1f s", len(images), cfg.split, time.perf_counter() - start)

    prob_cols = [f"p_{c}" for c in classes]
    per_image = images[["image_id", "study_id", "patient_id", "view", "label"]].copy()
    per_image["predicted"] = [classes[i] for i in rule.predict(prob)]
    per_image[prob_cols] = prob
    units = aggregate_by_study(per_image, classes, rule) if cfg.unit == "study" else per_image

    y_true = np.asarray(label_indices(list(units["label"]), classes))
    report = evaluate_predictions(
        y_true, units[prob_cols].to_numpy(), units["patient_id"].to_numpy(), classes, cfg.n_boot, cfg.ci, cfg.seed
    )
    for note in report.notes:
        log.warning("%s", note)

    reports_dir, plots_dir = root / cfg.reports_dir, root / cfg.plots_dir
    reports_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    # Pseudonymous image and study ids only: the patient column stays in memory for the bootstrap.
    files["predictions"] = _write_csv(per_image.drop(columns="patient_id"), reports_dir / "predictions.csv")
    if cfg.unit == "study":
        files["study_predictions"] = _write_csv(
            units.drop(columns="patient_id"), reports_dir / "study_predictions.csv"
        )
    files["confusion_csv"] = _write_csv(
        pd.DataFrame({"actual": units["label"], "predicted": units["predicted"]}), plots_dir / "confusion.csv"
    )
    cm = compute_confusion(y_true, label_indices(list(units["predicted"]), classes), len(classes))
    files["confusion_png"] = save_confusion_png(cm, classes, reports_dir / "confusion_matrix.png", cfg.unit)

    if cfg.gradcam_per_class > 0 and hasattr(model, "gradcam_layers"):
        files.update(_gradcam(model, dataset, per_image, classes, cfg, device, image_size, reports_dir))

    fingerprint = _fingerprint(images)
    flat = report.flat()
    n_patients = int(images["patient_id"].nunique())
    flat.update(n_images=len(images), n_units=len(units))
    files["metrics"] = atomic_write_json(root / cfg.metrics_file, flat)
    seconds = time.perf_counter() - start
    summary = {
        "model": model_name,
        "model_digest": model_digest,
        "decision": rule.to_dict(),
        "split": cfg.split,
        "unit": cfg.unit,
        "n_images": len(images),
        "n_units": len(units),
        "n_patients": n_patients,
        "n_boot": cfg.n_boot,
        "ci": cfg.ci,
        "primary_metric": cfg.primary_metric,
        "primary_value": flat.get(cfg.primary_metric),
        "fingerprint": fingerprint,
        "notes": report.notes,
        "seconds": round(seconds, 2),
    }
    # The report and the metrics first, the summary (which promote pairs with the model) last.
    files["report"] = atomic_write(reports_dir / "report.md", render_report(report, classes, summary))
    files["summary"] = atomic_write_json(reports_dir / "summary.json", summary)
    log.info("%s %s = %s (%d %s units, %.1f s)", cfg.split, cfg.primary_metric, flat.get(cfg.primary_metric),
             len(units), cfg.unit, seconds)
    return EvalResult(flat, report, cfg.unit, len(images), len(units), n_patients, fingerprint, seconds, files)


def run_evaluate(
    cfg: EvaluateConfig,
    classes: Sequence[str],
    manifest: str | Path,
    model_path: str | Path,
    root: str | Path = ".",
) -> EvalResult:
    """The stage: load the saved classifier and score the real images of `cfg.split` of `manifest`.

    Args:
        cfg: the evaluate section of params.
        classes: class names in label-index order (params base.classes); must match the checkpoint's.
        manifest: the dataset's manifest CSV (with its split column).
        model_path: checkpoint written by the fine-tuning stage.
        root: project root (manifest paths and outputs are relative to it).
    """
    model, record = classifier_file.load(model_path)
    saved = list(record.classes)
    if saved != list(classes):
        raise ValueError(f"{model_path} was trained on classes {saved}, params say {list(classes)}")
    images = load_split(manifest, cfg.split, include_synthetic=False)
    return evaluate_model(
        model,
        images,
        classes,
        cfg,
        root=root,
        image_size=record.image_size,
        model_name=record.model_name,
        model_digest=classifier_file.model_digest(record),
        decision=record.decision,
    )


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")
    return path


def save_confusion_png(cm: np.ndarray, classes: Sequence[str], path: str | Path, unit: str = "") -> Path:
    """Counts, rows actual / columns predicted, as a PNG (Agg canvas, no pyplot state)."""
    fig = Figure(figsize=(1.4 + 1.1 * len(classes), 1.0 + 1.0 * len(classes)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(cm, display_labels=list(classes)).plot(ax=ax, cmap="Blues", values_format="d",
                                                                  colorbar=False)
    ax.set_title(f"confusion matrix (per {unit})" if unit else "confusion matrix", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def _gradcam(
    model: nn.Module,
    dataset: ManifestDataset,
    per_image: pd.DataFrame,
    classes: Sequence[str],
    cfg: EvaluateConfig,
    device: torch.device,
    image_size: Sequence[int] | None,
    reports_dir: Path,
) -> dict[str, Path]:
    rows = select_gradcam_rows(per_image["label"], classes, cfg.gradcam_per_class, cfg.seed)
    if not rows:
        return {}
    start = time.perf_counter()
    batch = torch.stack([dataset[i][0] for i in rows]).to(device)  # (B, 1, H, W)
    inputs = model_input(batch, getattr(model, "in_chans", 1), image_size)
    predicted = [classes.index(per_image["predicted"][i]) for i in rows]
    maps = gradcam_maps(model, inputs, predicted)
    shown = inputs[:, 0].detach().cpu().numpy()  # (B, H, W) at the model's resolution
    items = []
    for j, i in enumerate(rows):
        p = per_image[f"p_{per_image['predicted'][i]}"][i]
        caption = f"true {per_image['label'][i]}\npred {per_image['predicted'][i]} {p:.2f}"
        items.append(GalleryItem(per_image["image_id"][i], shown[j], caption, {k: v[j] for k, v in maps.items()}))
    gradcam_dir = reports_dir / "gradcam"
    save_overlays(items, gradcam_dir)
    gallery = save_gallery(items, reports_dir / "gradcam_gallery.png", title=f"Grad-CAM ({cfg.split} images)")
    log.info("Grad-CAM of %d image(s) over %d layer(s) in %.1f s", len(rows), len(maps), time.perf_counter() - start)
    return {"gradcam_dir": gradcam_dir, "gradcam_gallery": gallery}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def render_report(report: MetricReport, classes: Sequence[str], summary: dict) -> str:
    """Markdown: summary metrics with intervals, a per-class table, and the notes."""
    pct = round(100 * report.ci)
    units = "studies" if summary["unit"] == "study" else "images"
    lines = [
        f"# Evaluation: {summary['model'] or 'classifier'} on the {summary['split']} split",
        "",
        f"{summary['n_units']} {units} ({summary['n_images']} images) of {summary['n_patients']} "
        f"patients; {pct} % intervals from {report.n_boot} patient-level bootstrap resamples. "
        f"Primary metric: {summary['primary_metric']}.",
        "",
        f"| metric | value | {pct} % CI |",
        "|---|---|---|",
    ]
    for name in MACRO_METRICS:
        low, high = report.interval.get(name, (math.nan, math.nan))
        lines.append(f"| {name} | {_fmt(report.point[name])} | {_fmt(low)} - {_fmt(high)} |")
    lines += ["", "| class | " + " | ".join(PER_CLASS_METRICS) + " |", "|---" * (1 + len(PER_CLASS_METRICS)) + "|"]
    for name in classes:
        cells = []
        for metric in PER_CLASS_METRICS:
            key = f"{metric}_{name}"
            low, high = report.interval.get(key, (math.nan, math.nan))
            cells.append(f"{_fmt(report.point[key])} ({_fmt(low)} - {_fmt(high)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in report.notes]]
    return "\n".join(lines) + "\n"
