"""`bonescan <command>`: one thin command per pipeline stage or tool.

Each command parses its arguments, loads params.yaml into typed config, calls one pure stage function
and turns its result into files, a printed summary and an exit code. No ML logic lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.logging import RichHandler

from bonescan.config import DEFAULT_PARAMS, ConfigError, Params, load_params

if TYPE_CHECKING:
    from bonescan.tracking import StageTracker

log = logging.getLogger("bonescan")
console = Console(stderr=True)


class CommandError(RuntimeError):
    """A stage finished but its result must fail the command (exit code 1), e.g. residual PHI."""


def _params(args: argparse.Namespace) -> Params:
    """params.yaml, typed; also sets torch's threads per process (base.threads) before any stage runs."""
    from bonescan.runtime import set_torch_threads

    params = load_params(args.params)
    set_torch_threads(params.base.threads)
    return params


def _tracked(stage: str, params: Params, *sections: str) -> AbstractContextManager[StageTracker]:
    """The stage's MLflow run (bonescan.tracking.tracked_stage), given the config sections it reads."""
    from bonescan.tracking import tracked_stage

    config = {name: getattr(params, name).model_dump(mode="json") for name in ("base", *sections)}
    return tracked_stage(stage, config, enabled=params.tracking.enabled, experiment=params.tracking.experiment)


# --------------------------------------------------------------------------- commands


def cmd_phantoms(args: argparse.Namespace) -> None:
    from bonescan.dicom.phantom import write_cohort

    params = _params(args)
    updates = {k: v for k, v in {"patients": args.patients, "seed": args.seed}.items() if v is not None}
    cfg = params.phantoms.model_copy(update=updates)
    out = Path(args.out or cfg.out_dir)
    if not args.out and not phantoms_in_use(params):
        out.mkdir(parents=True, exist_ok=True)  # the DVC stage's output, so the pipeline stays valid
        (out / "NOT_USED.txt").write_text("no dataset in params.yaml reads the phantom cohort; nothing generated\n")
        console.print(f"no dataset reads {out}: phantom cohort not generated")
        return
    summary = write_cohort(cfg, out)
    console.print(f"phantom cohort written to [bold]{out}[/]")
    console.print_json(json.dumps(_jsonable(summary.report())))  # aggregates only (the full record lists every study)


def phantoms_in_use(params: Params) -> bool:
    """Does any configured dataset read from the phantom cohort's folder (the demo's default)?"""
    root = Path(params.phantoms.out_dir).resolve()
    return any(root == (p := Path(d.raw_dir).resolve()) or root in p.parents for d in params.datasets.values())


def cmd_anonymize(args: argparse.Namespace) -> None:
    from bonescan.dicom.anonymize import anonymize_tree, load_secret

    cfg = _params(args).anonymize
    if args.allow_burned_in:
        cfg = cfg.model_copy(update={"allow_burned_in": True})
    report = anonymize_tree(Path(args.src), Path(args.dst), cfg, load_secret(cfg))
    console.print_json(json.dumps(_jsonable(report)))
    if report.leaks:
        raise CommandError(f"residual PHI found in {report.leaks} place(s); see the report in {args.dst}")


def cmd_ingest(args: argparse.Namespace) -> None:
    from bonescan.dicom.anonymize import load_secret
    from bonescan.ingest import ingest_dataset

    params = _params(args)
    dataset = params.dataset(args.dataset)
    secret = load_secret(params.anonymize)  # image datasets too: an unkeyed hash of a file name is guessable
    summary = ingest_dataset(
        args.dataset,
        dataset,
        params.ingest,
        params.anonymize,
        params.image_size(args.dataset),
        secret,
    )
    console.print_json(json.dumps(_jsonable(summary)))


def cmd_split(args: argparse.Namespace) -> None:
    from bonescan.data.split import LedgerKeyError, PredefinedSplitError, run_split
    from bonescan.dicom.anonymize import load_secret

    params = _params(args)
    dataset = params.dataset(args.dataset)
    secret = load_secret(params.anonymize)  # as in cmd_ingest: every dataset's pseudonyms are keyed
    try:
        result = run_split(args.dataset, dataset, params.split, secret=secret)
    except (LedgerKeyError, PredefinedSplitError) as exc:
        raise CommandError(str(exc)) from None
    console.print_json(json.dumps(result.metrics))


def cmd_secret(args: argparse.Namespace) -> None:
    from bonescan.dicom.anonymize import create_secret

    cfg = _params(args).anonymize
    path = Path(args.path or cfg.secret_file)
    created = create_secret(path)
    console.print(f"{'created' if created else 'kept existing'} anonymization key at {path} (git-ignored; back it up)")


def cmd_ceiling(args: argparse.Namespace) -> None:
    from bonescan.ceiling import run_ceiling
    from bonescan.dicom.anonymize import load_secret

    params = _params(args)
    cfg = params.ceiling
    metrics = run_ceiling(
        cfg, params.ground_truth, params.manifest(cfg.dataset), params.dataset(cfg.dataset).classes,
        params.ingest, params.image_size(cfg.dataset), params.anonymize, load_secret(params.anonymize),
    )  # fmt: skip
    _write_metrics(Path(cfg.metrics_file), metrics)
    console.print_json(json.dumps(_jsonable(metrics)))


def cmd_plan(args: argparse.Namespace) -> None:
    import yaml
    from rich.table import Table

    from bonescan import plan as planner
    from bonescan.config import override_text

    params = _params(args)
    data = planner.dataset_fingerprint(args.dataset, params, sample=args.sample)
    plan = planner.make_plan(params, data, planner.machine_fingerprint())
    planner.validate_plan(yaml.safe_load(Path(args.params).read_text()) or {}, plan, source=args.params)
    out = planner.write_plan(plan, args.out, params_file=args.params)
    table = Table(title=f"bonescan plan for '{args.dataset}'",
                  caption=f"data: {data.describe()}\nmachine: {plan.machine.describe()}")  # fmt: skip
    for column in ("key", "value", "why"):
        table.add_column(column, overflow="fold")
    for entry in plan.entries:
        table.add_row(entry.key, override_text(entry.value), entry.reason)
    console.print(table)
    console.print(f"overrides written to [bold]{out}[/] (checked against {args.params}); run them as an experiment:")
    console.print(planner.dvc_command(plan), soft_wrap=True, markup=False, highlight=False)


def cmd_summary(args: argparse.Namespace) -> None:
    from bonescan.summary import render_summary

    render_summary(_params(args), Console())


def _gan_stage(stage: str, args: argparse.Namespace) -> None:
    from bonescan.gan.train import describe_models, run_gan_stage

    params = _params(args)
    if args.dry_run:
        console.print_json(json.dumps(_jsonable(describe_models(params))))
        return
    with _tracked(f"gan_{stage}", params, "gan") as track:
        results = run_gan_stage(
            stage, params, resume=not args.no_resume, epoch_callback=lambda arch, s: track.log_epoch(s, f"{arch}.")
        )
        summary = [
            {"arch": r.arch, "weights": r.weights, "steps": r.steps, "seconds": round(r.seconds, 1),
             "resumed_from_step": r.resumed_from_step, "last_epoch": r.history[-1] if r.history else None}
            for r in results
        ]
        for r in results:
            track.log_metrics({"steps": r.steps, "epochs": r.epochs, "images_seen": r.images_seen,
                               "seconds": r.seconds}, prefix=f"{r.arch}.")
        track.log_artifacts([Path(params.gan.plots_dir) / stage], "plots")  # curves CSV, sample grids
    console.print_json(json.dumps(_jsonable(summary)))


def cmd_gan_pretrain(args: argparse.Namespace) -> None:
    _gan_stage("pretrain", args)


def cmd_gan_finetune(args: argparse.Namespace) -> None:
    _gan_stage("finetune", args)


def cmd_synthesize(args: argparse.Namespace) -> None:
    from bonescan.gan.synthesize import run_synthesize

    params = _params(args)
    with _tracked("synthesize", params, "gan") as track:
        result = run_synthesize(params)
        track.log_metrics({"needed": result.needed, "written": result.written, "admitted": result.admitted})
        report = json.loads(result.report.read_text())
        track.log_metrics({k: report.get(k, {}) for k in ("classifier", "archs")}, prefix="quality.")
        track.log_artifacts([result.report, result.report.with_suffix(".md")], "reports")
    console.print_json(json.dumps(_jsonable(result)))

def cmd_evaluate(args: argparse.Namespace) -> None:
    from bonescan.evaluate import run_evaluate

    params = _params(args)
    cfg = params.evaluate
    dataset = params.dataset(cfg.dataset)
    model = Path(args.model or params.classifier_file)
    with _tracked("evaluate", params, "evaluate") as track:
        result = run_evaluate(cfg, dataset.classes, params.manifest(cfg.dataset), model)
        track.log_metrics(result.metrics)
        track.set_tags({"bonescan.eval.split": cfg.split, "bonescan.eval.unit": result.unit,
                        "bonescan.eval.fingerprint": result.fingerprint, "bonescan.eval.model": model})
        shared = ("report", "summary", "confusion_png", "confusion_csv", "gradcam_gallery", "roc_png", "pr_png",
                  "reliability_png", "training_curves_png", "calibration_csv")  # no per-image rows
        track.log_artifacts([result.files[k] for k in shared if k in result.files], "evaluate")
        track.log_artifacts([result.files[k] for k in ("roc_plots", "pr_plots") if k in result.files], "plots")
    shown = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "brier", cfg.primary_metric)
    summary = {
        "unit": result.unit,
        "units": result.n_units,
        "images": result.n_images,
        "patients": result.n_patients,
        **{k: result.metrics.get(k) for k in dict.fromkeys(shown)},
        **{f"{k}_ci": [result.metrics.get(f"{k}_ci_low"), result.metrics.get(f"{k}_ci_high")] for k in shown[:3]},
        "notes": result.notes,
        "seconds": round(result.seconds, 1),
        "report": result.files["report"],
    }
    console.print_json(json.dumps(_jsonable(summary)))


def cmd_report(args: argparse.Namespace) -> None:
    from bonescan.report.build import ReportSources, build_report

    params = _params(args)
    out = Path(args.out or params.report.out)
    with _tracked("report", params, "report") as track:
        result = build_report(ReportSources.from_params(params), out)
        track.log_metrics({"images": result.images, "bytes": result.bytes,
                           **{f"section.{k}": v == "ok" for k, v in result.sections.items()}})
        track.log_artifacts([result.path], "report")
    console.print_json(json.dumps(_jsonable(result)))
    console.print(f"HTML report: [bold]{result.path}[/] (open it in a browser; it needs no network)")


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def cmd_experiments(args: argparse.Namespace) -> None:
    import yaml

    from bonescan import experiments as exp

    params = _params(args)
    if args.action == "queue":
        models = list(exp.PAPER_MODELS) if args.models == "paper" else _csv(args.models) or [None]
        extra = {}
        for item in args.set or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--set expects KEY=VALUE, got {item!r}")
            extra[key.strip()] = yaml.safe_load(value)
        cells = exp.grid([int(v) for v in _csv(args.variants)], models, _csv(args.pretrain) or [None], extra,
                         args.prefix)
        exp.validate_overrides(yaml.safe_load(Path(args.params).read_text()), cells)
        for command in exp.enqueue(cells, dry_run=args.dry_run):
            console.print(command, soft_wrap=True, markup=False)
        console.print(f"{'would queue' if args.dry_run else 'queued'} {len(cells)} experiment(s); "
                      "run them with `dvc queue start -j 1` (or `dvc exp run --run-all`), then "
                      "`bonescan experiments collect`")
        return
    if args.input:
        try:
            exp_show = json.loads(Path(args.input).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CommandError(f"{args.input}: not a `dvc exp show --json` document ({err})") from None
    else:
        exp_show = exp.dvc_exp_show(all_commits=args.all_commits)
    results = exp.collect_results(exp_show, args.metrics_file or params.evaluate.metrics_file,
                                  include_baselines=args.include_baselines, gan_report=params.gan.report)
    columns = _csv(args.columns) or list(exp.DEFAULT_COLUMNS)
    primary = params.evaluate.primary_metric
    text = exp.render_markdown(results, columns, primary=primary, paired_metrics=(primary, "macro_recall"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    Console().print(text, markup=False, soft_wrap=True)
    console.print(f"{len(results)} experiment(s) -> [bold]{out}[/]")

def cmd_augment(args: argparse.Namespace) -> None:
    from bonescan.data.augment import augment_dataset

    params = _params(args)
    with _tracked("augment", params, "augment") as track:
        summary = augment_dataset(params.augment, params.base.classes)
        metrics = {"mode": summary.mode, "factor": summary.factor, "synthetic_included": summary.synthetic_included,
                   "written": summary.written, **{f"train_{k}": v for k, v in summary.train_after.items()}}
        _write_metrics(Path(args.metrics), metrics)
        track.log_metrics(metrics)
    console.print_json(json.dumps(_jsonable(summary)))


def _write_metrics(path: Path, metrics: dict) -> None:
    """Flat JSON for DVC metrics, written atomically by one process only (rank 0 under torchrun)."""
    from bonescan.runtime import atomic_write_json, is_main_process

    if is_main_process():
        atomic_write_json(path, metrics)


def _check_classifier_input(params: Params, dataset: str) -> None:
    """clf.model against the image size it will train on, before any data is read (the error names both keys)."""
    from bonescan.models import check_input_size

    try:
        check_input_size(params.clf.model, params.image_size(dataset), params.image_size_key(dataset), "clf.model")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_clf_pretrain(args: argparse.Namespace) -> None:
    from bonescan.train import pretrain_classifier

    params = _params(args)
    cfg = params.clf
    if cfg.pretrain_source == "source":
        _check_classifier_input(params, cfg.source_dataset)
    source = params.dataset(cfg.source_dataset)
    with _tracked("clf_pretrain", params, "clf") as track:
        result = pretrain_classifier(
            cfg, params.manifest(cfg.source_dataset), source.classes, params.image_size(cfg.source_dataset),
            params.base.classes, params.image_size("target"), resume=not args.no_resume,
            progress=not args.no_progress, callback=track.epoch_callback(),
        )
        _report_clf_stage(result, track, params, "pretrain")


def cmd_clf_finetune(args: argparse.Namespace) -> None:
    from bonescan.train import finetune_classifier

    params = _params(args)
    cfg = params.clf
    _check_classifier_input(params, "target")
    with _tracked("clf_finetune", params, "clf", "augment") as track:
        result = finetune_classifier(
            cfg, params.augment, params.base.classes, params.image_size("target"),
            resume=not args.no_resume, progress=not args.no_progress, callback=track.epoch_callback(),
            preprocessing=params.preprocessing("target"),
        )
        _report_clf_stage(result, track, params, "finetune")


def _report_clf_stage(result, track: StageTracker, params: Params, stage: str) -> None:
    """A classifier stage's metrics file, its MLflow metrics and curves, and the printed summary."""
    cfg = params.clf
    _write_metrics(Path(cfg.metrics_dir) / f"clf_{stage}.json", result.metrics())
    track.log_metrics(result.metrics())
    track.log_artifacts([Path(cfg.plots_dir) / f"{stage}.csv"], "plots")
    console.print_json(json.dumps(_jsonable(result.metrics())))


def cmd_predict(args: argparse.Namespace) -> None:
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from bonescan.dicom.anonymize import MissingSecretError, load_secret
    from bonescan.predict import predict

    params = _params(args)
    anon = params.anonymize
    secret = None
    if os.environ.get(anon.secret_env, "").strip() or Path(anon.secret_file).is_file():
        try:
            secret = load_secret(anon)
        except MissingSecretError as exc:
            raise CommandError(str(exc)) from None
    else:
        log.warning("no anonymization key (%s / %s): ids are indices of this run, not the manifest's pseudonyms",
                    anon.secret_env, anon.secret_file)
    model = args.model or str(params.classifier_file)
    if not args.verbose:  # a codec failure is already a rejected.csv reason; pydicom would add a traceback
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    columns = (TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("predict", total=None)
        try:
            summary = predict(
                args.input, model, args.out, anonymize=anon, secret=secret,
                preprocessing=params.preprocessing("target"), batch_size=args.batch_size,
                device=args.device, gradcam=args.gradcam, include_paths=args.paths,
                on_file=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    table = Table(title=f"bonescan predict: {summary.model['uri']}" + (
        f" (version {summary.model['version']})" if summary.model.get("version") else ""))
    table.add_column("")
    table.add_column("count", justify="right")
    for label, value in (("files", summary.files_seen), ("images", summary.images), ("studies", summary.studies)):
        table.add_row(label, str(value))
    for name, count in summary.study_predictions.items():
        table.add_row(f"  studies predicted {name}", str(count))
    for code, count in summary.rejected_reasons.items():
        table.add_row(f"rejected: {code}", str(count), style="yellow")
    Console().print(table)
    console.print(f"outputs in [bold]{args.out}[/]: predictions.csv, study_predictions.csv, rejected.csv, "
                  f"summary.json" + (f", gradcam/ ({summary.gradcam_overlays} overlays)" if args.gradcam else ""))


def cmd_promote(args: argparse.Namespace) -> None:
    from bonescan.model_registry import CardSources, promote, rollback

    params = _params(args)
    cfg = params.promote
    target = params.dataset("target")
    try:
        if args.rollback:
            result = rollback(cfg)
        else:
            sources = CardSources(
                manifest=params.manifest("target"),
                phi_scan=Path(target.reports_dir) / "phi_scan.json",
                gan_quality=Path(params.gan.report),
                confusion_png=Path(params.evaluate.reports_dir) / "confusion_matrix.png",
            )
            result = promote(cfg, params.evaluate.primary_metric, dry_run=args.dry_run, sources=sources)
    except ValueError as exc:  # nothing to roll back to, no test-split fingerprint
        raise CommandError(str(exc)) from None
    console.print_json(json.dumps(_jsonable(result)))
    champion = result.aliases_after.get("champion")
    if result.dry_run:
        console.print(f"[bold]{result.action}[/] (dry run, nothing changed): {result.reason}")
    else:
        console.print(f"[bold]{result.action}[/]: {result.reason}; champion: "
                      f"{'version ' + champion if champion else 'none'} (report: {cfg.report})")


# --------------------------------------------------------------------------- parser


def _jsonable(obj: object) -> object:
    """Dataclass / pydantic / plain results -> JSON-ready structures for printing."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def _add(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], None],
    help: str,
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--params", default=str(DEFAULT_PARAMS), help="parameter file (default: %(default)s)")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bonescan",
        description="Bone-scintigraphy classification pipeline: each command is one DVC stage or tool.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "phantoms", cmd_phantoms, "write the synthetic DICOM cohort (bone scans + chest source domain)")
    p.add_argument("--out", help="output folder (default: phantoms.out_dir)")
    p.add_argument("--patients", type=int, help="bone-scan patients (default: phantoms.patients)")
    p.add_argument("--seed", type=int, help="random seed (default: phantoms.seed)")

    p = _add(sub, "anonymize", cmd_anonymize, "de-identify a DICOM tree (PS3.15 E.1-1, retain longitudinal, modified dates)")
    p.add_argument("src", help="input folder (read-only)")
    p.add_argument("dst", help="output folder: <SOPInstanceUID>.dcm files and anonymization_report.json")
    p.add_argument("--allow-burned-in", action="store_true", help="do not quarantine BurnedInAnnotation=YES images")

    for name, func, text in (
        ("ingest", cmd_ingest, "anonymize, decode, split views, crop and resize a dataset; write its manifest"),
        ("split", cmd_split, "patient-level stratified stable train/val/test split of an ingested dataset"),
    ):
        p = _add(sub, name, func, text)
        p.add_argument("--dataset", default="target", help="a key of `datasets` in params (default: %(default)s)")

    p = _add(sub, "secret", cmd_secret, "create a random anonymization key if none exists (never commit it)")
    p.add_argument("--path", help="key file (default: anonymize.secret_file)")

    p = _add(sub, "plan", cmd_plan, "derive image sizes, batch size, step budgets, threads and devices from the "
             "ingested dataset and this machine; write them as params overrides")
    p.add_argument("--dataset", default="target", help="a key of `datasets` in params (default: %(default)s)")
    p.add_argument("--out", default="params.plan.yaml", help="overrides file, dotted keys (default: %(default)s)")
    p.add_argument("--sample", type=int, default=64, help="files read for the native image size (default: %(default)s)")

    _add(sub, "ceiling", cmd_ceiling, "the phantom task's ceiling: a classifier on the generator's lesion truth")
    _add(sub, "summary", cmd_summary, "print a summary of the pipeline's results so far")
    for name, func, text in (
        ("gan-pretrain", cmd_gan_pretrain, "train the GANs of gan.archs on the source domain's train split"),
        ("gan-finetune", cmd_gan_finetune, "fine-tune the pretrained GANs on the target train split only"),
    ):
        p = _add(sub, name, func, text)
        p.add_argument("--dry-run", action="store_true", help="print G/D parameter counts and the resolved config")
        p.add_argument("--no-resume", action="store_true",
                       help="train from the start even if a checkpoint of this very run exists")
    _add(sub, "synthesize", cmd_synthesize, "balance the target train split with gated GAN images; quality report")

    p = _add(sub, "evaluate", cmd_evaluate, "score the classifier on the test split: metrics with patient-bootstrap "
             "CIs, confusion matrix, predictions, Grad-CAM gallery")
    p.add_argument("--model", help="checkpoint to score (default: clf.out_dir/model.pt)")

    p = _add(sub, "experiments", cmd_experiments, "queue the grid of Yu et al. 2023 Tables 4-7 as DVC experiments "
             "(queue) or tabulate their results with CIs (collect)")
    p.add_argument("action", choices=["queue", "collect"], help="queue: `dvc exp run --queue` per cell; "
                   "collect: `dvc exp show --json` -> markdown table")
    p.add_argument("--variants", default="1,2,3,4,5", help="queue: dataset variants 1 original, 2 ACGAN, "
                   "3 MU-ACGAN, 4 traditional, 5 MU-ACGAN + traditional (default: %(default)s)")
    p.add_argument("--models", help="queue: comma-separated clf.model values, or 'paper' for Table 6's models "
                   "(default: params' clf.model)")
    p.add_argument("--pretrain", help="queue: comma-separated clf.pretrain_source values (imagenet,source,none: "
                   "Table 5; default: params')")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="queue: extra override for every cell, e.g. augment.factor=15 (repeatable)")
    p.add_argument("--prefix", default="", help="queue: prefix of the experiment names (names must be unique)")
    p.add_argument("--dry-run", action="store_true", help="queue: print the dvc commands, queue nothing")
    p.add_argument("--input", help="collect: a saved `dvc exp show --json` file instead of running it")
    p.add_argument("--out", default="reports/experiments.md", help="collect: markdown output (default: %(default)s)")
    p.add_argument("--metrics-file", help="collect: metrics file to read (default: evaluate.metrics_file)")
    p.add_argument("--columns", help="collect: comma-separated metrics (default: accuracy and the macro metrics)")
    p.add_argument("--include-baselines", action="store_true", help="collect: also the workspace and commits")
    p.add_argument("--all-commits", action="store_true", help="collect: experiments of every commit, not only HEAD")
    p = _add(sub, "augment", cmd_augment, "expand the train split by rotation, shift, mirroring and Poisson noise "
             "(real + admitted synthetic images); val/test rows unchanged")
    p.add_argument("--metrics", default="metrics/augment.json", help="counts for DVC (default: %(default)s)")
    for name, func, text in (
        ("clf-pretrain", cmd_clf_pretrain, "stage 1 of transfer learning: ImageNet weights, source-domain training "
         "or a seeded random init (clf.pretrain_source)"),
        ("clf-finetune", cmd_clf_finetune, "stage 2: fine-tune stage 1's weights on the bone-scan train split, best "
         "epoch on the val split (torchrun-ready)"),
    ):
        p = _add(sub, name, func, text)
        p.add_argument("--no-resume", action="store_true", help="start fresh even if a matching last.pt exists")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch log lines only)")
    p = _add(sub, "predict", cmd_predict, "classify new DICOM studies: anonymized in memory, training's "
             "preprocessing, per-image and per-study probabilities, rejected files with reasons")
    p.add_argument("input", help="a DICOM file, a study folder or a folder of studies (read-only, recursive)")
    p.add_argument("--model", help="checkpoint path or MLflow URI, e.g. models:/bonescan-classifier@champion "
                   "(default: clf.out_dir/model.pt, i.e. models/classifier/model.pt)")
    p.add_argument("--out", required=True, help="output folder (must not lie inside INPUT)")
    p.add_argument("--gradcam", action="store_true", help="also write Grad-CAM overlays of the predicted class")
    p.add_argument("--paths", action="store_true", help="also write each row's path relative to INPUT, unmasked "
                   "(may show identifying folder names; every row has file_sha256 to join on without it)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when present (default: %(default)s)")
    p = _add(sub, "report", cmd_report, "write the offline HTML report of the run (data, split, GAN, training, "
             "test metrics and curves, Grad-CAM, promotion, model card) from the stages' outputs")
    p.add_argument("--out", help="HTML file (default: report.out, i.e. reports/index.html)")
    p = _add(sub, "promote", cmd_promote, "register the evaluated classifier in MLflow as challenger and promote "
             "it to champion if it beats the champion (promote.* rule); --rollback restores the previous champion")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="show the decision; register and change nothing")
    mode.add_argument("--rollback", action="store_true", help="make previous-champion the champion again")
    return parser


def _log_level(verbose: bool, env: Mapping[str, str]) -> int:
    """INFO (DEBUG with -v) on the main process; under torchrun the other ranks log warnings only."""
    if int(env.get("RANK", "0")) > 0:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


def _expected_errors() -> tuple[type[Exception], ...]:
    """Errors whose message is the whole story (no traceback): a missing key, residual PHI, a bad model file."""
    from bonescan.classifier_file import ClassifierFormatError
    from bonescan.dicom.anonymize import MissingSecretError
    from bonescan.intake import IngestFailedError, ResidualPHIError
    from bonescan.tracking import TrackingUnavailableError

    return (MissingSecretError, ResidualPHIError, IngestFailedError, ClassifierFormatError, TrackingUnavailableError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=_log_level(args.verbose, os.environ),
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    try:
        args.func(args)
    except (ConfigError, CommandError, FileNotFoundError, PermissionError, *_expected_errors()) as exc:
        if args.verbose:
            raise
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
