"""The `evaluate` stage: score the fine-tuned classifier on held-out patients.

Only real images of the test split are scored (synthetic and augmented images never reach it). By
default the unit is the study: the probabilities of its anterior and posterior views are averaged,
because a report is written per study, not per view. Intervals come from a patient-level bootstrap
(`bonescan.metrics`), since one patient contributes several correlated images. Outputs: flat DVC
metrics (with expected calibration error and Brier score), a per-image prediction table (pseudonymous
ids only), a confusion matrix, one-vs-rest ROC and precision-recall curves with bootstrap bands and the
operating point (`bonescan.curves`), a reliability diagram (`bonescan.calibration`, optionally after a
temperature fitted on the val split), the training curves of the scored model, a markdown report, and
Grad-CAM overlays of correct and wrong cases of every class.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
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
from bonescan.calibration import (
    CalibrationReport,
    apply_temperature,
    assess_calibration,
    fit_temperature,
    save_reliability_png,
)
from bonescan.classifier_file import DecisionRule, model_input, predict_probabilities
from bonescan.config import EvaluateConfig
from bonescan.curves import CurveSet, ovr_curves, save_curves_png, save_training_curves_png, write_curve_plots
from bonescan.data.dataset import ManifestDataset, label_indices, load_split
from bonescan.gradcam import GalleryItem, gradcam_maps, overlay_name, save_case_grid, save_overlays
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
    "select_gradcam_cases",
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
        curves: the ROC and PR curves of every class, with bands and operating points.
        calibration: ECE, Brier score and reliability bins of the raw probabilities.
        calibrated: the same after temperature scaling (None unless `temperature_scaling`).
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
    curves: CurveSet | None = None
    calibration: CalibrationReport | None = None
    calibrated: CalibrationReport | None = None

    @property
    def notes(self) -> list[str]:
        return self.report.notes


def select_gradcam_cases(
    labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str], per_class: int, seed: int
) -> list[tuple[int, bool]]:
    """(row, correct) of up to `per_class` correctly and `per_class` wrongly predicted images of each true
    class, drawn reproducibly, class by class (a gallery of only successes would hide what fails)."""
    rng = np.random.default_rng(seed)
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    chosen: list[tuple[int, bool]] = []
    for name in classes:
        for correct in (True, False):
            rows = np.flatnonzero((labels == name) & ((predicted == labels) == correct))
            chosen.extend((int(i), correct) for i in rng.permutation(rows)[:per_class])
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
    calibration_images: pd.DataFrame | None = None,
    history: Sequence[Mapping[str, object]] = (),
    test_time_flip: bool = False,
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
        decision: the model's decision rule (default: argmax); its predictions are the operating point.
        calibration_images: validation rows the temperature is fitted on (needed when
            `cfg.temperature_scaling`; never the scored rows).
        history: the model's per-epoch training history (drawn as training curves).
        test_time_flip: average each image's probabilities with its mirror's (the model's own setting).
    """
    start = time.perf_counter()
    if images.empty:
        raise ValueError(f"no real images in the {cfg.split} split to evaluate")
    if cfg.temperature_scaling and (calibration_images is None or calibration_images.empty):
        raise ValueError("evaluate.temperature_scaling needs validation images to fit the temperature on")
    root = Path(root)
    device = resolve_device(cfg.device, "evaluate.device")
    rule = decision or DecisionRule()
    model = model.to(device).eval()
    images = images.reset_index(drop=True)
    dataset = ManifestDataset(images, classes, root=root)
    per_image, units = _score(model, dataset, images, classes, cfg, device, image_size, rule, test_time_flip)
    log.info("scored %d %s images in %.1f s", len(images), cfg.split, time.perf_counter() - start)

    prob_cols = [f"p_{c}" for c in classes]
    y_true = np.asarray(label_indices(list(units["label"]), classes))
    y_prob, groups = units[prob_cols].to_numpy(), units["patient_id"].to_numpy()
    report = evaluate_predictions(y_true, y_prob, groups, classes, cfg.n_boot, cfg.ci, cfg.seed, rule)
    for note in report.notes:
        log.warning("%s", note)
    y_pred = np.asarray(label_indices(list(units["predicted"]), classes))
    curves = ovr_curves(y_true, y_prob, y_pred, groups, classes, n_boot=cfg.n_boot, ci=cfg.ci, seed=cfg.seed,
                        points=cfg.curve_points)  # fmt: skip
    boot = {"n_bins": cfg.calibration_bins, "n_boot": cfg.n_boot, "ci": cfg.ci, "seed": cfg.seed}
    calibration = assess_calibration(y_true, y_prob, groups, **boot)
    calibrated = None
    if cfg.temperature_scaling:
        val = calibration_images.reset_index(drop=True)
        _, val_units = _score(model, ManifestDataset(val, classes, root=root), val, classes, cfg, device,
                              image_size, rule, test_time_flip)  # fmt: skip
        temperature = fit_temperature(val_units[prob_cols].to_numpy(),
                                      label_indices(list(val_units["label"]), classes))  # fmt: skip
        calibrated = assess_calibration(y_true, apply_temperature(y_prob, temperature), groups,
                                        temperature=temperature, **boot)  # fmt: skip
        log.info("temperature %.3f fitted on %d val units: ECE %.3f -> %.3f", temperature, len(val_units),
                 calibration.ece, calibrated.ece)  # fmt: skip

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
    cm = compute_confusion(y_true, y_pred, len(classes))
    files["confusion_png"] = save_confusion_png(cm, classes, reports_dir / "confusion_matrix.png", cfg.unit)
    files.update(_write_curves_and_calibration(curves, calibration, calibrated, cfg, reports_dir, plots_dir))
    training_png = save_training_curves_png(history, reports_dir / "training_curves.png",
                                            title=f"training of {model_name or 'the classifier'} (fine-tuning)")
    if training_png:
        files["training_curves_png"] = training_png

    if cfg.gradcam_per_class > 0 and hasattr(model, "gradcam_layers"):
        files.update(_gradcam(model, dataset, per_image, classes, cfg, device, image_size, reports_dir))

    fingerprint = _fingerprint(images)
    flat = report.flat()
    n_patients = int(images["patient_id"].nunique())
    flat.update(calibration.flat())
    if calibrated is not None:
        flat.update(calibrated.flat("_calibrated"), temperature=round(calibrated.temperature, 6))
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
        "curves": _curve_summary(curves),
        "calibration": {"bins": cfg.calibration_bins, "temperature": calibrated.temperature if calibrated else None},
        "notes": report.notes,
        "seconds": round(seconds, 2),
    }
    # The report and the metrics first, the summary (which promote pairs with the model) last.
    files["report"] = atomic_write(reports_dir / "report.md",
                                   render_report(report, classes, summary, calibration, calibrated))
    files["summary"] = atomic_write_json(reports_dir / "summary.json", summary)
    log.info("%s %s = %s (%d %s units, %.1f s)", cfg.split, cfg.primary_metric, flat.get(cfg.primary_metric),
             len(units), cfg.unit, seconds)
    return EvalResult(flat, report, cfg.unit, len(images), len(units), n_patients, fingerprint, seconds, files,
                      curves, calibration, calibrated)  # fmt: skip


def _score(
    model: nn.Module,
    dataset: ManifestDataset,
    images: pd.DataFrame,
    classes: Sequence[str],
    cfg: EvaluateConfig,
    device: torch.device,
    image_size: Sequence[int] | None,
    rule: DecisionRule,
    test_time_flip: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image predictions and the scored units (studies or images) of one set of manifest rows."""
    prob = predict_probabilities(model, dataset, cfg.batch_size, device, image_size,
                                 test_time_flip=test_time_flip)  # fmt: skip
    per_image = images[["image_id", "study_id", "patient_id", "view", "label"]].copy()
    per_image["predicted"] = [classes[i] for i in rule.predict(prob)]
    per_image[[f"p_{c}" for c in classes]] = prob
    units = aggregate_by_study(per_image, classes, rule) if cfg.unit == "study" else per_image
    return per_image, units


def _curve_summary(curves: CurveSet) -> dict[str, object]:
    """Areas and operating points per class, and the classes without a curve (for the HTML report)."""
    out: dict[str, object] = {"ci": curves.ci, "n_boot": curves.n_boot, "skipped": dict(curves.skipped)}
    for kind, shown in curves.curves.items():
        out[kind] = {c.name: {"area": round(c.area, 6), "point": [_none_if_nan(v) for v in c.point],
                              "prevalence": round(c.prevalence, 6)} for c in shown}  # fmt: skip
    return out


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _write_curves_and_calibration(
    curves: CurveSet,
    calibration: CalibrationReport,
    calibrated: CalibrationReport | None,
    cfg: EvaluateConfig,
    reports_dir: Path,
    plots_dir: Path,
) -> dict[str, Path]:
    files = write_curve_plots(curves, plots_dir)
    units = "studies" if cfg.unit == "study" else "images"
    pct = round(100 * cfg.ci)
    files["roc_png"] = save_curves_png(curves, "roc", reports_dir / "roc_curves.png",
                                       f"ROC, one vs rest, per {cfg.unit} ({pct} % patient-bootstrap bands)")
    files["pr_png"] = save_curves_png(curves, "pr", reports_dir / "pr_curves.png",
                                      f"precision-recall, one vs rest, per {cfg.unit} ({pct} % patient-bootstrap bands)")
    bins = calibration.bins.assign(perfect=calibration.bins["confidence"])
    if calibrated is not None:
        scaled = calibrated.bins.rename(columns=lambda c: f"{c}_calibrated")
        bins = pd.concat([bins.reset_index(drop=True), scaled.reset_index(drop=True)], axis=1)
    files["calibration_csv"] = _write_csv(bins, plots_dir / "calibration.csv")
    files["reliability_png"] = save_reliability_png(calibration, reports_dir / "reliability.png", calibrated,
                                                    f"reliability of the {cfg.split} {units}")
    return files


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
    val = load_split(manifest, "val", include_synthetic=False) if cfg.temperature_scaling else None
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
        calibration_images=val,
        history=record.history,
        test_time_flip=record.test_time_flip,
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
    """Overlays of correct and wrong cases per class, their index (`gradcam/cases.csv`) and the gallery: a grid
    with a column per true class and a row each of correct and wrong cases."""
    cases = select_gradcam_cases(per_image["label"], per_image["predicted"], classes, cfg.gradcam_per_class,
                                 cfg.seed)  # fmt: skip
    if not cases:
        return {}
    start = time.perf_counter()
    rows = [i for i, _ in cases]
    batch = torch.stack([dataset[i][0] for i in rows]).to(device)  # (B, 1, H, W)
    inputs = model_input(batch, getattr(model, "in_chans", 1), image_size)
    predicted = [classes.index(per_image["predicted"][i]) for i in rows]
    maps = gradcam_maps(model, inputs, predicted)
    shown = inputs[:, 0].detach().cpu().numpy()  # (B, H, W) at the model's resolution
    items, index = [], []
    for j, (i, correct) in enumerate(cases):
        label, guess = per_image["label"][i], per_image["predicted"][i]
        p = float(per_image[f"p_{guess}"][i])
        caption = f"true {label}\npred {guess} {p:.2f}"
        item = GalleryItem(per_image["image_id"][i], shown[j], caption, {k: v[j] for k, v in maps.items()})
        items.append(item)
        for layer in maps:
            index.append({"image_id": item.key, "label": label, "predicted": guess, "probability": round(p, 4),
                          "correct": correct, "layer": layer, "file": overlay_name(item.key, layer)})  # fmt: skip
    gradcam_dir = reports_dir / "gradcam"
    for stale in gradcam_dir.glob("*.png"):  # overlays of images no longer chosen must not linger
        stale.unlink()
    save_overlays(items, gradcam_dir)
    _write_csv(pd.DataFrame(index), gradcam_dir / "cases.csv")
    cells: dict[tuple[str, str], list[GalleryItem]] = {}
    for item, (i, correct) in zip(items, cases, strict=True):
        cells.setdefault(("correct" if correct else "wrong", f"true {per_image['label'][i]}"), []).append(item)
    gallery = save_case_grid(cells, ["correct", "wrong"], [f"true {c}" for c in classes],
                             reports_dir / "gradcam_gallery.png", title=f"Grad-CAM, {cfg.split} images")  # fmt: skip
    log.info("Grad-CAM of %d image(s) over %d layer(s) in %.1f s", len(rows), len(maps), time.perf_counter() - start)
    return {"gradcam_dir": gradcam_dir, "gradcam_cases": gradcam_dir / "cases.csv", "gradcam_gallery": gallery}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def render_report(
    report: MetricReport,
    classes: Sequence[str],
    summary: dict,
    calibration: CalibrationReport | None = None,
    calibrated: CalibrationReport | None = None,
) -> str:
    """Markdown: summary metrics with intervals, a per-class table, calibration, and the notes."""
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
    for title, cal in (("raw", calibration), (f"temperature {calibrated.temperature:.3f} (fitted on val)"
                                              if calibrated else "", calibrated)):
        if cal is None:
            continue
        if title == "raw":
            lines += ["", f"Calibration ({cal.n_bins} equal-width confidence bins):", "",
                      f"| probabilities | ECE | {pct} % CI | Brier | {pct} % CI |", "|---|---|---|---|---|"]
        lines.append(f"| {title} | {_fmt(cal.ece)} | {_fmt(cal.ece_interval[0])} - {_fmt(cal.ece_interval[1])} "
                     f"| {_fmt(cal.brier)} | {_fmt(cal.brier_interval[0])} - {_fmt(cal.brier_interval[1])} |")
    if report.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in report.notes]]
    return "\n".join(lines) + "\n"
