"""Ingest throughput and memory on a phantom cohort, against a bare pydicom decode loop; prints JSON.

For a cohort of N patients and one of `scale` x N patients (written once by the phantom generator,
not timed) it measures:

* baseline: `pydicom.dcmread(path).pixel_array` over every file, serial, in this process;
* ingest: `bonescan.ingest.ingest_dataset` (read, label lookup, anonymize, write, PHI scan, decode,
  views, crop, resize, PNG, manifest) with `--workers` processes;

and reports files/s, MB/s (raw bytes read), their ratio, and the peak RSS (sampled every 20 ms with
psutil) of this process and of the whole process tree (this process plus workers), which must stay
flat as the cohort grows because results stream.

Usage: python benchmarks/ingest.py [--patients 12] [--scale 4] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import psutil
import pydicom

from bonescan.config import AnonymizeConfig, DatasetConfig, IngestConfig, PhantomConfig
from bonescan.dicom.phantom import write_cohort
from bonescan.ingest import ingest_dataset

SECRET = b"benchmark-secret-0123456789abcdef"


class PeakRSS:
    """Samples the RSS of this process and the summed RSS of it and all its descendants (a thread)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_main = 0
        self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        root = psutil.Process()
        main = root.memory_info().rss
        total = main
        for proc in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                total += proc.memory_info().rss
        self.peak_main = max(self.peak_main, main)
        self.peak_tree = max(self.peak_tree, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def measure(func: Callable[[], object]) -> dict[str, float]:
    """Wall time and peak RSS (this process; process tree) of one call."""
    with PeakRSS() as rss:
        start = time.perf_counter()
        func()
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_main_mb": rss.peak_main / 2**20,
        "peak_rss_tree_mb": rss.peak_tree / 2**20,
    }


def bare_decode(files: list[Path]) -> None:
    for path in files:
        with contextlib.suppress(Exception):  # the cohort's deliberately bad files fail here too
            pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the work being timed


def run_scale(patients: int, workers: int, root: Path) -> dict[str, float]:
    raw = root / "raw"
    write_cohort(PhantomConfig(patients=patients, chest_patients=0), raw)
    bone = raw / "bone"
    files = sorted(p for p in bone.rglob("*") if p.is_file() and p.name != "labels.csv")
    megabytes = sum(p.stat().st_size for p in files) / 2**20
    dataset = DatasetConfig(
        format="dicom",
        raw_dir=str(bone),
        labels=str(bone / "labels.csv"),
        classes=("healthy", "metastasis", "benign"),
        interim_dir=str(root / "interim"),
        out_dir=str(root / "processed"),
        reports_dir=str(root / "reports"),
        metrics_dir=str(root / "metrics"),
    )
    ingest = IngestConfig(workers=workers)

    baseline = measure(lambda: bare_decode(files))
    result = measure(lambda: ingest_dataset("bench", dataset, ingest, AnonymizeConfig(), (256, 96), SECRET))
    summary = json.loads((root / "reports" / "ingest.json").read_text())
    n = len(files)
    return {
        "patients": patients,
        "files": n,
        "raw_mb": round(megabytes, 2),
        "images_written": summary["images_written"],
        "quarantined": summary["quarantined"],
        "baseline_seconds": round(baseline["seconds"], 3),
        "baseline_files_per_s": round(n / baseline["seconds"], 2),
        "baseline_mb_per_s": round(megabytes / baseline["seconds"], 2),
        "ingest_seconds": round(result["seconds"], 3),
        "ingest_files_per_s": round(n / result["seconds"], 2),
        "ingest_mb_per_s": round(megabytes / result["seconds"], 2),
        "ingest_over_baseline_time": round(result["seconds"] / baseline["seconds"], 2),
        "baseline_peak_rss_mb": round(baseline["peak_rss_main_mb"], 1),
        "ingest_peak_rss_main_mb": round(result["peak_rss_main_mb"], 1),
        "ingest_peak_rss_tree_mb": round(result["peak_rss_tree_mb"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=12, help="patients of the 1x cohort")
    parser.add_argument(
        "--scale", type=int, default=4, help="size of the second cohort, in multiples of the first"
    )
    parser.add_argument("--workers", type=int, default=IngestConfig().workers, help="ingest worker processes")
    parser.add_argument(
        "--out", type=Path, default=None, help="scratch folder (default: a temp dir, removed)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the bad files' decoder errors are expected
    warnings.simplefilter("ignore")

    scratch = args.out or Path(tempfile.mkdtemp(prefix="bonescan-bench-"))
    cwd = os.getcwd()
    try:
        os.chdir(scratch)  # manifest paths are relative to the working directory
        small = run_scale(args.patients, args.workers, scratch / "x1")
        large = run_scale(args.patients * args.scale, args.workers, scratch / f"x{args.scale}")
    finally:
        os.chdir(cwd)
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "x1": small,
        f"x{args.scale}": large,
        "files_growth": round(large["files"] / small["files"], 2),
        "ingest_time_growth": round(large["ingest_seconds"] / small["ingest_seconds"], 2),
        # Steady state without the fixed cost (worker start-up, label table): extra files per extra second.
        "ingest_marginal_files_per_s": round(
            (large["files"] - small["files"]) / max(large["ingest_seconds"] - small["ingest_seconds"], 1e-9),
            2,
        ),
        "baseline_marginal_files_per_s": round(
            (large["files"] - small["files"])
            / max(large["baseline_seconds"] - small["baseline_seconds"], 1e-9),
            2,
        ),
        "ingest_rss_main_growth": round(
            large["ingest_peak_rss_main_mb"] / small["ingest_peak_rss_main_mb"], 2
        ),
        "ingest_rss_tree_growth": round(
            large["ingest_peak_rss_tree_mb"] / small["ingest_peak_rss_tree_mb"], 2
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
