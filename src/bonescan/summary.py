"""The end-of-run summary: what the pipeline produced, read back from its own output files.

Reads only stage outputs (metrics and reports), so it shows exactly what `dvc repro` produced and
never recomputes anything. Stages that have not run yet are listed as such.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from bonescan.config import Params
from bonescan.data.split import SPLITS
from bonescan.outputs import read_output_json


def ingest_table(params: Params) -> Table:
    table = Table(title="Ingest (anonymized, decoded, cropped)")
    for col in ("dataset", "files seen", "images", "quarantined", "PHI leaks", "reports"):
        table.add_column(col, justify="left" if col in ("dataset", "reports") else "right")
    for name, ds in params.datasets.items():
        ingest = read_output_json(Path(ds.reports_dir) / "ingest.json")
        phi = read_output_json(Path(ds.reports_dir) / "phi_scan.json")
        if ingest is None:
            table.add_row(name, "-", "-", "-", "-", "not run yet")
            continue
        table.add_row(
            name,
            str(ingest.get("files_seen", "?")),
            str(ingest.get("images_written", "?")),
            str(ingest.get("quarantined", "?")),
            str(phi.get("leaks", "?")) if phi else "-",
            f"{ds.reports_dir}/quarantine.csv",
        )
    return table


def split_table(params: Params, dataset: str) -> Table:
    ds = params.dataset(dataset)
    metrics = read_output_json(Path(ds.metrics_dir) / "split.json")
    table = Table(title=f"Split of '{dataset}' (images; patients in brackets)")
    table.add_column("class")
    for split in SPLITS:
        table.add_column(split, justify="right")
    if metrics is None:
        table.add_row("not run yet", *["-"] * len(SPLITS))
        return table
    for cls in ds.classes:
        table.add_row(cls, *(str(metrics.get(f"{s}_{cls}_images", 0)) for s in SPLITS))
    table.add_row(
        "[bold]all[/]",
        *(f"[bold]{metrics.get(f'{s}_images', 0)}[/] ({metrics.get(f'{s}_patients', 0)})" for s in SPLITS),
    )
    table.caption = f"patients in two splits: {metrics.get('patients_in_two_splits', '?')}"
    return table


def cohort_line(params: Params) -> str:
    """The phantom cohort and its check that no global image statistic gives the class away."""
    report = read_output_json(Path(params.phantoms.out_dir) / "phantom_report.json")
    if report is None:
        return "Phantom cohort: not generated (using your own data, or `phantoms` has not run)."
    bone, sep = report["bone"], report["global_statistic_separability"]
    return (
        f"Phantom cohort: {bone['patients']} patients, {bone['studies']} studies {bone['classes']}; "
        f"logistic regression on global image statistics: balanced accuracy {sep['balanced_accuracy']:.3f} "
        f"vs chance {sep['chance_balanced']:.3f} (accuracy {sep['accuracy']:.3f} vs majority "
        f"{sep['majority_baseline']:.3f})."
    )


def _num(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and value == value else "-"


def gan_table(params: Params) -> Table:
    """Yu et al. 2023 Table 3 in brief: per architecture and class, similarity, diversity, fidelity, admission."""
    report = read_output_json(Path(params.gan.report))
    table = Table(title="GAN quality (synthetic images per class)")
    columns = ("generator", "class", "SSIM to real", "pairwise SSIM", "fidelity", "judge on real", "TSTR recall",
               "admitted")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("generator", "class", "admitted") else "right")
    if report is None:
        table.add_row("not run yet", *["-"] * (len(columns) - 1))
        return table
    synthesis = report.get("synthesis", {})
    for arch, entry in report.get("archs", {}).items():
        for cls, q in entry.get("classes", {}).items():
            written = synthesis.get("written", {}).get(cls) if arch == synthesis.get("arch") else None
            admitted = "yes" if q.get("admitted") else "no"
            if written is not None:
                admitted += f" ({written} written)"
            table.add_row(
                arch, cls, _num(q.get("ssim_to_real")), _num(q.get("diversity_ssim")), _num(q.get("fidelity")),
                _num(q.get("judge_real_recall")), _num(q.get("tstr_recall")), admitted,
            )  # fmt: skip
    total = sum((synthesis.get("written") or {}).values())
    source = (f"{total} images written from {synthesis.get('arch', '?')}" if total
              else "no synthetic images written (no class admitted, or none needed)")
    table.caption = f"{source}; details in {params.gan.report}"
    return table


def training_table(params: Params) -> Table:
    """Both transfer-learning stages: data sizes, best epoch and its validation scores."""
    table = Table(title=f"Classifier training ({params.clf.model})")
    for col in ("stage", "init", "train images", "val images", "best epoch", "val macro F1", "val acc", "s"):
        table.add_column(col, justify="left" if col in ("stage", "init") else "right")
    for stage in ("clf_pretrain", "clf_finetune"):
        m = read_output_json(Path(params.clf.metrics_dir) / f"{stage}.json")
        if m is None:
            table.add_row(stage, "not run yet", *["-"] * 6)
            continue
        table.add_row(
            stage, str(m.get("init", "-")), str(m.get("train_images", "-")), str(m.get("val_images", "-")),
            str(m.get("best_epoch", "-")), _num(m.get("val_macro_f1")), _num(m.get("val_accuracy")),
            _num(m.get("seconds"), 0),
        )  # fmt: skip
    return table


def evaluation_table(params: Params) -> Table:
    """Test-split metrics with their patient-bootstrap intervals."""
    from bonescan.metrics import MACRO_METRICS

    cfg = params.evaluate
    m = read_output_json(Path(cfg.metrics_file))
    pct = round(100 * cfg.ci)
    table = Table(title=f"Evaluation on the {cfg.split} split (per {cfg.unit}, {pct} % patient-bootstrap CI)")
    for col in ("metric", "value", f"{pct} % CI"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    if m is None:
        table.add_row("not run yet", "-", "-")
        return table
    names = [*MACRO_METRICS, *(f"recall_{c}" for c in params.dataset(cfg.dataset).classes)]
    for name in names:
        if name not in m:
            continue
        label = f"[bold]{name}[/]" if name == cfg.primary_metric else name
        low, high = m.get(f"{name}_ci_low"), m.get(f"{name}_ci_high")
        table.add_row(label, _num(m[name]), f"{_num(low)} - {_num(high)}" if low is not None else "-")
    table.caption = f"report: {cfg.reports_dir}/report.md, Grad-CAM: {cfg.reports_dir}/gradcam_gallery.png"
    return table


def ceiling_line(eval_metrics: Path, ceiling_metrics: Path) -> str:
    """'model X of ceiling Y' for the end-of-run summary, from the two stages' metrics files."""
    model, ceiling = read_output_json(eval_metrics), read_output_json(ceiling_metrics)
    if not ceiling or not ceiling.get("available"):
        return "Ceiling: none (no phantom ground truth; `bonescan ceiling` runs on the embedded cohort only)."
    top = ceiling["ceiling_balanced_accuracy"]
    head = f"model {model['balanced_accuracy']:.3f} of ceiling {top:.3f}" if model else f"ceiling {top:.3f}"
    ratio = f" ({100 * model['balanced_accuracy'] / top:.0f} %)" if model and top else ""
    pair = ceiling.get("ceiling_metastasis_vs_benign", float("nan"))
    return (
        f"Test balanced accuracy: [bold]{head}[/]{ratio}; the ceiling is a {ceiling['ceiling_model']} classifier "
        f"on the phantom's own lesion truth (metastasis vs benign: {pair:.3f}). "
        f"{100 * ceiling['visible_fraction']:.0f} % of lesions peak >= {ceiling.get('visibility_sigma', 3):g} sigma "
        f"of Poisson noise above their background at the model input, median width "
        f"{ceiling.get('lesion_fwhm_px_median', float('nan')):.1f} px ({ceiling_metrics})."
    )


def promotion_line(path: Path) -> str:
    """The registry decision of the last `bonescan promote`."""
    report = read_output_json(path)
    if report is None:
        return "Model registry: nothing registered yet (`bonescan promote`)."
    version = report.get("version", "?")
    verdict = "promoted to champion" if report.get("promote") or report.get("promoted") else "kept as challenger"
    name = report.get("registered_model", "bonescan-classifier")
    return f"Model registry: {name} version {version} {verdict}: {report.get('reason', '')}"


def report_line(params: Params) -> str:
    """Where the run's offline HTML report is, or that it has not been built."""
    path = Path(params.report.out)
    if not path.is_file():
        return f"HTML report: not built yet (`bonescan report` writes {path.as_posix()})."
    return f"HTML report: {path.as_posix()} (open it in a browser; self-contained, no network needed)."


def render_summary(params: Params, console: Console) -> None:
    """Print every summary table and where the results are."""
    console.print(cohort_line(params))
    console.print(ingest_table(params))
    for name in params.datasets:
        console.print(split_table(params, name))
    console.print(gan_table(params))
    console.print(training_table(params))
    console.print(evaluation_table(params))
    console.print(ceiling_line(Path(params.evaluate.metrics_file), Path(params.ceiling.metrics_file)))
    console.print(promotion_line(Path(params.promote.report)))
    console.print(report_line(params))
    target = params.dataset("target")
    console.print(
        "Results: manifest "
        f"[bold]{params.manifest('target').as_posix()}[/], images [bold]{target.out_dir}/images/[/], "
        f"reports [bold]{target.reports_dir}/[/], metrics [bold]{target.metrics_dir}/[/] "
        "(`dvc metrics show`, `dvc plots show`, `dvc dag`)."
    )
    console.print(
        "MLflow UI (runs, registry): [bold]source .venv/bin/activate && mlflow ui --backend-store-uri "
        "sqlite:///mlflow.db[/] -> http://127.0.0.1:5000\n"
        "Prefect UI (scheduled retraining): [bold]prefect server start[/] -> http://127.0.0.1:4200, then "
        "[bold]python -m pipeline.serve[/] in a second shell (README: Scheduled retraining with Prefect)."
    )
