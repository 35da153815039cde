"""How learnable the demo's phantom task is, and how close a model gets to its ceiling; prints JSON.

The demo's classifier without the expensive parts (no GAN, no source-domain pretraining): once per
anonymization key, in a scratch project, `bonescan ingest` + `split` + `augment` + `clf-pretrain`
(pretrain_source none) + `clf-finetune` + `evaluate` with the demo's `clf` settings, then
`bonescan ceiling` (the best balanced accuracy the generator's own lesion features allow, and the
lesions' visibility at the classifier's input). With `--set clf.pretrain_source=source` the chest cohort
is ingested and split too, and clf-pretrain trains on it (Table 5's source row). The cohort is
generated once (`bonescan phantoms`);
each key draws its own pseudonyms and so its own split, which is what varies from clone to clone.

Usage: python benchmarks/phantom_task.py [--keys 3] [--work /tmp/phantom_task] [--threads 1]
       [--set base.image_size=[384,128] ...] [--reuse-cohort] [--cohort DIR] [--key-seed S [--first-key K]]

`--key-seed S` derives the keys from S instead of drawing them, so two settings run with the same
seed see the same splits: their per-key differences are paired.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = (
    ["ingest", "--dataset", "target"],
    ["split", "--dataset", "target"],
    ["augment"],
    ["clf-pretrain"],
    ["clf-finetune", "--no-progress"],
    ["evaluate"],
    ["ceiling"],
)
FAST = {  # what the benchmark leaves out of the demo: GAN images, chest pretraining, CIs, Grad-CAM
    "clf.pretrain_source": "none",
    "augment.include_synthetic": False,
    "evaluate.n_boot": 0,
    "evaluate.gradcam_per_class": 0,
    "tracking.enabled": False,
}


def _set(params: dict, dotted: str, value: object) -> None:
    *path, last = dotted.split(".")
    node = params
    for key in path:
        node = node[key]
    node[last] = value


def _stages(params: dict) -> list[list[str]]:
    """STAGES, with the source domain ingested and split before clf-pretrain when it pretrains on it."""
    stages = [list(s) for s in STAGES]
    if params["clf"]["pretrain_source"] == "source":
        source = params["clf"]["source_dataset"]
        at = stages.index(["clf-pretrain"])
        stages[at:at] = [["ingest", "--dataset", source], ["split", "--dataset", source]]
    return stages


def _name(stage: list[str]) -> str:
    """A stage's key in the timings: the command, with the dataset unless it is the target."""
    dataset = stage[stage.index("--dataset") + 1] if "--dataset" in stage else "target"
    return stage[0] if dataset == "target" else f"{stage[0]}@{dataset}"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    tic = time.perf_counter()
    proc = subprocess.run([str(BIN / "bonescan"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"bonescan {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=3, help="fresh anonymization keys (splits)")
    parser.add_argument("--work", default="/tmp/phantom_task", help="scratch folder (replaced)")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per stage")
    parser.add_argument(
        "--set", action="append", default=[], help="dotted.key=YAML value, e.g. clf.finetune.epochs=5"
    )
    parser.add_argument("--reuse-cohort", action="store_true", help="keep the cohort of an earlier run")
    parser.add_argument("--cohort", help="cohort folder (default: WORK/cohort)")
    parser.add_argument("--key-seed", help="derive the keys from this seed (paired settings) instead of drawing them")
    parser.add_argument("--first-key", type=int, default=0, help="with --key-seed: index of the first key (resume a series)")
    args = parser.parse_args()

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = {**FAST, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}}
    for key, value in overrides.items():
        _set(params, key, value)
    work = Path(args.work)
    cohort = Path(args.cohort) if args.cohort else work / "cohort"
    threads = str(args.threads)
    env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "BONESCAN_TRACKING": "0",
                        "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    phantom_s = None
    raw = Path(params["phantoms"]["out_dir"])
    if args.reuse_cohort:
        if not (cohort / raw / "phantom_report.json").is_file():
            raise SystemExit(f"--reuse-cohort: no cohort at {cohort / raw}")
    else:
        shutil.rmtree(cohort, ignore_errors=True)
        cohort.mkdir(parents=True)
        (cohort / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        phantom_s = _run(["phantoms", "--params", "params.yaml"], cohort, env | {"BONESCAN_SECRET": "unused"})

    stages = _stages(params)
    runs = []
    for k in range(args.first_key, args.first_key + args.keys):
        project = work / f"key{k}"
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir(parents=True)
        (project / raw).parent.mkdir(parents=True, exist_ok=True)
        (project / raw).symlink_to((cohort / raw).resolve())
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        key = (
            hashlib.sha256(f"phantom_task/{args.key_seed}/{k}".encode()).hexdigest()[:32]
            if args.key_seed is not None
            else secrets.token_hex(16)
        )
        key_env = env | {"BONESCAN_SECRET": key}
        seconds = {_name(s): round(_run([*s, "--params", "params.yaml"], project, key_env), 1) for s in stages}
        ev = json.loads((project / params["evaluate"]["metrics_file"]).read_text())
        ceiling = json.loads((project / "metrics" / "ceiling.json").read_text())
        runs.append({
            "balanced_accuracy": ev["balanced_accuracy"], "macro_f1": ev["macro_f1"],
            "recall": {c: ev.get(f"recall_{c}") for c in params["base"]["classes"]},
            "ceiling": ceiling["ceiling_balanced_accuracy"],
            "ceiling_metastasis_vs_benign": ceiling.get("ceiling_metastasis_vs_benign"),
            "visible_fraction": ceiling.get("visible_fraction"),
            "of_ceiling": ev["balanced_accuracy"] / ceiling["ceiling_balanced_accuracy"],
            "seconds": seconds,
        })  # fmt: skip
        print(json.dumps({"key": k, **runs[-1]}), file=sys.stderr, flush=True)

    bacc = [r["balanced_accuracy"] for r in runs]
    print(json.dumps({
        "overrides": {k: v for k, v in overrides.items() if k not in FAST},
        "key_seed": args.key_seed,
        "phantoms_s": phantom_s,
        "balanced_accuracy_mean": statistics.mean(bacc),
        "balanced_accuracy_sd": statistics.stdev(bacc) if len(bacc) > 1 else None,
        "ceiling_mean": statistics.mean(r["ceiling"] for r in runs),
        "of_ceiling_mean": statistics.mean(r["of_ceiling"] for r in runs),
        "runs": runs,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
