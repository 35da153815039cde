"""`bonescan <command>`: one thin command per pipeline stage or tool.

Each command parses its arguments, loads params.yaml into typed config, calls one pure stage function
and turns its result into files, a printed summary and an exit code. No ML logic lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from bonescan.config import DEFAULT_PARAMS, ConfigError, Params, load_params

log = logging.getLogger("bonescan")
console = Console(stderr=True)


class CommandError(RuntimeError):
    """A stage finished but its result must fail the command (exit code 1), e.g. residual PHI."""


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params)


# --------------------------------------------------------------------------- commands


def cmd_phantoms(args: argparse.Namespace) -> None:
    from bonescan.dicom.phantom import write_cohort

    params = _params(args)
    updates = {k: v for k, v in {"patients": args.patients, "seed": args.seed}.items() if v is not None}
    cfg = params.phantoms.model_copy(update=updates)
    out = Path(args.out or cfg.out_dir)
    summary = write_cohort(cfg, out)
    console.print(f"phantom cohort written to [bold]{out}[/]")
    console.print_json(json.dumps(_jsonable(summary)))


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
    secret = load_secret(params.anonymize) if dataset.format == "dicom" else None
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
    from bonescan.data.split import run_split

    params = _params(args)
    result = run_split(args.dataset, params.dataset(args.dataset), params.split)
    console.print_json(json.dumps(result.metrics))


def cmd_secret(args: argparse.Namespace) -> None:
    from bonescan.dicom.anonymize import create_secret

    cfg = _params(args).anonymize
    path = Path(args.path or cfg.secret_file)
    created = create_secret(path)
    console.print(f"{'created' if created else 'kept existing'} anonymization key at {path} (git-ignored; back it up)")


def cmd_summary(args: argparse.Namespace) -> None:
    from bonescan.summary import render_summary

    render_summary(_params(args), Console())


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

    _add(sub, "summary", cmd_summary, "print a summary of the pipeline's results so far")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    try:
        args.func(args)
    except (ConfigError, CommandError, FileNotFoundError, PermissionError) as exc:
        if args.verbose:
            raise
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
