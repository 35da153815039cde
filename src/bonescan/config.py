"""params.yaml -> typed, validated, immutable config objects (one per stage).

Every knob of the pipeline lives in params.yaml; this module is the only place that parses it.
Unknown keys and ill-typed values fail loudly with the dotted key that is wrong, so a typo never
silently falls back to a default (nanoGPT's "typos fail" rule).
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml is missing, unreadable, or holds an unknown or ill-typed key."""


class _Section(BaseModel):
    """Base of every config section: frozen, no extra keys, no silent type coercion of strings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


Size = tuple[int, int]  # (height, width) in pixels


class BaseConfig(_Section):
    """Settings shared by every stage."""

    seed: int = 42
    image_size: Size = (256, 96)  # (H, W) every dataset is resized to; whole-body views are tall
    classes: tuple[str, ...] = ("healthy", "metastasis", "benign")
    threads: int | None = Field(None, ge=1)  # torch threads per process; None: usable CPUs / local processes

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, v: Size) -> Size:
        if min(v) < 8:
            raise ValueError(f"image_size must be at least 8x8 pixels, got {v}")
        return v


GROUND_TRUTH_FILE = "ground_truth.csv"  # the phantom's per-lesion truth, in phantoms.out_dir (beside bone/)


class PhantomConfig(_Section):
    """The embedded default cohort written by `bonescan phantoms`."""

    out_dir: str = "data/raw/phantoms"
    patients: int = Field(120, ge=1)
    chest_patients: int = Field(80, ge=0)
    seed: int = 2023
    bone_size: Size = (1024, 256)  # matrix of a real whole-body NM acquisition (pydicom-data NM1)
    chest_size: Size = (256, 256)
    class_proportions: dict[str, float] = {"healthy": 0.468, "metastasis": 0.364, "benign": 0.168}
    studies_per_patient: tuple[int, int] = (1, 3)
    counts_per_view: tuple[float, float] = (1.0e6, 4.0e6)  # real NM1 scan: ~3.5 M counts per view
    bad_files: bool = True
    workers: int = Field(2, ge=1)  # rendering processes, a patient per task (1: in-process); same files

    @field_validator("class_proportions")
    @classmethod
    def _proportions_sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        total = sum(v.values())
        if not v or any(p < 0 for p in v.values()) or abs(total - 1.0) > 1e-6:
            raise ValueError(f"class_proportions must be non-negative and sum to 1, got sum {total:.4f}")
        return v


DatasetFormat = Literal["dicom", "image_folder", "image_csv"]


class DatasetConfig(_Section):
    """One input dataset: where its raw files are and where its ingested outputs go."""

    format: DatasetFormat = "dicom"
    raw_dir: str
    labels: str | None = None  # dicom: CSV accession_number,label; image_csv: filename,label[,patient_id]
    classes: tuple[str, ...]
    modalities: tuple[str, ...] = ("NM",)  # accepted DICOM Modality values; others are quarantined
    split_views: bool = True  # whole-body: anterior + posterior; chest: one view
    image_size: Size | None = None  # None -> base.image_size
    interim_dir: str  # anonymized DICOM (named by new SOPInstanceUID)
    out_dir: str  # decoded images/ and manifest.csv
    reports_dir: str  # quarantine.csv, phi_scan.json, ingest.json
    metrics_dir: str  # split.json (DVC metrics, committed to git: counts only, no identifiers)


class IngestConfig(_Section):
    """Decoding and preprocessing shared by all datasets."""

    mirror_posterior: bool = True  # flip posterior views so the patient's left is on the same side
    crop_threshold: float = Field(0.02, gt=0, lt=1)  # body mask: fraction of the robust maximum
    crop_margin: float = Field(0.02, ge=0, lt=0.5)  # margin around the body, fraction of the view
    intensity_percentile: float = Field(99.5, gt=50, le=100)  # counts above it saturate to white
    workers: int = Field(2, ge=1)  # processes
    chunksize: int = Field(4, ge=1)  # files handed to a worker at once
    image_extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg")
    max_pixel_bytes: int = Field(128 * 2**20, ge=1)  # declared decoded pixel data per file; larger is refused unread
    max_quarantined_fraction: float = Field(0.9, ge=0, le=1)  # ingest fails when more files than this are rejected


class Preprocessing(_Section):
    """What turns an accepted file into model inputs; recorded in every fine-tuned classifier.

    Inference repeats a model's own preprocessing (from its checkpoint), not today's params.yaml, so
    a registered model keeps predicting on what it was trained on after the params move on.
    """

    ingest: IngestConfig  # cropping, mirroring, intensity scaling (workers, chunksize: no effect on pixels)
    modalities: tuple[str, ...]  # accepted DICOM Modality values
    split_views: bool  # whole-body files -> anterior + posterior images
    image_size: Size  # (H, W) model input
    input_format: DatasetFormat | None = None  # what the model was trained from; None (older models): any

    PIXEL_KEYS: ClassVar[tuple[str, ...]] = (
        "mirror_posterior", "crop_threshold", "crop_margin", "intensity_percentile",
    )  # fmt: skip

    def differences(self, other: Preprocessing) -> list[str]:
        """`key: self's value vs other's` for every setting that changes what the model sees."""
        pairs = [(f"ingest.{k}", getattr(self.ingest, k), getattr(other.ingest, k)) for k in self.PIXEL_KEYS]
        pairs += [(k, getattr(self, k), getattr(other, k)) for k in ("modalities", "split_views", "image_size")]
        return [f"{key}: {mine!r} vs {theirs!r}" for key, mine, theirs in pairs if mine != theirs]


BurnedInPolicy = Literal["quarantine", "allow"]


class AnonymizeConfig(_Section):
    """PS3.15 Annex E Basic Profile + Retain Longitudinal Temporal Information, Modified Dates."""

    secret_env: str = "BONESCAN_SECRET"  # environment variable holding the key (takes precedence)
    secret_file: str = ".secrets/anonymize.key"  # git-ignored; `make demo` creates one
    allow_burned_in: bool = False  # BurnedInAnnotation=YES images are quarantined unless True
    max_date_shift_days: int = Field(365, ge=1)  # per-patient shift drawn from [-max, -1] days
    uid_root: str = "2.25."  # UUID-derived UIDs (PS3.5 B.2) need no registered root
    # Images from sources that commonly burn text into pixels (US, secondary capture, screen saves;
    # README: De-identification) are quarantined unless "allow" (then only the header is cleaned).
    burned_in_policy: BurnedInPolicy = "quarantine"


class SplitConfig(_Section):
    """Patient-level, class-stratified, stable train/val/test split."""

    ratios: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
    seed: int = 42
    ledger_dir: str = "data/splits"  # persisted assignments keep existing patients where they are

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "val", "test"}:
            raise ValueError(f"ratios needs exactly train, val, test; got {sorted(v)}")
        if any(r < 0 for r in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be non-negative and sum to 1, got {v}")
        return v


AugmentMode = Literal["offline", "online", "none"]


class AugmentConfig(_Section):
    """Traditional augmentation of the training split (Yu et al. 2023, Sec. 3.3): rotate, shift, mirror, noise."""

    mode: AugmentMode = "offline"  # offline: images written once (DVC); online: redrawn in the loader
    factor: int = Field(3, ge=1)  # train split grows to factor x its size; paper: 15 (274 -> 4110)
    rotation: float = Field(10.0, ge=0, le=180)  # maximum |angle| in degrees
    translation: tuple[float, float] = (0.05, 0.05)  # maximum shift as a fraction of (H, W)
    hflip: float = Field(0.5, ge=0, le=1)  # probability of a left-right mirror
    vflip: float = Field(0.0, ge=0, le=1)  # probability of a head-feet mirror (off: anatomy has an up)
    poisson_peak: tuple[float, float] = (200.0, 2000.0)  # counts at intensity 1 (log-uniform); low = noisy
    poisson_p: float = Field(1.0, ge=0, le=1)  # probability of resampling an image with Poisson noise
    seed: int = 42  # same seed and inputs -> byte-identical augmented images
    manifest: str = "data/processed/manifest.csv"  # real images with their split
    synthetic_manifest: str = "data/synthetic/manifest.csv"  # admitted GAN images; used if the file exists
    include_synthetic: bool = True  # false: real images only (the paper's dataset 4, traditional only)
    out_dir: str = "data/augmented"  # images/ and manifest.csv (val/test rows unchanged)

    @field_validator("translation")
    @classmethod
    def _fractions(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= t < 0.5 for t in v):
            raise ValueError(f"translation fractions must be in [0, 0.5), got {v}")
        return v

    @field_validator("poisson_peak")
    @classmethod
    def _peak_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1]:
            raise ValueError(f"poisson_peak must be (low, high) with 0 < low <= high, got {v}")
        return v


LossName = Literal["ce", "weighted_ce", "focal", "ldam", "joint", "logit_adjusted"]
Sampling = Literal["uniform", "sqrt", "class_balanced"]
# Image weight n_class ** -power of each sampling that draws by class ("uniform" shuffles instead).
SAMPLING_POWER: dict[str, float] = {"class_balanced": 1.0, "sqrt": 0.5}


class LossConfig(_Section):
    """The training loss (bonescan.losses.build_loss) and its deferred re-weighting."""

    name: LossName = "ce"  # ce | weighted_ce | focal | ldam | joint (= alpha focal + (1 - alpha) LDAM) | logit_adjusted
    gamma: float = Field(2.0, ge=0)  # focal focusing parameter (Lin et al. 2017)
    max_m: float = Field(0.5, gt=0)  # LDAM margin of the rarest class (Cao et al. 2019)
    s: float = Field(30.0, gt=0)  # LDAM logit scale, meant for a cosine head (clf.normed_head)
    alpha: float = Field(0.5, ge=0, le=1)  # joint: weight of the focal term (Shi et al. 2023: 0.5)
    drw_epoch: int | None = Field(None, ge=0)  # epoch (0-based) from which DRW class weights apply; None: off
    drw_beta: float = Field(0.9999, ge=0, lt=1)  # DRW effective-number beta
    tau: float = Field(1.0, ge=0)  # logit_adjusted: CE(z + tau log prior) (Menon et al. 2021)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # ce, weighted_ce, logit_adjusted


class TrainConfig(_Section):
    """Optimisation of one classifier training stage (source pretraining or fine-tuning)."""

    epochs: int = Field(6, ge=1)
    # Step budget: epochs become min(epochs, ceil(max_steps / steps per epoch)), so a set 10x the demo's
    # costs what the demo costs; deterministic, unlike a time budget. None: all epochs.
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)  # per process under torchrun
    optimizer: Literal["radam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    scheduler: Literal["none", "step", "cosine"] = "cosine"  # stepped once per epoch
    step_size: int = Field(30, ge=1)  # step: epochs between decays
    step_gamma: float = Field(0.1, gt=0, le=1)  # step: decay factor
    patience: int = Field(0, ge=0)  # early stopping: epochs without improvement; 0 = train all epochs
    monitor: Literal["val_macro_f1", "val_loss"] = "val_macro_f1"  # picks the best epoch (saved model)
    # How training images are drawn: uniform (shuffled once per epoch) | sqrt | class_balanced: with
    # replacement, image weight 1/sqrt(n_class) or 1/n_class (bonescan.train.ClassBalancedSampler).
    sampling: Sampling = "uniform"
    loss: LossConfig = LossConfig()
    # Weight EMA (Polyak averaging): validation scores, and model.pt holds, an exponential moving average
    # of the weights, decay warmed up as min(decay, (1+t)/(10+t)) over steps t. None: the trained weights.
    ema_decay: float | None = Field(None, ge=0, lt=1)


# `clf.preset: <paper>` replaces these keys with that paper's settings (meant for a GPU). Values the
# papers do not state are ours and say so.
CLF_PRESETS: dict[str, dict[str, object]] = {
    "yu2023": {  # Yu et al. 2023, Sec. 4.2: multi-scale CNN, RAdam, batch 4, 500 epochs, cross-entropy
        "model": "multiscale",
        "pretrain_source": "source",
        "pretrain_init": "imagenet",  # two-stage transfer: ImageNet -> chest radiographs -> bone scans
        "pretrain": {"optimizer": "radam", "lr": 1e-4, "batch_size": 4, "epochs": 500, "scheduler": "none"},
        "finetune": {  # lr 1e-4: ours
            "optimizer": "radam",
            "lr": 1e-4,
            "batch_size": 4,
            "epochs": 500,
            "scheduler": "none",
            "loss": {"name": "ce"},
        },
    },
    "du_yan2025": {  # Du & Yan 2025: DI-MobileNet, AdamW lr 1e-4 step decay, batch 32, 100 epochs, patience 10
        "model": "di_mobilenet",
        "pretrain_source": "imagenet",
        "finetune": {  # step size and factor, and the monitored quantity: ours
            "optimizer": "adamw",
            "lr": 1e-4,
            "scheduler": "step",
            "step_size": 30,
            "step_gamma": 0.1,
            "batch_size": 32,
            "epochs": 100,
            "patience": 10,
            "monitor": "val_loss",
            "loss": {"name": "ce"},
        },
    },
    "shi2023": {  # Shi et al. 2023: MobileNetV3-CaCo, AdamW lr 5e-4, wd 5e-2, batch 128, 100 epochs, joint loss
        "model": "mobilenet_v3_caco",
        "pretrain_source": "imagenet",
        "normed_head": True,  # LDAM's scale s = 30 assumes cosine logits (Cao et al. 2019)
        "finetune": {  # cosine schedule: ours
            "optimizer": "adamw",
            "lr": 5e-4,
            "weight_decay": 5e-2,
            "batch_size": 128,
            "epochs": 100,
            "scheduler": "cosine",
            "loss": {"name": "joint", "alpha": 0.5},
        },
    },
}


def _deep_merge(base: dict, update: dict) -> dict:
    """`update` over `base`, recursing into nested mappings (a preset changes single nested keys)."""
    out = dict(base)
    for key, value in update.items():
        current = out.get(key)
        if isinstance(current, BaseModel):
            current = current.model_dump()
        nested = isinstance(value, dict) and isinstance(current, dict)
        out[key] = _deep_merge(current, value) if nested else value
    return out


class ClassifierConfig(_Section):
    """Two-stage transfer learning of the classifier (Yu et al. 2023, Sec. 3.4)."""

    preset: Literal["none", "yu2023", "du_yan2025", "shi2023"] = "none"  # a paper's settings win over keys
    model: str = "mobilenet_v3_small"  # a name of bonescan.models.available()
    normed_head: bool = False  # cosine classifier head (what LDAM's scale s assumes)
    pretrain_source: Literal["imagenet", "source", "none"] = "source"  # stage 1: ImageNet / source / none
    pretrain_init: Literal["none", "imagenet"] = "none"  # initialisation of source pretraining (Yu: imagenet)
    imagenet_weights: str | None = None  # weights file instead of the torch hub cache (never downloaded)
    source_dataset: str = "source"  # key of `datasets` used by clf_pretrain
    pretrain: TrainConfig = TrainConfig(epochs=4)  # stage 1 on the source domain
    finetune: TrainConfig = TrainConfig()  # stage 2 on the bone-scan training split
    manifest: str = "data/augmented/manifest.csv"  # fine-tuning data (the augment stage's output)
    pretrain_dir: str = "models/clf_pretrain"  # stage 1: model.pt (initial weights of stage 2)
    checkpoints_dir: str = "models/checkpoints"  # <stage>/last.pt, written every epoch (resume after a kill)
    out_dir: str = "models/classifier"  # model.pt (best epoch), history.csv/json
    plots_dir: str = "plots/clf"  # per-epoch curves (DVC plots)
    metrics_dir: str = "metrics"  # clf_pretrain.json, clf_finetune.json (DVC metrics)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when present
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # NHWC on CUDA (ignored on CPU)
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes (0: load in the training process)
    cache_images: bool = True  # keep decoded images in memory across epochs
    # How probabilities become a class, saved in model.pt and applied by evaluate, predict and the pyfunc:
    # argmax, or per-class log-probability offsets that maximise validation balanced accuracy (per study),
    # or the Bayes prior shift from the training prior to `deployment_prior` (Saerens et al. 2002).
    operating_point: Literal["argmax", "balanced_accuracy", "deployment_prior"] = "argmax"
    deployment_prior: dict[str, float] | None = None  # class -> prevalence where the model is used
    # Test-time augmentation, saved in model.pt: probabilities are the mean over the image and its
    # left-right mirror wherever the model is applied (operating point, evaluate, predict, pyfunc).
    test_time_flip: bool = False
    # Seed ensemble: fine-tune this many members (seeds seed, seed + 1, ...) from the same stage-1 weights;
    # model.pt holds them all and its probabilities are their mean. Costs this many fine-tunings.
    ensemble: int = Field(1, ge=1)
    # Cross-validation ensemble: K >= 2 members, member i fine-tuned on the train and val patients outside
    # fold i of K (StratifiedGroupKFold) with its best epoch chosen on fold i; the operating point is fitted
    # on the out-of-fold scores. Uses the val patients for training too; costs K fine-tunings.
    folds: int = Field(1, ge=1)
    seed: int = 42

    @model_validator(mode="after")
    def _one_kind_of_ensemble(self) -> ClassifierConfig:
        if self.folds > 1 and self.ensemble > 1:
            raise ValueError(f"clf.folds {self.folds} and clf.ensemble {self.ensemble}: choose one kind of "
                             "ensemble (cross-validation members or seed members), set the other to 1")
        return self

    @model_validator(mode="after")
    def _deployment_prior_is_a_distribution(self) -> ClassifierConfig:
        prior = self.deployment_prior
        if self.operating_point == "deployment_prior" and not prior:
            raise ValueError("operating_point deployment_prior needs clf.deployment_prior (class -> prevalence)")
        if prior is not None and (min(prior.values()) <= 0 or abs(sum(prior.values()) - 1.0) > 1e-6):
            raise ValueError(f"clf.deployment_prior {prior} must be positive prevalences that sum to 1")
        return self

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("preset", "none") == "none":
            return data
        preset = CLF_PRESETS.get(data["preset"])
        if preset is None:
            return data  # the Literal check reports the unknown name
        defaults = {k: data.get(k, cls.model_fields[k].default) for k in preset}
        return {**data, **_deep_merge(defaults, preset)}


GanArch = Literal["mu_acgan", "acgan"]
GAN_SIDE_MULTIPLE = 16  # both GAN architectures halve the resolution four times

# `gan.preset: paper` replaces these keys with Yu et al. 2023's settings (meant for a GPU).
GAN_PAPER_PRESET: dict[str, dict[str, object]] = {
    "model": {"image_size": None, "z_dim": 128, "base_channels": None},  # full size, default widths (32)
    # Sec. 4.2: batch size 2, RAdam lr 2e-4; Eq. 2-4: D's class head also learns from generated images
    "train": {"batch_size": 2, "lr": 2e-4, "d_fake_class_loss": True, "mode_seeking": 0.0},
    "pretrain": {"epochs": 500, "max_steps": None},  # Sec. 4.2: 500 epochs
    "finetune": {"epochs": 500, "max_steps": None},
}


class GanModelConfig(_Section):
    """Generator/discriminator shape; gan_finetune must use the shape gan_pretrain was trained with."""

    image_size: Size | None = (128, 48)  # GAN resolution (H, W), sides divisible by 16; None -> base.image_size rounded up to 16s
    z_dim: int = Field(64, ge=1)  # noise dimension
    base_channels: int | None = Field(8, ge=1)  # G width of the first level; None -> architecture default (32)
    d_base_channels: int | None = Field(None, ge=1)  # D width of the first block; None -> base_channels
    spectral_norm: bool = False  # spectral-normalise every D weight (Miyato et al. 2018)

    @field_validator("image_size")
    @classmethod
    def _at_least_one_pixel_after_four_halvings(cls, v: Size | None) -> Size | None:
        if v is not None and min(v) < 16:
            raise ValueError(f"both sides must be at least 16 (the GANs halve the resolution four times), got {list(v)}")
        return v


class GanTrainConfig(_Section):
    """Optimisation shared by gan_pretrain and gan_finetune."""

    batch_size: int = Field(8, ge=1)  # real images per step and process; Yu et al.: 2
    lr: float = Field(1e-3, gt=0)  # RAdam learning rate of G and D (Yu et al.: 2e-4 for 500 epochs)
    betas: tuple[float, float] = (0.5, 0.99)  # RAdam betas; 0.5 is the usual GAN momentum
    diffaugment: str = "color"  # DiffAugment policy on real and fake ("translation,cutout,color"); "" disables
    d_fake_class_loss: bool = False  # D's class head also learns from generated images (Eq. 2-4, paper preset)
    mode_seeking: float = Field(0.3, ge=0)  # weight of the MSGAN mode-seeking term in G's loss; 0 = off
    ema: bool = True  # sample from an exponential moving average of G
    ema_decay: float = Field(0.999, ge=0, lt=1)  # EMA decay, ramped up as min(decay, (1+t)/(10+t))
    balanced_sampling: bool = True  # draw real batches label-balanced (WeightedRandomSampler)
    checkpoint_every: int = Field(100, ge=1)  # steps between resumable checkpoints (also at the end)
    sample_every: int = Field(5, ge=1)  # epochs between fixed-noise sample grids (also at the end)
    samples_per_class: int = Field(8, ge=1)  # images per class (grid row) in a sample grid
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when present (bf16 autocast, channels_last)


class GanStageConfig(_Section):
    """One GAN training stage: which dataset's train split and for how long."""

    dataset: str  # key of `datasets`; only its train split (real images) is read
    epochs: int = Field(ge=1)  # passes over the train split (label-balanced draws when balanced_sampling)
    max_steps: int | None = Field(None, ge=1)  # stop after this many steps (smoke runs); None: all epochs


class GanSynthesizeConfig(_Section):
    """Balancing the target train split with generated images."""

    arch: GanArch | Literal["auto"] = "auto"  # whose images are written (in gan.archs); auto: the gate's choice
    count: int | None = Field(None, ge=0)  # images per class; None: bring every class to the majority count
    seed: int = 7  # noise seed; recorded in each row's `source`
    batch_size: int = Field(32, ge=1)  # images generated per forward pass
    out_dir: str = "data/synthetic"  # images/ and manifest.csv (admitted classes only)
    # False: write every class's images whatever the gate decides (Yu et al.'s Table 4 balances without a
    # gate); the report still records each decision. For measuring oversampling, not for production.
    gated: bool = True


class GanQualityConfig(_Section):
    """Quality report (Yu et al. 2023, Table 3) and the gate that admits a class's synthetic images."""

    samples_per_class: int = Field(32, ge=2)  # generated images per class the metrics are computed on
    classifier: str = "soft_threshold_net"  # bonescan.models name used for fidelity and train-synthetic/test-real
    classifier_epochs: int = Field(5, ge=1)  # epochs of that classifier (real train or synthetic images)
    classifier_batch_size: int = Field(16, ge=1)
    classifier_lr: float = Field(1e-3, gt=0)  # AdamW
    classifier_members: int = Field(3, ge=1)  # classifiers (seeds seed, seed+1, ...) whose mean probabilities judge
    min_fidelity: float = Field(0.5, ge=0, le=1)  # admit a class if the real-trained classifier recognises >= this
    min_label_lift: float = Field(0.2, ge=-1, le=1)  # ... and >= this more often than for images generated as others; -1: off
    max_diversity_ssim: float = Field(0.9, ge=0, le=1)  # ... and its images' mean pairwise SSIM is <= this
    # ... and <= the real images' diversity SSIM + this (a collapsed class sits far above its real images); None: off
    max_diversity_margin: float | None = Field(0.1, ge=0, le=1)
    # ... and its TSTR lift (recall - rate of naming it for other classes' real val images; chance = 0) >= this; None: off
    min_tstr_lift: float | None = Field(0.1, ge=-1, le=1)
    # generated images per class the TSTR classifier trains on (>= samples_per_class; 32 is too few steps to learn)
    tstr_samples_per_class: int = Field(96, ge=2)
    diversity_pairs: int | None = Field(4096, ge=1)  # seeded sample of pairs for diversity SSIM (real and generated); None: all
    judge_images_per_class: int | None = Field(256, ge=2)  # seeded sample of real train images per class the judge trains on; None: all
    seed: int = 11  # noise of the measured samples, classifier initialisation, the samples above


class GanConfig(_Section):
    """MU-ACGAN / ACGAN oversampling: source pretraining, target fine-tuning, synthesis, quality gate."""

    preset: Literal["demo", "paper"] = "demo"  # paper: GAN_PAPER_PRESET overrides (batch 2, 500 epochs, full size)
    archs: tuple[GanArch, ...] = ("mu_acgan", "acgan")  # architectures trained and compared in the report
    model: GanModelConfig = GanModelConfig()
    train: GanTrainConfig = GanTrainConfig()
    pretrain: GanStageConfig = GanStageConfig(dataset="source", epochs=20)  # stage 1 (source domain)
    finetune: GanStageConfig = GanStageConfig(dataset="target", epochs=10)  # stage 2 (target train split)
    synthesize: GanSynthesizeConfig = GanSynthesizeConfig()
    quality: GanQualityConfig = GanQualityConfig()
    models_dir: str = "models/gan"  # pretrain/<arch>.pt, finetune/<arch>.pt, checkpoints/
    plots_dir: str = "plots/gan"  # per-epoch curves (DVC plots) and sample grids
    report: str = "reports/gan_quality.json"  # quality report; the markdown table sits next to it (.md)
    seed: int | None = None  # None -> base.seed

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("preset") != "paper":
            return data
        merged = dict(data)
        for section, values in GAN_PAPER_PRESET.items():
            current = merged.get(section, cls.model_fields[section].default)
            if isinstance(current, BaseModel):
                current = current.model_dump()
            merged[section] = {**(current or {}), **values}
        return merged

    @model_validator(mode="after")
    def _synthesis_arch_is_trained(self) -> GanConfig:
        if not self.archs:
            raise ValueError("gan.archs needs at least one architecture")
        if self.synthesize.arch != "auto" and self.synthesize.arch not in self.archs:
            raise ValueError(
                f"gan.synthesize.arch {self.synthesize.arch!r} is not 'auto' or in gan.archs {list(self.archs)}"
            )
        return self


class OrchestrationConfig(_Section):
    """The Prefect `retrain` flow (pipeline/): schedule and time limits."""

    cron: str = "0 2 * * 1"  # Mondays 02:00, after the weekend's studies are exported
    stage_timeout_s: float = Field(2 * 3600, gt=0)  # data stages
    training_timeout_s: float = Field(24 * 3600, gt=0)  # gan_* and clf_* stages


# Summary metrics that can rank models (bonescan.metrics.MACRO_METRICS; kept equal by a test).
PrimaryMetric = Literal[
    "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_specificity", "macro_f1", "macro_auc"
]


class EvaluateConfig(_Section):
    """Scoring the fine-tuned classifier on held-out patients: metrics, patient-bootstrap CIs, Grad-CAM."""

    dataset: str = "target"  # key of `datasets`; real (non-synthetic) images of its manifest are scored
    split: Literal["val", "test"] = "test"  # the split scored; val only for model-selection studies
    unit: Literal["image", "study"] = "study"  # study: mean of its views' probabilities (the clinical unit)
    n_boot: int = Field(1000, ge=0)  # bootstrap resamples of patients; 0: point estimates only
    ci: float = Field(0.95, gt=0, lt=1)  # coverage of the percentile intervals
    seed: int = 42  # bootstrap resampling and the choice of Grad-CAM images
    gradcam_per_class: int = Field(2, ge=0)  # per class: this many correct and this many wrong cases; 0: none
    primary_metric: PrimaryMetric = "macro_f1"  # the one number models are ranked and promoted by
    batch_size: int = Field(32, ge=1)  # inference batch
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when present
    metrics_file: str = "metrics/eval.json"  # flat DVC metrics: m, m_ci_low, m_ci_high per metric
    reports_dir: str = "reports/eval"  # predictions.csv, confusion_matrix.png, report.md, gradcam/
    plots_dir: str = "plots/eval"  # confusion.csv, roc/, pr/, calibration.csv (DVC plots)
    calibration_bins: int = Field(10, ge=2)  # equal-width confidence bins of the reliability diagram and ECE
    curve_points: int = Field(101, ge=11)  # grid of the bootstrap bands (FPR for ROC, recall for PR)
    temperature_scaling: bool = False  # fit one temperature on the val split; report calibrated ECE next to raw

    @model_validator(mode="after")
    def _temperature_not_fitted_on_the_scored_split(self) -> EvaluateConfig:
        if self.temperature_scaling and self.split == "val":
            raise ValueError("temperature_scaling fits on the val split, so it cannot calibrate an evaluation "
                             "of the val split itself (set evaluate.split: test or temperature_scaling: false)")
        return self


class ReportConfig(_Section):
    """The offline HTML report of one pipeline run (`bonescan report`), read from the stages' outputs."""

    out: str = "reports/index.html"  # one self-contained page: images inlined, no network request
    title: str = "bonescan pipeline report"


class CeilingConfig(_Section):
    """The demo task's known ceiling (`bonescan ceiling`): what the phantom's own lesion truth allows."""

    dataset: str = "target"  # key of `datasets` whose manifest (and split) the truth is joined to
    visibility_sigma: float = Field(3.0, gt=0)  # visible: lesion peak >= this many Poisson sigmas at the model input
    folds: int = Field(5, ge=2)  # patient-grouped CV on train+val chooses the feature classifier
    seed: int = 42
    metrics_file: str = "metrics/ceiling.json"  # flat DVC metrics


class TrackingConfig(_Section):
    """MLflow tracking of every stage run (bonescan.tracking); not a DVC param of any stage."""

    enabled: bool = True  # false (or env BONESCAN_TRACKING=0): stages log nothing, no mlflow.db is created
    experiment: str = "bonescan"  # MLflow experiment of runs without a parent ($BONESCAN_MLFLOW_EXPERIMENT wins)


class PromoteConfig(_Section):
    """Registering the evaluated classifier in MLflow and the champion/challenger rule (`bonescan promote`)."""

    registered_model: str = "bonescan-classifier"  # MLflow registered model name (aliases champion, challenger, ...)
    min_improvement: float = Field(0.01, ge=0)  # a challenger must beat the champion's primary metric by this much
    min_class_recall: float = Field(0.1, ge=0, le=1)  # every class recall must reach this floor (no abandoned class)
    paired_bootstrap: bool = True  # also require the paired patient-bootstrap difference's lower bound > 0
    n_boot: int = Field(1000, ge=100)  # resamples of that difference
    model_file: str = "models/classifier/model.pt"  # the fine-tuned checkpoint (clf.out_dir/model.pt)
    metrics_file: str = "metrics/eval.json"  # its flat test metrics (evaluate.metrics_file)
    eval_summary: str = "reports/eval/summary.json"  # evaluate's summary: test-split fingerprint, unit, counts
    report: str = "reports/promotion.json"  # decision, reason, version and aliases after the run
    model_card: str = "reports/model_card.md"  # markdown card, also logged with the registered version


class Params(_Section):
    """The whole of params.yaml."""

    base: BaseConfig = BaseConfig()
    phantoms: PhantomConfig = PhantomConfig()
    datasets: dict[str, DatasetConfig]
    ingest: IngestConfig = IngestConfig()
    anonymize: AnonymizeConfig = AnonymizeConfig()
    split: SplitConfig = SplitConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    augment: AugmentConfig = AugmentConfig()
    clf: ClassifierConfig = ClassifierConfig()
    gan: GanConfig = GanConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ceiling: CeilingConfig = CeilingConfig()
    tracking: TrackingConfig = TrackingConfig()
    promote: PromoteConfig = PromoteConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _calibration_images_are_held_out(self) -> Params:
        if self.clf.folds > 1 and self.evaluate.temperature_scaling:
            raise ValueError(f"evaluate.temperature_scaling fits on the val split, which clf.folds {self.clf.folds} "
                             "trains on: set one of them off (clf.folds: 1 or evaluate.temperature_scaling: false)")
        return self

    @model_validator(mode="after")
    def _target_dataset_exists(self) -> Params:
        if "target" not in self.datasets:
            raise ValueError("datasets needs a 'target' entry (the bone scans to classify)")
        if tuple(self.datasets["target"].classes) != tuple(self.base.classes):
            raise ValueError(
                f"base.classes {list(self.base.classes)} and datasets.target.classes "
                f"{list(self.datasets['target'].classes)} differ: the classifier's label indices follow "
                "base.classes and the target's labels are read with datasets.target.classes, so the two "
                "must list the same classes in the same order"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _derive_restated_paths(cls, data: object) -> object:
        """Fill each key that restates another stage's output from that output, when it is not given."""
        if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
            return data

        def raw(section: str, key: str, model: type[BaseModel]) -> str:
            value = (data.get(section) or {}).get(key) if isinstance(data.get(section), dict) else None
            return str(value if value is not None else model.model_fields[key].default)

        target = data["datasets"].get("target")
        synth = ((data.get("gan") or {}).get("synthesize") or {}) if isinstance(data.get("gan"), dict) else {}
        derived = {
            ("augment", "synthetic_manifest"): f"{synth.get('out_dir', GanSynthesizeConfig().out_dir)}/manifest.csv",
            ("clf", "manifest"): f"{raw('augment', 'out_dir', AugmentConfig)}/manifest.csv",
            ("promote", "model_file"): f"{raw('clf', 'out_dir', ClassifierConfig)}/model.pt",
            ("promote", "metrics_file"): raw("evaluate", "metrics_file", EvaluateConfig),
            ("promote", "eval_summary"): f"{raw('evaluate', 'reports_dir', EvaluateConfig)}/summary.json",
        }
        if isinstance(target, dict) and target.get("out_dir"):
            derived[("augment", "manifest")] = f"{target['out_dir']}/manifest.csv"
        data = dict(data)
        for (section, key), value in derived.items():
            current = data.get(section)
            if current is None or isinstance(current, dict):
                current = dict(current or {})
                current.setdefault(key, value)
                data[section] = current
        return data

    @model_validator(mode="after")
    def _paths_said_twice_agree(self) -> Params:
        """A key that restates another stage's output must name the same file (dvc.yaml reads both)."""
        for key, value, source, derived in self.restated_paths():
            if _norm(value) != _norm(derived):
                raise ValueError(
                    f"{key} is {value!r} but {source} makes it {derived!r}: the two keys name one file "
                    f"and must agree (set {key}: {derived})"
                )
        return self

    def restated_paths(self) -> list[tuple[str, str, str, str]]:
        """(key, its value, the keys it restates, the path those give) for every path said twice."""
        return [
            ("augment.manifest", self.augment.manifest, "datasets.target.out_dir", str(self.manifest("target"))),
            ("augment.synthetic_manifest", self.augment.synthetic_manifest, "gan.synthesize.out_dir",
             str(self.synthetic_manifest)),
            ("clf.manifest", self.clf.manifest, "augment.out_dir", str(self.augmented_manifest)),
            ("promote.model_file", self.promote.model_file, "clf.out_dir", str(self.classifier_file)),
            ("promote.metrics_file", self.promote.metrics_file, "evaluate.metrics_file", self.evaluate.metrics_file),
            ("promote.eval_summary", self.promote.eval_summary, "evaluate.reports_dir", str(self.eval_summary)),
        ]  # fmt: skip

    # One derivation per path another stage reads (the CLI and the summary use these, not literals).

    def manifest(self, dataset: str) -> Path:
        """The split manifest of a dataset (ingest + split write it)."""
        return Path(self.dataset(dataset).out_dir) / "manifest.csv"

    @property
    def synthetic_manifest(self) -> Path:
        return Path(self.gan.synthesize.out_dir) / "manifest.csv"

    @property
    def augmented_manifest(self) -> Path:
        return Path(self.augment.out_dir) / "manifest.csv"

    @property
    def classifier_file(self) -> Path:
        """The fine-tuned classifier (clf_finetune's output, what evaluate scores and promote registers)."""
        return Path(self.clf.out_dir) / "model.pt"

    @property
    def ground_truth(self) -> Path:
        """The phantom cohort's lesion truth (written by `bonescan phantoms`, read by `bonescan ceiling`)."""
        return Path(self.phantoms.out_dir) / GROUND_TRUTH_FILE

    @property
    def eval_summary(self) -> Path:
        return Path(self.evaluate.reports_dir) / "summary.json"

    def dataset(self, name: str) -> DatasetConfig:
        """The named dataset, with a clear error listing the configured ones."""
        try:
            return self.datasets[name]
        except KeyError:
            raise ConfigError(f"unknown dataset {name!r}; params.yaml defines {sorted(self.datasets)}") from None

    def image_size(self, dataset: str) -> Size:
        return self.dataset(dataset).image_size or self.base.image_size

    def image_size_key(self, dataset: str) -> str:
        """The dotted key that sets `image_size(dataset)`: the dataset's own, else base.image_size."""
        return f"datasets.{dataset}.image_size" if self.dataset(dataset).image_size else "base.image_size"

    def preprocessing(self, dataset: str) -> Preprocessing:
        """How the named dataset's files become model inputs under the current params."""
        ds = self.dataset(dataset)
        return Preprocessing(
            ingest=self.ingest, modalities=ds.modalities, split_views=ds.split_views,
            image_size=self.image_size(dataset), input_format=ds.format,
        )  # fmt: skip


def _norm(path: str | Path) -> str:
    return os.path.normpath(str(path))


def _describe(err: dict, model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if not loc:  # a rule across sections (Params' own validators): the message names the keys
        return msg.removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        hint = _closest_key(err["loc"], model)
        if hint:
            msg += f" (did you mean {hint!r}?)"
    return f"{loc}: {msg}" + ("" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})")


def _closest_key(loc: tuple, model: type[BaseModel]) -> str | None:
    """Walk the model along `loc` and suggest the nearest valid field name for its last part."""
    current: object = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]  # `part` is a key of a mapping such as `datasets`
        else:
            return None
    if get_origin(current) is dict:
        current = get_args(current)[1]
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return None
    matches = difflib.get_close_matches(str(loc[-1]), list(current.model_fields), n=1)
    return matches[0] if matches else None


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e, Params) for e in exc.errors())
        raise ConfigError(f"{source}: invalid parameters:\n  {problems}") from None


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """A deep copy of raw params with dotted keys set (`clf.finetune.batch_size`), as `dvc exp run -S` does.

    Raises:
        ConfigError: a dotted key runs through a value that is not a section.
    """
    out = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return out


def override_text(value: Any) -> str:
    """A value as DVC's `-S` (Hydra override) parser reads it back: None -> null, lists in flow style."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw or {}, source=str(path))
