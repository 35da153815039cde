"""BreastMNIST through bonescan's own stages, scored on the official test split; prints JSON.

A real, small, imbalanced benchmark with published results (MedMNIST v2, Yang et al. 2023): 780
breast-ultrasound images, 28 x 28, 27 % malignant, official train/val/test. The script

1. exports `breastmnist.npz` to an `image_csv` dataset (one PNG per image, `labels.csv` with
   `filename,label,patient_id,split`; the official split is the dataset's predefined split, the
   source publishes no patient ids, so every image is its own patient);
2. writes a `params.yaml` for that dataset into a work folder: the repository's params with the
   dataset, the sizes and the settings of `--set` / `--config` replaced, nothing else;
3. runs, as subprocesses of the `bonescan` CLI in that folder (MLflow store inside it):
   `ingest` and `split` once, then per seed `augment`, `clf-pretrain` (with `pretrain_source:
   none` it saves the seeded initialisation), `clf-finetune` and `evaluate`, each seed in its own
   folder that links the shared ingested data;
4. prints, per configuration, test accuracy, balanced accuracy, ROC AUC and per-class recall as
   mean +- sd over the seeds, the per-seed values, the published figures and the wall time.

Yu et al.'s Tables 3-5 on BreastMNIST (`--config v1_original v2_acgan v3_mu_acgan defaults
v5_mu_acgan_traditional source_pretraining`): a configuration with synthetic images first trains
both GANs once per seed (`gan-pretrain` on the CC BY chest radiographs of ../shared/data, then
`gan-finetune` on the train split; seed S's classifiers use seed S's GANs) and runs `synthesize`
ungated in its seed folder; `source_pretraining` ingests the radiographs as the source domain and
runs stage 1 on them. The report pairs each configuration with its reference on the same seeds
(`COMPARED_WITH`), and `--tables REPORT` prints Tables 3-5 as markdown for reports/experiments.md.

No download: the npz is read from `../shared/data/breastmnist/` (or `--data`). Runs on the CPU
(`--threads`) and on CUDA when present (`clf.device: auto`).

Usage: python benchmarks/real.py [--seeds 0 1 2] [--config NAME ...] [--set KEY=VALUE ...]
       [--work /tmp/bonescan_real] [--data PATH] [--source-data DIR] [--jobs 2] [--threads 1]
       [--out results.json] | --markdown REPORT | --tables REPORT
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "breastmnist" / "breastmnist.npz"
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "chest_xray_cc_by"  # labels.csv: filename,label,patient_id,...
SOURCE_CLASSES = ("normal", "viral_pneumonia", "covid19")
SHA256 = "5e68d79723fb3a63a399b0a66b66451799fc2eb3651f469cec0b679cfd743b68"
CLASSES = ("malignant", "benign")  # label 0 = malignant, 1 = normal or benign (the npz's order)

# MedMNIST v2, Table of 2D results, BreastMNIST test split (as quoted in the data folder's README).
PUBLISHED = {
    "ResNet-18 (28)": {"auc": 0.901, "accuracy": 0.863},
    "ResNet-50 (224)": {"auc": 0.866, "accuracy": 0.842},
    "auto-sklearn": {"auc": 0.836, "accuracy": 0.803},
    "AutoKeras": {"auc": 0.871, "accuracy": 0.831},
    "Google AutoML Vision": {"auc": 0.919, "accuracy": 0.861},
}

# What every configuration shares: the dataset and the stages this benchmark does not measure.
BASE_SETTINGS: dict[str, object] = {
    "base.image_size": [32, 32],  # 28 x 28 upscaled a little: the nets' strides need 32 (MedMNIST trains at 28)
    "base.classes": list(CLASSES),
    "ingest.workers": 1,
    "ingest.crop_threshold": 0.001,  # ultrasound has no body outline to crop to: keep the frame
    "augment.include_synthetic": False,  # GAN oversampling is measured in reports/experiments.md
    "augment.poisson_p": 0.0,  # count noise is a scintigraphy model, not an ultrasound one
    "augment.vflip": 0.0,
    "clf.pretrain_source": "none",
    "evaluate.unit": "image",
    "evaluate.gradcam_per_class": 0,
}

# Named configurations, each a set of overrides on BASE_SETTINGS (the ablation of the defaults).
CONFIGS: dict[str, dict[str, object]] = {
    "defaults": {},  # params.yaml as it is (10 epochs, plain CE, argmax)
    "weighted_ce": {"clf.finetune.loss.name": "weighted_ce"},
    "logit_adjusted": {"clf.finetune.loss.name": "logit_adjusted"},
    "label_smoothing": {"clf.finetune.loss.label_smoothing": 0.1},
    "focal": {"clf.finetune.loss.name": "focal"},
    "ldam_drw": {"clf.normed_head": True, "clf.finetune.loss.name": "ldam", "clf.finetune.loss.drw_epoch": 6},
    "balanced_point": {"clf.operating_point": "balanced_accuracy"},
    "epochs_20": {"clf.finetune.epochs": 20},
    # Yu et al. 2023, Table 4 (dataset variants; "defaults" is variant 4, traditional augmentation) and Table 5
    "v1_original": {"augment.mode": "none"},
    "v2_acgan": {"augment.mode": "none", "augment.include_synthetic": True, "gan.synthesize.arch": "acgan",
                 "gan.synthesize.gated": False},
    "v3_mu_acgan": {"augment.mode": "none", "augment.include_synthetic": True, "gan.synthesize.arch": "mu_acgan",
                    "gan.synthesize.gated": False},
    "v5_mu_acgan_traditional": {"augment.include_synthetic": True, "gan.synthesize.arch": "mu_acgan",
                                "gan.synthesize.gated": False},
    "v5_gated": {"augment.include_synthetic": True},  # the pipeline's default: the gate picks arch and classes
    "source_pretraining": {"clf.pretrain_source": "source"},
    # The ablation on the better base for this dataset, the original images (v1): one change each.
    "none_ce": {"augment.mode": "none", "clf.finetune.loss.name": "ce"},
    "none_ema": {"augment.mode": "none", "clf.finetune.ema_decay": 0.99},
    "none_flip_tta": {"augment.mode": "none", "clf.test_time_flip": True},
    "none_focal": {"augment.mode": "none", "clf.finetune.loss.name": "focal"},
    "none_ldam_drw": {"augment.mode": "none", "clf.normed_head": True, "clf.finetune.loss.name": "ldam",
                      "clf.finetune.loss.drw_epoch": 10},
    "none_label_smoothing": {"augment.mode": "none", "clf.finetune.loss.label_smoothing": 0.1},
    "none_resnet34": {"augment.mode": "none", "clf.model": "resnet34"},
    "none_resnet18_small": {"augment.mode": "none", "clf.model": "resnet18_small"},  # MedMNIST's ResNet-18 (28)
    "none_val_loss": {"augment.mode": "none", "clf.finetune.monitor": "val_loss"},
    "none_epochs30": {"augment.mode": "none", "clf.finetune.epochs": 30},
    "none_ensemble3": {"augment.mode": "none", "clf.ensemble": 3},  # members: seeds S, S+1, S+2
    "none_folds5": {"augment.mode": "none", "clf.folds": 5},  # cross-validation ensemble over train + val
}
# The configuration each is compared with, seed by seed (Table 4: the original images; Table 5: no stage 1).
COMPARED_WITH: dict[str, str] = {
    **{name: "v1_original" for name in ("v2_acgan", "v3_mu_acgan", "defaults", "v5_mu_acgan_traditional", "v5_gated")},
    "source_pretraining": "defaults",
    **{name: "v1_original" for name in CONFIGS if name.startswith("none_")},
}
# The GANs at BreastMNIST's size (the demo's 128 x 48 would upsample 28 x 28 images 4x).
GAN_SETTINGS: dict[str, object] = {"gan.model.image_size": [32, 32]}
SOURCE_SETTINGS: dict[str, object] = {
    "datasets.source.format": "image_csv",
    "datasets.source.raw_dir": "source_raw/images",  # labels.csv names files relative to images/
    "datasets.source.labels": "source_raw/labels.csv",
    "datasets.source.classes": list(SOURCE_CLASSES),
    "datasets.source.split_views": False,
}


def uses_gan(settings: dict[str, object]) -> bool:
    return bool(settings.get("augment.include_synthetic"))


def uses_source(settings: dict[str, object]) -> bool:
    return uses_gan(settings) or settings.get("clf.pretrain_source") == "source"


def export_breastmnist(npz: Path, out: Path) -> dict[str, int]:
    """The npz -> out/images/<split>_<index>.png and out/labels.csv (filename,label,patient_id,split)."""
    data = np.load(npz)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["filename,label,patient_id,split"]
    counts: dict[str, int] = {}
    for split in ("train", "val", "test"):
        pixels, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
            name = f"{split}_{index:04d}.png"
            Image.fromarray(image.astype(np.uint8), mode="L").save(images / name)
            rows.append(f"images/{name},{CLASSES[int(label)]},{split}_{index:04d},{split}")
        counts[split] = len(labels)
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return counts


def set_key(tree: dict, dotted: str, value: object) -> None:
    """tree["a"]["b"] = value for "a.b" (the key must exist: params.yaml rejects unknown keys anyway)."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def benchmark_params(settings: dict[str, object]) -> dict:
    """The repository's params.yaml with BreastMNIST as the target dataset and `settings` applied."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    target = params["datasets"]["target"]
    target.update(
        format="image_csv", raw_dir="raw", labels="raw/labels.csv", classes=list(CLASSES), split_views=False,
    )
    for key, value in {**SOURCE_SETTINGS, **GAN_SETTINGS, **settings}.items():
        set_key(params, key, value)
    params["phantoms"]["out_dir"] = "phantoms_unused"
    return params


def parse_value(text: str) -> object:
    return yaml.safe_load(text)


def run(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run one `bonescan` command; its output goes to `log`. Returns seconds; raises naming the log."""
    tic = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {done.returncode}; see {log}")
    return time.perf_counter() - tic


def bonescan(*args: str) -> list[str]:
    return [sys.executable, "-m", "bonescan.cli", *args]


def stage_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), BONESCAN_SECRET="breastmnist-benchmark",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])),
    )
    env.pop("MLFLOW_TRACKING_URI", None)  # the work folder's own store
    return env


def prepare_source(work: Path, source: Path, env: dict[str, str]) -> dict:
    """Ingest and split the chest radiographs once, as the source domain (GAN and classifier stage 1)."""
    shared = work / "shared"
    marker = shared / "source_prepared.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    if not (source / "labels.csv").is_file():
        raise SystemExit(f"{source}: no labels.csv (pass --source-data DIR, the chest radiographs of ../shared/data)")
    link = shared / "source_raw"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(source.resolve())
    # a work folder prepared before the source settings existed gets them (the target keys are unchanged)
    (shared / "params.yaml").write_text(yaml.safe_dump(benchmark_params(BASE_SETTINGS), sort_keys=False))
    log = shared / "stages.log"
    seconds = run(bonescan("ingest", "--dataset", "source"), shared, env, log)
    seconds += run(bonescan("split", "--dataset", "source"), shared, env, log)
    result = {"split": json.loads((shared / "metrics" / "source" / "split.json").read_text()),
              "seconds": round(seconds, 1)}
    marker.write_text(json.dumps(result, indent=2))
    return result


def _link_shared(folder: Path, work: Path) -> None:
    """The ingested data (target and source) of `work/shared`, linked into a run folder."""
    shared = work / "shared"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for link in ("raw", "source_raw", ".secrets"):
        if (shared / link).exists():
            (folder / link).symlink_to(shared / link)
    for link in ("processed", "splits", "interim"):
        if (shared / "data" / link).exists():
            (folder / "data" / link).symlink_to(shared / "data" / link)


def train_gans(work: Path, settings: dict[str, object], seed: int, env: dict[str, str]) -> dict:
    """gan-pretrain (source) and gan-finetune (BreastMNIST train) of both architectures for one seed."""
    folder = work / "gan" / f"seed{seed}"
    seeded = {key: value for key, value in settings.items()
              if key.startswith(("gan.", "base.")) and not key.startswith(("gan.synthesize.", "gan.quality."))}
    seeded.update({"base.seed": seed, "gan.seed": seed})
    finished = folder / "gan.json"
    if finished.is_file() and json.loads(finished.read_text()).get("settings") == seeded:
        return json.loads(finished.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _link_shared(folder, work)
    (folder / "params.yaml").write_text(yaml.safe_dump(benchmark_params(seeded), sort_keys=False))
    log = folder / "stages.log"
    seconds = run(bonescan("gan-pretrain", "--no-resume"), folder, env, log)
    seconds += run(bonescan("gan-finetune", "--no-resume"), folder, env, log)
    result = {"seed": seed, "settings": seeded, "seconds": round(seconds, 1)}
    finished.write_text(json.dumps(result, indent=2))
    print(f"GANs seed {seed}: {seconds:.0f} s", file=sys.stderr, flush=True)
    return result


def prepare(work: Path, npz: Path, env: dict[str, str]) -> dict:
    """Export, ingest and split once (independent of model settings); returns counts and seconds."""
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{npz}: sha256 {digest}, expected {SHA256} (not MedMNIST v2's BreastMNIST)")
    shared = work / "shared"
    marker = shared / "prepared.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    if shared.exists():
        shutil.rmtree(shared)
    shared.mkdir(parents=True)
    counts = export_breastmnist(npz, shared / "raw")
    (shared / "params.yaml").write_text(yaml.safe_dump(benchmark_params(BASE_SETTINGS), sort_keys=False))
    log = shared / "stages.log"
    seconds = run(bonescan("ingest", "--dataset", "target"), shared, env, log)
    seconds += run(bonescan("split", "--dataset", "target"), shared, env, log)
    split = json.loads((shared / "metrics" / "split.json").read_text())
    result = {"images": counts, "split": split, "seconds": round(seconds, 1)}
    marker.write_text(json.dumps(result, indent=2))
    return result


def run_seed(work: Path, name: str, settings: dict[str, object], seed: int, env: dict[str, str]) -> dict:
    """augment -> (clf-pretrain) -> clf-finetune -> evaluate for one seed in its own folder."""
    folder = work / name / f"seed{seed}"
    seeded = {**settings, "base.seed": seed, "augment.seed": seed, "clf.seed": seed}
    finished = folder / "result.json"
    if finished.is_file() and json.loads(finished.read_text()).get("settings") == seeded:
        return json.loads(finished.read_text())  # resume: a run that finished with these settings is kept
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _link_shared(folder, work)
    params = benchmark_params(seeded)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = folder / "stages.log"
    seconds = 0.0
    gan_quality = None
    if uses_gan(settings):
        (folder / "models").mkdir()
        (folder / "models" / "gan").symlink_to(work / "gan" / f"seed{seed}" / "models" / "gan")
        seconds += run(bonescan("synthesize"), folder, env, log)
        gan_quality = json.loads((folder / params["gan"]["report"]).read_text())
    seconds += run(bonescan("augment", "--metrics", "metrics/augment.json"), folder, env, log)
    seconds += run(bonescan("clf-pretrain", "--no-progress", "--no-resume"), folder, env, log)  # none: a seeded init
    seconds += run(bonescan("clf-finetune", "--no-progress", "--no-resume"), folder, env, log)
    seconds += run(bonescan("evaluate"), folder, env, log)
    metrics = json.loads((folder / params["evaluate"]["metrics_file"]).read_text())
    finetune = json.loads((folder / "metrics" / "clf_finetune.json").read_text())
    result = {"seed": seed, "settings": seeded, "seconds": round(seconds, 1), "metrics": metrics, "finetune": finetune,
              "gan_quality": gan_quality}
    finished.write_text(json.dumps(result, indent=2))
    print(f"{name} seed {seed}: {json.dumps(headline(metrics))}", file=sys.stderr, flush=True)
    return result


def headline(metrics: dict) -> dict[str, float]:
    """The benchmark's numbers from an eval.json: accuracy, balanced accuracy, AUC, recall per class."""
    row = {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        # binary: the one-vs-rest AUCs of the two classes are the same curve; macro AUC is the AUC
        "auc": metrics["macro_auc"],
    }
    for name in CLASSES:
        row[f"recall_{name}"] = metrics[f"recall_{name}"]
    return row


def summarise(runs: list[dict]) -> dict:
    rows = [headline(r["metrics"]) for r in runs]
    out = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        out[key] = {
            "mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "per_seed": [round(v, 4) for v in values],
        }
    timed = [r["seconds"] for r in runs if r.get("seconds") is not None]
    val = [r["finetune"]["val_macro_f1"] for r in runs if r["finetune"].get("val_macro_f1") is not None]
    if val:
        out["val_macro_f1"] = {"mean": round(statistics.fmean(val), 4),
                               "sd": round(statistics.stdev(val), 4) if len(val) > 1 else 0.0}  # fmt: skip
    out["seconds_per_seed"] = round(statistics.fmean(timed), 1) if timed else None
    out["train_seconds_per_seed"] = round(statistics.fmean(r["finetune"]["seconds"] for r in runs), 1)
    return out


def seed_ensembles(work: Path, name: str, seeds: list[int], members: int) -> dict:
    """Test metrics of ensembles of `members` consecutive seeds: the mean of their test probabilities.

    A measurement, not a pipeline feature (yet): each seed's model is trained and evaluated as usual,
    and its `predictions.csv` gives the probabilities; the ensemble predicts by argmax of their mean.
    """
    import pandas as pd

    from bonescan.metrics import compute_metrics

    groups = [seeds[i : i + members] for i in range(0, len(seeds) - members + 1, members)]
    rows = []
    for group in groups:
        frames = [pd.read_csv(work / name / f"seed{seed}" / "reports" / "eval" / "predictions.csv")
                  .set_index("image_id").sort_index() for seed in group]  # fmt: skip
        if any(not f.index.equals(frames[0].index) for f in frames):
            raise ValueError(f"{name}: seeds {group} scored different test images")
        columns = [f"p_{c}" for c in CLASSES]
        prob = np.mean([f[columns].to_numpy() for f in frames], axis=0)
        y_true = np.array([CLASSES.index(label) for label in frames[0]["label"]])
        rows.append({"seeds": group, **headline(compute_metrics(y_true, prob, CLASSES))})
    out: dict[str, object] = {"members": members, "ensembles": rows}
    for key in ("accuracy", "balanced_accuracy", "auc"):
        values = [row[key] for row in rows]
        out[key] = {"mean": round(statistics.fmean(values), 4),
                    "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}  # fmt: skip
    return out


def paired_comparisons(runs_of: dict[str, list[dict]]) -> dict[str, dict]:
    """Each configuration minus its `COMPARED_WITH` reference, seed by seed: mean, sd, t-interval, wins."""
    from bonescan.experiments import paired_difference

    out: dict[str, dict] = {}
    for name, runs in runs_of.items():
        reference = COMPARED_WITH.get(name)
        if reference not in runs_of:
            continue
        ref_by_seed = {r["seed"]: headline(r["metrics"]) for r in runs_of[reference]}
        entry: dict[str, object] = {"reference": reference}
        for key in ("accuracy", "balanced_accuracy", "auc"):
            diffs = [headline(r["metrics"])[key] - ref_by_seed[r["seed"]][key] for r in runs if r["seed"] in ref_by_seed]
            if diffs:
                d = paired_difference(diffs)
                entry[key] = {**dataclasses.asdict(d), "verdict": d.verdict}
        out[name] = entry
    return out


def gan_quality_by_seed(runs_of: dict[str, list[dict]]) -> dict[str, dict]:
    """Per seed, its GANs' quality report (the judge and the per-arch entries; a seed's configurations share them)."""
    out: dict[str, dict] = {}
    for runs in runs_of.values():
        for r in runs:
            quality = r.get("gan_quality")
            if quality and str(r["seed"]) not in out:
                out[str(r["seed"])] = {"classifier": quality.get("classifier") or {}, "archs": quality["archs"]}
    return out


def paper_tables(report: dict) -> str:
    """Tables 3-5 on BreastMNIST as markdown: per configuration mean ± sd, and the paired differences."""
    from bonescan.experiments import PairedDifference, gan_comparison

    difference = PairedDifference.from_dict
    seeds = report["seeds"]
    lines = [f"Seeds {', '.join(map(str, seeds))} (seed S: split fixed, classifier seed S, GAN seed S). "
             "Per configuration mean ± sd over the seeds; paired difference: mean ± sd [95 % t-interval], "
             "seeds higher.", ""]
    keys = ("accuracy", "balanced_accuracy", "auc")
    for title, names in (("Table 4: dataset variants", [n for n in report["results"] if n != "source_pretraining"]),
                         ("Table 5: stage-1 pretraining", [n for n in ("defaults", "source_pretraining")
                                                          if n in report["results"]])):
        if len(names) < 2:
            continue
        lines += [f"### {title} (BreastMNIST)", "",
                  "| configuration | " + " | ".join(keys) + " | paired difference in AUC | in balanced accuracy |",
                  "|---" * (3 + len(keys)) + "|"]
        verdicts = []
        for name in names:
            result = report["results"][name]
            cells = [f"{result[k]['mean']:.3f} ± {result[k]['sd']:.3f}" for k in keys]
            paired = report["paired"].get(name, {})
            diffs = [f"{difference(paired[k]).text()} vs {paired['reference']}" if k in paired else "reference"
                     for k in ("auc", "balanced_accuracy")]
            lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
            if "auc" in paired:
                verdicts.append(f"- {name} vs {paired['reference']}: AUC {difference(paired['auc']).verdict}; "
                                f"balanced accuracy {difference(paired['balanced_accuracy']).verdict}.")
        lines += ["", *verdicts, ""]
    quality = report.get("gan_quality") or {}
    if quality:
        lines += ["### Table 3: the generators (BreastMNIST)", "",
                  *gan_comparison([(seed, entry) for seed, entry in quality.items()], "GAN seed")]
    return "\n".join(lines).rstrip() + "\n"


def markdown_table(report: dict) -> str:
    """The results as a benchmarks/README.md table: one row per configuration, then the published ones.

    Next to the test metrics: the best epoch's validation macro F1 (the only score a choice among the
    rows may use), the paired test-AUC difference to the configuration's reference, and the seed
    ensembles when the report has them.
    """
    from bonescan.experiments import PairedDifference

    keys = ["accuracy", "balanced_accuracy", "auc", *(f"recall_{c}" for c in CLASSES)]
    head = "| configuration | " + " | ".join(keys) + " | val macro F1 | paired AUC difference | training s / seed |"
    lines = [head, "|" + "---|" * (len(keys) + 4)]
    for name, result in report["results"].items():
        cells = [f"{result[k]['mean']:.3f} ± {result[k]['sd']:.3f}" for k in keys]
        val = result.get("val_macro_f1")
        paired = report.get("paired", {}).get(name, {})
        diff = ""
        if "auc" in paired:
            d = PairedDifference.from_dict(paired["auc"])
            diff = f"{d.text()} vs {paired['reference']}"
        val_cell = f"{val['mean']:.3f} ± {val['sd']:.3f}" if val else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {val_cell} | {diff} | {result['train_seconds_per_seed']:.0f} |")
        ensembles = result.get("seed_ensembles")
        if ensembles:
            cells = [f"{ensembles[k]['mean']:.3f} ± {ensembles[k]['sd']:.3f}" if k in ensembles else "" for k in keys]
            lines.append(f"| {name}, ensembles of {ensembles['members']} seeds ({len(ensembles['ensembles'])}) | "
                         + " | ".join(cells) + " | | | |")
    for name, published in report["published"].items():
        cells = [f"{published[k]:.3f}" if k in published else "" for k in keys]
        lines.append(f"| MedMNIST v2: {name} | " + " | ".join(cells) + " | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="breastmnist.npz (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bonescan_real"), help="work folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", nargs="+", default=["defaults"], choices=sorted(CONFIGS),
                        help="named configurations to run (default: defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra params override for every configuration, e.g. clf.finetune.epochs=30")
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained at once (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--ensemble", type=int, metavar="K",
                        help="also score ensembles of K consecutive seeds (mean test probabilities)")
    parser.add_argument("--source-data", type=Path, default=DEFAULT_SOURCE,
                        help="chest radiographs (labels.csv + images), the source domain (default: %(default)s)")
    parser.add_argument("--markdown", type=Path, help="print the table of a saved JSON report and exit")
    parser.add_argument("--tables", type=Path, help="print Tables 3-5 of a saved JSON report as markdown and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text())))
        return
    if args.tables:
        print(paper_tables(json.loads(args.tables.read_text())))
        return
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: not found (pass --data PATH to BreastMNIST's breastmnist.npz)")
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        extra[key] = parse_value(value)

    env = stage_env(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    prepared = prepare(args.work, args.data, env)
    settings = {name: {**BASE_SETTINGS, "base.threads": args.threads, **CONFIGS[name], **extra} for name in args.config}
    if any(uses_source(s) for s in settings.values()):
        prepared["source"] = prepare_source(args.work, args.source_data, env)
    gan_configs = [s for s in settings.values() if uses_gan(s)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        gans = list(pool.map(lambda seed: train_gans(args.work, gan_configs[0], seed, env), args.seeds)) if gan_configs else []
        tasks = [(name, seed) for name in args.config for seed in args.seeds]  # one queue: no core idles between configs
        done = list(pool.map(lambda task: run_seed(args.work, task[0], settings[task[0]], task[1], env), tasks))
    results: dict[str, dict] = {}
    runs_of: dict[str, list[dict]] = {}
    for name in args.config:
        runs_of[name] = [run for (config, _), run in zip(tasks, done, strict=True) if config == name]
        results[name] = {
            "settings": {k: v for k, v in settings[name].items() if BASE_SETTINGS.get(k, object()) != v},
            **summarise(runs_of[name]),
        }
        if args.ensemble and len(args.seeds) >= args.ensemble:
            results[name]["seed_ensembles"] = seed_ensembles(args.work, name, args.seeds, args.ensemble)
    report = {
        "dataset": "BreastMNIST (MedMNIST v2), official splits, test scored",
        "prepared": prepared,
        "gan_seconds_per_seed": round(statistics.fmean(g["seconds"] for g in gans), 1) if gans else None,
        "paired": paired_comparisons(runs_of),
        "gan_quality": gan_quality_by_seed(runs_of),
        "base_settings": BASE_SETTINGS,
        "seeds": args.seeds,
        "results": results,
        "published": PUBLISHED,
        "wall_seconds": round(time.perf_counter() - tic, 1),
        "jobs": args.jobs,
        "threads": args.threads,
        "device": "cuda" if _cuda() else "cpu",
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
