"""The patient-bootstrap intervals of `bonescan evaluate` and `promote`, per-resample scikit-learn loops
against the vectorised replicates; prints JSON.

On synthetic study units (3 classes, informative float32 softmax probabilities, patients of uneven
sizes, argmax decisions) of each `--sizes` entry, with `--n-boot` resamples and the same seed, it
times in the same process:

* **old**: the loops the intervals ran before: `compute_metrics` (scikit-learn) on the rows of each
  resample (`cluster_bootstrap`), twice per resample for the paired difference of `promote`,
  `roc_curve` / `precision_recall_curve` + `_on_grid` per resample and class (`ovr_curves`'
  bands), `brier_score` and the torchmetrics ECE per resample (`assess_calibration`);
* **new**: `cluster_bootstrap`, `paired_bootstrap_difference`, `ovr_curves` and
  `assess_calibration` as they are now (replicates from `bootstrap_weights`; the ECE still calls
  torchmetrics per resample), including the point estimates these functions compute themselves
  (scikit-learn, a few calls each).

Times are CPU seconds of this process (`time.process_time`; one BLAS and torch thread by default,
the machine is shared) with the wall seconds next to them; `ratio` is old / new CPU seconds. Each part
also reports `max_abs_diff`, the largest difference between the old and new interval bounds (or
band values): the speed-up must not change the results.

Usage: python benchmarks/bootstrap.py [--sizes 94x49 600x300] [--n-boot 1000] [--seed 0] [--threads 1]
       [--parts metrics paired curves calibration]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np
import psutil
import torch
from threadpoolctl import threadpool_limits

from bonescan.calibration import assess_calibration, brier_score, expected_calibration_error
from bonescan.curves import _CURVE, KINDS, _on_grid, ovr_curves
from bonescan.metrics import (
    bootstrap_indices,
    cluster_bootstrap,
    compute_metrics,
    paired_bootstrap_difference,
    percentile_interval,
)

CLASSES = ("healthy", "metastasis", "benign")
PARTS = ("metrics", "paired", "curves", "calibration")
PAIRED_METRIC = "macro_f1"


def make_units(n_units: int, n_patients: int, seed: int) -> dict[str, np.ndarray]:
    """Labels, two models' probabilities and the patient of each unit (every patient has one or more)."""
    rng = np.random.default_rng(seed)
    patients = np.concatenate([np.arange(n_patients), rng.integers(0, n_patients, n_units - n_patients)])
    y = rng.choice(len(CLASSES), n_units, p=[0.5, 0.3, 0.2])

    def model(skill: float) -> np.ndarray:
        logits = rng.normal(size=(n_units, len(CLASSES)))
        logits[np.arange(n_units), y] += skill
        return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)

    groups = np.array([f"P{p:04d}" for p in patients])
    return {"y": y, "prob": model(1.5), "champion": model(1.2), "groups": groups}


def old_metrics(d: dict, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    replicates: dict[str, list[float]] = {}
    for idx in bootstrap_indices(d["groups"], n_boot, seed):
        for name, value in compute_metrics(d["y"][idx], d["prob"][idx], CLASSES).items():
            replicates.setdefault(name, []).append(value)
    return {name: percentile_interval(np.asarray(v), 0.95) for name, v in replicates.items()}


def new_metrics(d: dict, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    return cluster_bootstrap(d["y"], d["prob"], d["groups"], CLASSES, n_boot=n_boot, seed=seed)


def old_paired(d: dict, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    diffs = [compute_metrics(d["y"][idx], d["prob"][idx], CLASSES)[PAIRED_METRIC]
             - compute_metrics(d["y"][idx], d["champion"][idx], CLASSES)[PAIRED_METRIC]
             for idx in bootstrap_indices(d["groups"], n_boot, seed)]  # fmt: skip
    return {PAIRED_METRIC: percentile_interval(np.asarray(diffs), 0.95)}


def new_paired(d: dict, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    diff = paired_bootstrap_difference(d["y"], d["prob"], d["champion"], d["groups"], CLASSES, PAIRED_METRIC,
                                       n_boot=n_boot, seed=seed)  # fmt: skip
    return {PAIRED_METRIC: (diff.ci_low, diff.ci_high)}


def old_curves(d: dict, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    grid = np.linspace(0.0, 1.0, 101)
    y, prob = d["y"], d["prob"].astype(np.float64)
    drawn: dict[str, list[np.ndarray]] = {f"{kind}_{k}": [] for kind in KINDS for k in range(len(CLASSES))}
    for idx in bootstrap_indices(d["groups"], n_boot, seed):
        for k in range(len(CLASSES)):
            positive = y[idx] == k
            if positive.all() or not positive.any():
                continue
            for kind in KINDS:
                drawn[f"{kind}_{k}"].append(_on_grid(kind, *_CURVE[kind](positive, prob[idx, k]), grid))
    tail = 100.0 * (1.0 - 0.95) / 2.0
    return {key: np.percentile(rows, [tail, 100.0 - tail], axis=0) for key, rows in drawn.items()}


def new_curves(d: dict, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    curves = ovr_curves(d["y"], d["prob"], d["prob"].argmax(axis=1), d["groups"], CLASSES,
                        n_boot=n_boot, seed=seed)  # fmt: skip
    return {f"{kind}_{CLASSES.index(c.name)}": np.stack([c.low, c.high])
            for kind in KINDS for c in curves.curves[kind]}  # fmt: skip


def old_calibration(d: dict, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    y, prob = d["y"], d["prob"].astype(np.float64)
    eces, briers = [], []
    for idx in bootstrap_indices(d["groups"], n_boot, seed):
        eces.append(expected_calibration_error(y[idx], prob[idx]))
        briers.append(brier_score(y[idx], prob[idx]))
    return {"ece": percentile_interval(np.asarray(eces), 0.95),
            "brier": percentile_interval(np.asarray(briers), 0.95)}  # fmt: skip


def new_calibration(d: dict, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    report = assess_calibration(d["y"], d["prob"], d["groups"], n_boot=n_boot, seed=seed)
    return {"ece": report.ece_interval, "brier": report.brier_interval}


RUNNERS: dict[str, tuple[Callable, Callable]] = {
    "metrics": (old_metrics, new_metrics),
    "paired": (old_paired, new_paired),
    "curves": (old_curves, new_curves),
    "calibration": (old_calibration, new_calibration),
}


def timed(fn: Callable, *args) -> tuple[dict, float, float]:
    """(result, CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def max_abs_diff(old: dict, new: dict) -> float:
    """Largest |old - new| over every bound; NaN where both are NaN counts as equal."""
    assert set(old) == set(new), (sorted(old), sorted(new))
    worst = 0.0
    for key in old:
        a, b = np.asarray(old[key], dtype=np.float64), np.asarray(new[key], dtype=np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return float("inf")
        both = ~np.isnan(a)
        worst = max(worst, float(np.abs(a[both] - b[both]).max(initial=0.0)))
    return worst


def bench_size(n_units: int, n_patients: int, parts: list[str], n_boot: int, seed: int) -> dict:
    data = make_units(n_units, n_patients, seed)
    out: dict = {"units": n_units, "patients": n_patients, "classes": len(CLASSES), "n_boot": n_boot}
    totals = {"old_cpu_s": 0.0, "new_cpu_s": 0.0, "old_wall_s": 0.0, "new_wall_s": 0.0}
    for part in parts:
        old_fn, new_fn = RUNNERS[part]
        new, new_cpu, new_wall = timed(new_fn, data, n_boot, seed)
        old, old_cpu, old_wall = timed(old_fn, data, n_boot, seed)
        row = {"old_cpu_s": old_cpu, "new_cpu_s": new_cpu, "old_wall_s": old_wall, "new_wall_s": new_wall}
        for key, value in row.items():
            totals[key] += value
        out[part] = {**{k: round(v, 3) for k, v in row.items()}, "ratio": round(old_cpu / new_cpu, 1),
                     "max_abs_diff": max_abs_diff(old, new)}  # fmt: skip
    out["total"] = {**{k: round(v, 3) for k, v in totals.items()},
                    "ratio": round(totals["old_cpu_s"] / totals["new_cpu_s"], 1)}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["94x49", "600x300"], help="UNITSxPATIENTS")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="BLAS and torch threads")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
    with threadpool_limits(args.threads):
        results = [bench_size(units, patients, args.parts, args.n_boot, args.seed)
                   for units, patients in sizes]  # fmt: skip
    print(json.dumps({
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(psutil.getloadavg()[0], 2),
        "sizes": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
