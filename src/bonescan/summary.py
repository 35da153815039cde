"""The end-of-run summary: what the pipeline produced, read back from its own output files.

Reads only stage outputs (metrics and reports), so it shows exactly what `dvc repro` produced and
never recomputes anything. Stages that have not run yet are listed as such.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bonescan.config import Params
from bonescan.data.split import SPLITS


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def ingest_table(params: Params) -> Table:
    table = Table(title="Ingest (anonymized, decoded, cropped)")
    for col in ("dataset", "files seen", "images", "quarantined", "PHI leaks", "reports"):
        table.add_column(col, justify="left" if col in ("dataset", "reports") else "right")
    for name, ds in params.datasets.items():
        ingest = _read_json(Path(ds.reports_dir) / "ingest.json")
        phi = _read_json(Path(ds.reports_dir) / "phi_scan.json")
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
    metrics = _read_json(Path(ds.metrics_dir) / "split.json")
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
    report = _read_json(Path(params.phantoms.out_dir) / "phantom_report.json")
    if report is None:
        return "Phantom cohort: not generated (using your own data, or `phantoms` has not run)."
    bone, sep = report["bone"], report["global_statistic_separability"]
    return (
        f"Phantom cohort: {bone['patients']} patients, {bone['studies']} studies {bone['classes']}; "
        f"logistic regression on global image statistics: balanced accuracy {sep['balanced_accuracy']:.3f} "
        f"vs chance {sep['chance_balanced']:.3f} (accuracy {sep['accuracy']:.3f} vs majority "
        f"{sep['majority_baseline']:.3f})."
    )


def render_summary(params: Params, console: Console) -> None:
    """Print every summary table and where the results are."""
    console.print(cohort_line(params))
    console.print(ingest_table(params))
    for name in params.datasets:
        console.print(split_table(params, name))
    target = params.dataset("target")
    console.print(
        "Results: manifest "
        f"[bold]{target.out_dir}/manifest.csv[/], images [bold]{target.out_dir}/images/[/], "
        f"reports [bold]{target.reports_dir}/[/], metrics [bold]{target.metrics_dir}/[/] "
        "(`dvc metrics show`, `dvc dag`)."
    )
