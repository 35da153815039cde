"""The `report` stage: one self-contained HTML page of a pipeline run, read back from the stages' outputs.

It recomputes nothing: counts and the PHI scan (ingest), the split, the GAN sample grids and the gate's
decisions (synthesize), training curves, test metrics with intervals, ROC / PR / reliability curves, the
confusion matrix and the Grad-CAM cases (evaluate), the promotion decision and the model card (promote).
A stage that has not run (the GAN switched off, promote not yet run) shows as "not run"; nothing fails
for a missing optional input.

Offline by construction: every image is inlined as a base64 data URI and the style sheet sits in the
page, so opening the file makes no request at all. Jinja2 renders it with autoescaping on; the model
card's markdown goes through markdown-it with raw HTML disabled. Only post-ingest artifacts are read
(pseudonymous ids and counts): never a raw folder, never `quarantine.csv` (which names raw files).
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import pandas as pd
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markupsafe import Markup

from bonescan.config import Params
from bonescan.runtime import atomic_write

__all__ = ["DatasetSources", "ReportResult", "ReportSources", "build_report", "render_report"]

log = logging.getLogger(__name__)

NOT_RUN = "not run"
_SPLITS = ("train", "val", "test")
_MAX_IMAGE_BYTES = 8 * 2**20  # an image larger than this is left out (a report should open quickly)


@dataclass(frozen=True)
class DatasetSources:
    """What ingest and split wrote for one dataset: counts only."""

    name: str
    classes: tuple[str, ...]
    ingest: Path  # ingest.json
    phi_scan: Path  # phi_scan.json
    split: Path  # split.json


@dataclass(frozen=True)
class ReportSources:
    """Every file the report reads (the report stage's deps in dvc.yaml)."""

    title: str
    classes: tuple[str, ...]
    datasets: tuple[DatasetSources, ...]
    gan_report: Path
    gan_samples: tuple[Path, ...]  # folders of sample grids (pretrain, finetune)
    clf_metrics: Mapping[str, Path]  # stage -> metrics json
    eval_metrics: Path
    eval_dir: Path  # summary.json, *.png, gradcam/
    primary_metric: str
    promotion: Path
    model_card: Path

    @classmethod
    def from_params(cls, params: Params, root: str | Path = ".") -> ReportSources:
        """The paths params give each stage's outputs, under `root`."""
        root = Path(root)
        datasets = tuple(
            DatasetSources(name, tuple(ds.classes), root / ds.reports_dir / "ingest.json",
                           root / ds.reports_dir / "phi_scan.json", root / ds.metrics_dir / "split.json")
            for name, ds in params.datasets.items()
        )  # fmt: skip
        gan_plots = root / params.gan.plots_dir
        return cls(
            title=params.report.title,
            classes=tuple(params.dataset(params.evaluate.dataset).classes),
            datasets=datasets,
            gan_report=root / params.gan.report,
            gan_samples=(gan_plots / "pretrain" / "samples", gan_plots / "finetune" / "samples"),
            clf_metrics={s: root / params.clf.metrics_dir / f"clf_{s}.json" for s in ("pretrain", "finetune")},
            eval_metrics=root / params.evaluate.metrics_file,
            eval_dir=root / params.evaluate.reports_dir,
            primary_metric=params.evaluate.primary_metric,
            promotion=root / params.promote.report,
            model_card=root / params.promote.model_card,
        )


@dataclass(frozen=True)
class ReportResult:
    """The written page and what it shows.

    Attributes:
        path: the HTML file.
        sections: section title -> "ok" or "not run".
        images: images inlined.
        bytes: size of the page.
    """

    path: Path
    sections: dict[str, str] = field(default_factory=dict)
    images: int = 0
    bytes: int = 0


# --------------------------------------------------------------------------- reading


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("report: %s is unreadable (%s); its section shows as not run", path, type(exc).__name__)
        return None
    if data is not None and not isinstance(data, dict):
        log.warning("report: %s holds no JSON object; its section shows as not run", path)
        return None
    return data


class _Images:
    """Inlines PNGs as data URIs, counting them."""

    def __init__(self) -> None:
        self.count = 0

    def uri(self, path: Path | None, folder: Path | None = None) -> str | None:
        """A PNG as a data URI, or None; a path named by a file (cases.csv, the card) must stay in `folder`.

        Without the check a `../` or a link in an index would inline any PNG on disk: a raw radiograph
        with burned-in text, say, where the report promises post-ingest outputs only.
        """
        if path is None or not path.is_file() or path.suffix.lower() != ".png":
            return None
        if folder is not None and not path.resolve().is_relative_to(folder.resolve()):
            log.warning("report: an image named outside %s is left out", folder)
            return None
        data = path.read_bytes()
        if len(data) > _MAX_IMAGE_BYTES:
            log.warning("report: %s is larger than %d MiB and is left out", path, _MAX_IMAGE_BYTES >> 20)
            return None
        self.count += 1
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _num(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _interval(metrics: Mapping[str, object], name: str) -> str:
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    return f"{_num(low)} – {_num(high)}" if low is not None and high is not None else "–"


def _data_section(sources: ReportSources) -> list[dict]:
    out = []
    for ds in sources.datasets:
        ingest, phi, split = _json(ds.ingest), _json(ds.phi_scan), _json(ds.split)
        entry: dict = {"name": ds.name, "ingest": None, "phi": None, "split": None}
        if ingest:
            reasons = {k.removeprefix("quarantined_").replace("_", " "): v for k, v in ingest.items()
                       if k.startswith("quarantined_") and isinstance(v, int)}  # fmt: skip
            entry["ingest"] = {
                "rows": [(label, ingest.get(key)) for label, key in (
                    ("files seen", "files_seen"), ("images written", "images_written"), ("patients", "patients"),
                    ("studies", "studies"), ("quarantined files", "quarantined"))],  # fmt: skip
                "per_class": [(c, ingest.get(f"images_{c}", 0)) for c in ds.classes],
                "reasons": sorted(reasons.items()),
            }
        if phi:
            entry["phi"] = {"files": phi.get("files"), "leaks": phi.get("leaks")}
        if split:
            entry["split"] = {
                "rows": [(c, [split.get(f"{s}_{c}_images", 0) for s in _SPLITS]) for c in ds.classes],
                "images": [split.get(f"{s}_images", 0) for s in _SPLITS],
                "patients": [split.get(f"{s}_patients", 0) for s in _SPLITS],
                "overlap": split.get("patients_in_two_splits"),
            }
        out.append(entry)
    return out


def _gan_section(sources: ReportSources, images: _Images) -> dict | None:
    report = _json(sources.gan_report)
    grids = []
    for folder in sources.gan_samples:
        for png in sorted(folder.glob("*_final.png")) if folder.is_dir() else []:
            uri = images.uri(png, folder)
            if uri:
                grids.append({"caption": f"{folder.parent.name}: {png.stem.removesuffix('_final')} "
                                         "(rows: classes, fixed noise)", "uri": uri})  # fmt: skip
    if report is None and not grids:
        return None
    rows = []
    for arch, entry in (report or {}).get("archs", {}).items():
        for cls, q in entry.get("classes", {}).items():
            rows.append({"arch": arch, "class": cls, "fidelity": _num(q.get("fidelity")),
                         "diversity": _num(q.get("diversity_ssim")), "ssim": _num(q.get("ssim_to_real")),
                         "tstr": _num(q.get("tstr_recall")), "admitted": bool(q.get("admitted")),
                         "reason": q.get("reason", "")})  # fmt: skip
    synthesis = (report or {}).get("synthesis", {})
    gate = (report or {}).get("gate", {})  # keys the template reads, present or not: a missing one is "–"
    gate = {key: gate.get(key, "–") for key in ("min_fidelity", "min_label_lift", "max_diversity_ssim")}
    return {"rows": rows, "grids": grids, "gate": gate,
            "arch": synthesis.get("arch"), "written": synthesis.get("written", {})}  # fmt: skip


def _training_section(sources: ReportSources, images: _Images) -> dict | None:
    stages = []
    for stage, path in sources.clf_metrics.items():
        m = _json(path)
        if m:
            stages.append({"stage": stage, "model": m.get("model", "–"), "init": m.get("init", "–"),
                           "train": m.get("train_images"), "val": m.get("val_images"),
                           "best": m.get("best_epoch"), "f1": _num(m.get("val_macro_f1")),
                           "acc": _num(m.get("val_accuracy"))})  # fmt: skip
    curves = images.uri(sources.eval_dir / "training_curves.png")
    if not stages and curves is None:
        return None
    return {"stages": stages, "curves": curves}


def _evaluation_section(sources: ReportSources, images: _Images) -> dict | None:
    metrics, summary = _json(sources.eval_metrics), _json(sources.eval_dir / "summary.json")
    if metrics is None:
        return None
    summary = summary or {}
    pct = round(100 * float(summary.get("ci", 0.95)))
    summary_names, per_class_names = _metric_names(metrics, sources.classes)
    macro = [{"name": n, "value": _num(metrics.get(n)), "ci": _interval(metrics, n),
              "primary": n == sources.primary_metric} for n in summary_names]  # fmt: skip
    per_class = [{"name": c, "cells": [(_num(metrics.get(f"{m}_{c}")), _interval(metrics, f"{m}_{c}"))
                                       for m in per_class_names]} for c in sources.classes]  # fmt: skip
    calibration = []
    for label, suffix in (("raw", ""), ("temperature-scaled", "_calibrated")):
        if f"ece{suffix}" in metrics:
            calibration.append({"label": label, "ece": _num(metrics.get(f"ece{suffix}")),
                                "ece_ci": _interval(metrics, f"ece{suffix}"),
                                "brier": _num(metrics.get(f"brier{suffix}")),
                                "brier_ci": _interval(metrics, f"brier{suffix}")})  # fmt: skip
    curves = summary.get("curves", {})
    points = []
    for c in sources.classes:
        roc, pr = curves.get("roc", {}).get(c), curves.get("pr", {}).get(c)
        if roc or pr:
            points.append({"name": c, "auc": _num((roc or {}).get("area")), "ap": _num((pr or {}).get("area")),
                           "fpr": _num(((roc or {}).get("point") or [None])[0]),
                           "tpr": _num(((roc or {}).get("point") or [None, None])[1]),
                           "precision": _num(((pr or {}).get("point") or [None, None])[1])})  # fmt: skip
    decision = summary.get("decision") or {}
    return {
        "pct": pct, "macro": macro, "per_class": per_class, "per_class_names": per_class_names,
        "split": summary.get("split", "test"), "unit": summary.get("unit", "?"),
        "n_units": summary.get("n_units"), "n_images": summary.get("n_images"),
        "n_patients": summary.get("n_patients"), "n_boot": summary.get("n_boot"),
        "model": summary.get("model", ""), "fingerprint": summary.get("fingerprint", ""),
        "decision": decision.get("kind", "argmax") + (f" (chosen on {decision['chosen_on']})"
                                                      if decision.get("chosen_on") else ""),
        "temperature": _num((summary.get("calibration") or {}).get("temperature")),
        "calibration": calibration, "points": points, "skipped": curves.get("skipped", {}),
        "notes": summary.get("notes", []),
        "images": {name: images.uri(sources.eval_dir / f"{name}.png")
                   for name in ("roc_curves", "pr_curves", "reliability", "confusion_matrix")},
        "gradcam": _gradcam_grid(sources, images),
    }  # fmt: skip


def _metric_names(metrics: Mapping[str, object], classes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Summary and per-class metric names in the order evaluate wrote them: every value with an interval.

    Read from the file rather than from `bonescan.metrics`, so the page shows what was measured (and the
    report stage does not depend on the metric code). Calibration has a table of its own.
    """
    with_ci = [k for k in metrics if f"{k}_ci_low" in metrics]
    suffixes = tuple(f"_{c}" for c in classes)
    per_class = list(dict.fromkeys(k[: -len(s)] for k in with_ci for s in suffixes if k.endswith(s)))
    calibration = ("ece", "brier")
    summary = [k for k in with_ci if not k.endswith(suffixes) and not k.startswith(calibration)]
    return summary, per_class


def _gradcam_grid(sources: ReportSources, images: _Images) -> dict | None:
    """Rows "correct" and "wrong", one column per true class, each cell its cases' overlays."""
    index = sources.eval_dir / "gradcam" / "cases.csv"
    if not index.is_file():
        return None
    columns = {"image_id": str, "label": str, "predicted": str, "layer": str, "file": str}
    try:
        cases = pd.read_csv(index, dtype=columns, keep_default_na=False)
        cases["probability"] = pd.to_numeric(cases["probability"], errors="coerce")
        cases = cases[[*columns, "probability", "correct"]]
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        log.warning("report: %s is unreadable (%s); the Grad-CAM grid shows as not run", index, type(exc).__name__)
        return None
    rows = []
    for correct, title in ((True, "correct"), (False, "wrong")):
        cells = []
        for cls in sources.classes:
            chosen = cases[(cases["label"] == cls) & (cases["correct"].astype(str).str.lower() == str(correct).lower())]
            cell = []
            for image_id, group in chosen.groupby("image_id", sort=False):
                first = group.iloc[0]
                overlays = [{"layer": r.layer, "uri": images.uri(index.parent / r.file, index.parent)}
                            for r in group.itertuples() if r.file]  # fmt: skip
                cell.append({"id": image_id, "predicted": first["predicted"], "p": _num(float(first["probability"]), 2),
                             "overlays": [o for o in overlays if o["uri"]]})  # fmt: skip
            cells.append(cell)
        rows.append({"title": title, "cells": cells})
    return {"classes": list(sources.classes), "rows": rows}


def _promotion_section(sources: ReportSources, images: _Images) -> dict | None:
    report = _json(sources.promotion)
    card = _card_html(sources.model_card, images) if sources.model_card.is_file() else None
    if report is None and card is None:
        return None
    report = report or {}
    return {"action": report.get("action", "–"), "promoted": bool(report.get("promoted")),
            "reason": report.get("reason", ""), "model": report.get("registered_model", ""),
            "version": report.get("version", "–"), "aliases": sorted((report.get("aliases_after") or {}).items()),
            "metric": report.get("primary_metric", ""), "challenger": _num(report.get("challenger_value")),
            "champion": _num(report.get("champion_value")), "dry_run": bool(report.get("dry_run")),
            "card": card}  # fmt: skip


def _card_html(path: Path, images: _Images) -> Markup:
    """The model card's markdown as HTML: no raw HTML passes, local PNGs are inlined, other images dropped."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(renderer, tokens, idx, options, env) -> str:
        token = tokens[idx]
        src = str(token.attrGet("src") or "")
        alt = "".join(child.content for child in token.children or [])
        uri = images.uri(path.parent / src, path.parent) if src and ":" not in src else None
        if uri is None:
            return f"<em>[{escapeHtml(alt)}]</em>"
        return f'<img src="{uri}" alt="{escapeHtml(alt)}">'

    md.add_render_rule("image", image)
    return Markup(md.render(path.read_text(encoding="utf-8")))  # noqa: S704 (markdown-it escapes; html disabled)


# --------------------------------------------------------------------------- rendering


def _environment() -> jinja2.Environment:
    templates = resources.files("bonescan.report") / "templates"
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (templates / name).read_text(encoding="utf-8")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the test, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(sources: ReportSources) -> tuple[str, dict[str, str], int]:
    """The page's HTML, each section's status ("ok" / "not run") and the number of inlined images."""
    images = _Images()
    context = {
        "title": sources.title,
        "classes": list(sources.classes),
        "datasets": _data_section(sources),
        "gan": _gan_section(sources, images),
        "training": _training_section(sources, images),
        "evaluation": _evaluation_section(sources, images),
        "promotion": _promotion_section(sources, images),
        "not_run": NOT_RUN,
    }
    sections = {
        "data": "ok" if any(d["ingest"] for d in context["datasets"]) else NOT_RUN,
        "split": "ok" if any(d["split"] for d in context["datasets"]) else NOT_RUN,
        "gan": "ok" if context["gan"] else NOT_RUN,
        "training": "ok" if context["training"] else NOT_RUN,
        "evaluation": "ok" if context["evaluation"] else NOT_RUN,
        "gradcam": "ok" if context["evaluation"] and context["evaluation"]["gradcam"] else NOT_RUN,
        "promotion": "ok" if context["promotion"] else NOT_RUN,
    }
    html = _environment().get_template("index.html.j2").render(**context, sections=sections)
    return html, sections, images.count


def build_report(sources: ReportSources, out: str | Path) -> ReportResult:
    """The stage: render the page from `sources` and write it atomically to `out`."""
    html, sections, count = render_report(sources)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    path = atomic_write(Path(out), html)
    missing = [name for name, state in sections.items() if state == NOT_RUN]
    log.info("HTML report %s: %d image(s) inlined, %.0f KiB%s", path, count, len(html.encode()) / 1024,
             f"; not run: {', '.join(missing)}" if missing else "")  # fmt: skip
    return ReportResult(path, sections, count, len(html.encode()))

