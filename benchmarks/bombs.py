"""Peak memory of reading decompression bombs: the read functions, `bonescan ingest`, predict's file path.

Writes a folder of bombs (`bonescan.dicom.bombs`): a ~1 kB RLE file declaring 60000 x 60000
16-bit pixels, pydicom's JPEG 2000 and JPEG Baseline test files with Rows/Columns rewritten to
60000, a native file declaring 2,000,000 frames, a ~1 MiB deflated file inflating to 1 GiB, and a
legitimate deflated file declaring pixel data just under the ceiling (the worst case that is
accepted; read only, kept out of the ingest/predict folder). Then, each in a fresh process, so that every number is the peak RSS of one process:

* `read`: `read_dicom` + `read_views` on each file (the reader every path shares);
* `ingest`: `bonescan ingest` (the CLI, `ingest.workers: 1`) over the whole folder;
* `predict`: `bonescan.predict.prepare_file` over the whole folder, the per-file path of
  `bonescan predict` up to the classifier (which a bomb never reaches; no model is needed).

Peak RSS is the kernel's ru_maxrss of the largest process in the measured tree (RUSAGE_CHILDREN
of a wrapper process). Prints JSON with each file's size, its rejection code and reason, and MB.

`--unguarded` passes `max_bytes=None` to the read functions (no ceiling: the behaviour before the
ceiling existed) for the files of at most `--unguarded-max-gib` declared GiB; it allocates what
the headers ask for, so keep it small on a shared machine.

Usage: python benchmarks/bombs.py [--out DIR] [--unguarded] [--unguarded-max-gib 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET = "benchmark-secret-0123456789abcdef"
_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
)


def write_bombs(folder: Path) -> dict[str, Path]:
    """The bomb folder: name -> path (plus labels.csv for ingest)."""
    from bonescan.dicom import bombs
    from bonescan.dicom.read import DEFAULT_MAX_PIXEL_BYTES

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "rle_60000x60000": bombs.write_rle_bomb(folder / "rle_60000x60000.dcm"),
        "jpeg2000_60000x60000": bombs.write_declared_size_bomb(
            folder / "jpeg2000_60000x60000.dcm", "MR_small_jp2klossless.dcm"
        ),
        "jpeg_baseline_60000x60000_rgb": bombs.write_declared_size_bomb(
            folder / "jpeg_baseline_60000x60000_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm"
        ),
        "deflate_1gib": bombs.write_deflate_bomb(folder / "deflate_1gib.dcm", 2**30),
    }
    accepted = folder.parent / "accepted"  # read only: a legitimate file ingest would spend minutes on
    accepted.mkdir(exist_ok=True)
    files["deflate_at_ceiling"] = bombs.write_deflate_bomb(
        accepted / "deflate_at_ceiling.dcm", DEFAULT_MAX_PIXEL_BYTES - 2**20, columns=2048
    )
    native = bombs._nm_header(64, 64, frames=2_000_000)
    native.PixelData = bytes(64 * 64 * 2 * 2)  # two frames' worth of data under a 2,000,000-frame header
    native.save_as(folder / "native_2000000_frames.dcm", enforce_file_format=True)
    files["native_2000000_frames"] = folder / "native_2000000_frames.dcm"
    (folder / "labels.csv").write_text("accession_number,label\nBOMB,healthy\n")
    return files


def measured(cmd: list[str]) -> tuple[float, str]:
    """(peak RSS in MB of the largest process of `cmd`'s tree, its stdout)."""
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "BONESCAN_SECRET": SECRET},
    )  # fmt: skip
    line = next(line for line in done.stdout.splitlines() if line.startswith("MAXRSS_KB"))
    return round(int(line.split()[1]) / 1024, 1), done.stdout


def child_read(path: str, unguarded: bool) -> None:
    from bonescan.dicom.read import ImageReadError, read_dicom, read_views

    limit = {"max_bytes": None} if unguarded else {}
    try:
        views = read_views(read_dicom(path, **limit), split=True, **limit)
        print(json.dumps({"code": "accepted", "views": [v.pixels.shape for v in views]}))
    except ImageReadError as exc:
        print(json.dumps({"code": exc.code, "reason": exc.reason}))
    except Exception as exc:  # noqa: BLE001 - the unguarded reader fails in many ways; record which
        print(json.dumps({"code": "error", "reason": type(exc).__name__}))


def child_predict(folder: str) -> None:
    from bonescan.config import AnonymizeConfig, IngestConfig
    from bonescan.dicom.anonymize import Anonymizer
    from bonescan.predict import prepare_file

    anonymizer = Anonymizer(SECRET.encode(), AnonymizeConfig())
    results = {}
    for path in sorted(Path(folder).glob("*.dcm")):
        record, _ = prepare_file(path, path.name, anonymizer, IngestConfig(), (256, 96))
        results[path.stem] = {"code": record.code or "accepted", "reason": record.reason}
    print(json.dumps(results))


def ingest_params(folder: Path, work: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["workers"] = 1
    params["datasets"]["target"].update(
        raw_dir=str(folder), labels=str(folder / "labels.csv"), interim_dir=str(work / "interim"),
        out_dir=str(work / "processed"), reports_dir=str(work / "reports"), metrics_dir=str(work / "metrics"),
    )  # fmt: skip
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the bombs (default: a temp dir)")
    parser.add_argument("--unguarded", action="store_true", help="also read without a ceiling (allocates!)")
    parser.add_argument("--unguarded-max-gib", type=float, default=1.0)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, target, *rest = args.child
        child_read(target, bool(rest)) if mode == "read" else child_predict(target)
        return

    import pydicom

    from bonescan.dicom.read import declared_pixel_bytes

    work = args.out or Path(tempfile.mkdtemp(prefix="bombs-"))
    folder = work / "bombs"
    files = write_bombs(folder)
    me = str(Path(__file__).resolve())
    baseline, _ = measured([sys.executable, "-c", "import bonescan.dicom.read"])
    predict_baseline, _ = measured([sys.executable, "-c", "import bonescan.predict"])  # torch included
    report: dict = {"baseline_import_mb": baseline, "baseline_predict_import_mb": predict_baseline, "files": {}}
    for name, path in files.items():
        declared = declared_pixel_bytes(pydicom.dcmread(path, stop_before_pixels=True))
        rss, out = measured([sys.executable, me, "--child", "read", str(path)])
        entry = {
            "file_kb": round(path.stat().st_size / 1024, 1),
            "declared_pixel_mib": round(declared / 2**20, 1),
            "read_peak_rss_mb": rss,
            **json.loads(out.splitlines()[0]),
        }
        if args.unguarded and declared <= args.unguarded_max_gib * 2**30:
            rss, out = measured([sys.executable, me, "--child", "read", str(path), "unguarded"])
            entry["unguarded"] = {"read_peak_rss_mb": rss, **json.loads(out.splitlines()[0])}
        report["files"][name] = entry
    params = ingest_params(folder, work)
    rss, _ = measured([sys.executable, "-m", "bonescan.cli", "ingest", "--params", str(params), "--dataset", "target"])
    quarantine = (work / "reports" / "quarantine.csv").read_text().splitlines()
    report["ingest_cli"] = {"peak_rss_mb": rss, "quarantined": len(quarantine) - 1}
    rss, out = measured([sys.executable, me, "--child", "predict", str(folder)])
    report["predict_prepare_file"] = {"peak_rss_mb": rss, "results": json.loads(out.splitlines()[0])}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
