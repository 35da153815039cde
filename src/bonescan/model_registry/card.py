"""The model card of a registered classifier version: use, data, metrics with CIs, decision, config, limits."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from bonescan import tracking
from bonescan.config import PromoteConfig
from bonescan.metrics import MACRO_METRICS
from bonescan.outputs import read_output_json

if TYPE_CHECKING:
    from bonescan.model_registry.stage import Candidate, PromotionResult

__all__ = ["CardSources", "card_summary", "render_model_card"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CardSources:
    """Optional reports the model card summarises (missing files are left out of the card).

    Attributes:
        manifest: the target dataset's manifest (counts per split and class; no identifier is copied).
        phi_scan: ingest's residual-PHI scan of the anonymized files.
        gan_quality: the GAN quality report (which classes' synthetic images were admitted).
        confusion_png: evaluate's confusion matrix, logged next to the card.
    """

    manifest: Path | None = None
    phi_scan: Path | None = None
    gan_quality: Path | None = None
    confusion_png: Path | None = None

    def under(self, root: Path) -> CardSources:
        """Relative paths taken relative to `root` (the project), like the paths of PromoteConfig."""
        return CardSources(*(None if p is None else root / p for p in astuple(self)))


def card_summary(result: PromotionResult, candidate: Candidate) -> str:
    value = result.challenger_value
    shown = "n/a" if value is None else f"{value:.3f}"
    low, high = (candidate.metrics.get(f"{result.primary_metric}_ci_{s}") for s in ("low", "high"))
    ci = f" ({low:.3f} - {high:.3f})" if isinstance(low, float) and isinstance(high, float) else ""
    return (
        f"{candidate.checkpoint_meta.get('model_name', 'classifier')}: {result.primary_metric} {shown}{ci} "
        f"on test split {result.test_split}. Decision: {result.action} ({result.reason}). "
        "Research use only, not diagnosis; "
        f"see model_card/model_card.md."
    )


# --------------------------------------------------------------------------- the model card


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _data_section(manifest: Path | None, classes: Sequence[str]) -> list[str]:
    if manifest is None or not manifest.is_file():
        return ["Data counts unavailable (no manifest at the configured path)."]
    frame = pd.read_csv(manifest, usecols=lambda c: c in {"label", "split", "synthetic", "patient_id"})
    if "synthetic" in frame:
        frame = frame[~frame["synthetic"].astype(str).str.lower().isin({"true", "1"})]
    counts = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    counts = counts.reindex(
        columns=[c for c in classes if c in counts.columns] + sorted(set(counts.columns) - set(classes))
    )
    splits = [s for s in ("train", "val", "test") if s in counts.index] + sorted(
        set(counts.index) - {"train", "val", "test"}
    )
    lines = [
        "Real images per split and class (anonymized, ingested; synthetic and augmented images excluded):",
        "",
    ]
    lines += ["| split | " + " | ".join(counts.columns) + " | images | patients |",
              "|---" * (len(counts.columns) + 3) + "|"]  # fmt: skip
    patients = frame.groupby("split")["patient_id"].nunique() if "patient_id" in frame else {}
    for split in splits:
        row = counts.loc[split]
        lines.append(f"| {split} | " + " | ".join(str(int(row[c])) for c in counts.columns)
                     + f" | {int(row.sum())} | {int(patients.get(split, 0))} |")  # fmt: skip
    return lines


def _gan_section(report: dict | None) -> list[str]:
    if not report:
        return []
    lines = [
        "",
        "Synthetic oversampling (GAN quality gate; admitted classes' images were added to training):",
        "",
    ]
    lines += ["| arch | class | fidelity | diversity SSIM | admitted |", "|---|---|---|---|---|"]
    for arch, values in (report.get("archs") or {}).items():
        for name, c in (values.get("classes") or {}).items():
            lines.append(f"| {arch} | {name} | {_fmt(c.get('fidelity'))} | {_fmt(c.get('diversity_ssim'))} | "
                         f"{'yes' if c.get('admitted') else 'no'} |")  # fmt: skip
    return lines


def _preprocessing_line(recorded: dict | None) -> list[str]:
    if not recorded:
        return ["- Preprocessing: not recorded in this checkpoint (`bonescan predict` applies params.yaml's)"]
    ingest = recorded.get("ingest", {})
    views = "anterior + posterior views" if recorded.get("split_views") else "one view per file"
    return [
        f"- Preprocessing (saved in the checkpoint, repeated by `bonescan predict`): modalities "
        f"{', '.join(recorded.get('modalities', []))}, {views}, body crop at {ingest.get('crop_threshold')} of "
        f"the robust maximum with margin {ingest.get('crop_margin')}, posterior mirrored: "
        f"{ingest.get('mirror_posterior')}, counts saturated at percentile {ingest.get('intensity_percentile')}"
    ]


def render_model_card(
    candidate: Candidate,
    result: PromotionResult,
    cfg: PromoteConfig,
    sources: CardSources | None = None,
    *,
    confusion_link: str | None = None,
) -> str:
    """Markdown model card of one registered version: use, data, metrics with CIs, decision, config, limits.

    Only counts, metrics and configuration appear; no identifier, path of a patient's file or image.

    Args:
        candidate: the registered checkpoint and its test metrics.
        result: the decision taken on it.
        cfg: the promotion rule's settings.
        sources: reports summarised in the data section.
        confusion_link: relative link to the confusion-matrix PNG, shown as an image when given.
    """
    sources = sources or CardSources()
    meta, metrics, summary = candidate.checkpoint_meta, candidate.metrics, candidate.summary
    classes = list(meta.get("classes", []))
    size = meta.get("image_size", ["?", "?"])
    ci = summary.get("ci")
    ci_text = f"{round(100 * ci)} %" if isinstance(ci, float) else "bootstrap"
    aliases = ", ".join(f"{a} = v{v}" for a, v in result.aliases_after.items())
    lines = [
        f"# Model card: {result.registered_model} version {result.version}",
        "",
        f"- Model: `{meta.get('model_name', '?')}`, {len(classes)} classes ({', '.join(classes)}), input "
        f"{meta.get('in_chans', '?')} x {size[0]} x {size[1]} (channels x height x width), float32 in [0, 1]",
        *_preprocessing_line(meta.get("preprocessing")),
        f"- Model digest (blake2b of weights and input contract): `{candidate.digest}`; MLflow run "
        f"`{result.run_id}`",
        f"- Aliases after this decision: {aliases or 'none'}",
        "",
        "## Intended use",
        "",
        "Research on automated classification of whole-body bone scintigraphy (healthy / metastasis / benign "
        "change) and on oversampling and transfer learning for small, imbalanced medical image sets. **Not a "
        "medical device and not for diagnosis**: outputs must not inform the care of a patient. Inputs are "
        "anterior/posterior whole-body views preprocessed exactly as in training (`bonescan predict`).",
        "",
        "## Data",
        "",
        *_data_section(sources.manifest, classes),
    ]
    phi = read_output_json(sources.phi_scan)
    if phi is not None:
        lines += ["", "Anonymization: DICOM PS3.15 Annex E Basic Profile with retained longitudinal "
                      "information "
                      f"(modified dates); the residual-PHI scan found {phi.get('leaks', 'n/a')} leak(s) in "
                      f"{phi.get('files', 'n/a')} anonymized file(s)."]  # fmt: skip
    lines += _gan_section(read_output_json(sources.gan_quality))
    unit = summary.get("unit", "unit")
    lines += [
        "",
        "## Evaluation",
        "",
        f"Test split `{candidate.test_split}` (fingerprint of its image ids and labels): "
        f"{_fmt(summary.get('n_units', metrics.get('n_units')))} {unit} unit(s) of "
        f"{_fmt(summary.get('n_patients', metrics.get('n_patients')))} patients; {ci_text} intervals from "
        f"{_fmt(summary.get('n_boot', metrics.get('n_boot')))} patient-level bootstrap resamples.",
        "",
        f"| metric | value | {ci_text} CI |",
        "|---|---|---|",
    ]
    for name in MACRO_METRICS:
        if name in metrics:
            lines.append(f"| {name} | {_fmt(metrics[name])} | {_fmt(metrics.get(f'{name}_ci_low'))} - "
                         f"{_fmt(metrics.get(f'{name}_ci_high'))} |")  # fmt: skip
    lines += ["", "| class | precision | recall | f1 |", "|---|---|---|---|"]
    for name in classes:
        cells = [
            f"{_fmt(metrics.get(f'{m}_{name}'))} ({_fmt(metrics.get(f'{m}_{name}_ci_low'))} - "
            f"{_fmt(metrics.get(f'{m}_{name}_ci_high'))})"
            for m in ("precision", "recall", "f1")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if confusion_link:
        lines += ["", f"![confusion matrix]({confusion_link})"]
    lines += [
        "",
        "## Promotion decision",
        "",
        f"- Decision: **{result.action}**: {result.reason}",
        f"- Rule: {result.primary_metric} must beat the champion by at least {cfg.min_improvement} on the "
        "same "
        f"test split, and every class recall must reach {cfg.min_class_recall}.",
        f"- Champion before: {('version ' + result.champion_before) if result.champion_before else 'none'}"
        + (
            f" ({result.primary_metric} {_fmt(result.champion_value)})"
            if result.champion_value is not None
            else ""
        ),
        "",
        "## Training configuration",
        "",
        "| key | value |",
        "|---|---|",
        *[
            f"| {k} | {v} |"
            for k, v in tracking.flatten(meta.get("config") or {}).items()
            if not k.endswith("_dir")
        ],
        "",
        "## Limitations",
        "",
        "- Small test set: the intervals above are wide; differences between versions inside them are not "
        "evidence.",
        "- Trained and tested on one data source; performance on other cameras, protocols, tracers or "
        "populations is unknown. The embedded demo data are synthetic phantoms, not patients.",
        "- Training data may include GAN-generated images; their realism is judged only by the quality gate "
        "above.",
        "- Probabilities are not calibrated; Grad-CAM maps show what drove a score, not where a lesion is.",
        "- Single-label classification per study: co-existing findings and other diseases are out of scope.",
    ]
    return "\n".join(lines) + "\n"
