"""The phantom task's known ceiling: the best score the generator's own lesion truth allows.

Why: a model's test score means little without the score the data allow. The phantom generator knows
every lesion (`ground_truth.csv`, written by `bonescan phantoms` beside the raw studies), so a simple
classifier on what a reader would note -- how many hot spots, where (axial skeleton, ribs, joints),
how symmetric or aligned, how intense and large -- fitted on the train+val studies and scored on the
same test studies as the model, gives a ceiling that the image model can be held against ("model X of
ceiling Y"). A second check asks whether the lesions are visible at all at the model's input: a
lesion counts as visible when its expected peak at the classifier's resolution exceeds the Poisson
noise of the counts under it by `visibility_sigma` standard deviations.

The truth is keyed by the raw (fake) StudyInstanceUID; it is joined to the manifest through the same
keyed UID remapping and study pseudonym that ingest applies, so nothing identifying is needed downstream
and nothing but aggregates is written.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bonescan.config import AnonymizeConfig, CeilingConfig, IngestConfig, Size
from bonescan.data.manifest import read_manifest
from bonescan.dicom.anonymize import Anonymizer
from bonescan.intake import study_pseudonym

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_NAMES", "ceiling_scores", "lesion_cnr", "run_ceiling", "study_features", "truth_by_study",
]  # fmt: skip

AXIAL = {"spine", "rib", "pelvis", "sacrum", "skull", "sternum", "scapula"}
PROXIMAL_LONG = {"femur_proximal", "humerus_proximal"}
JOINTS = {"knee", "shoulder", "hip", "ankle", "wrist", "hand", "elbow"}
LATERAL_MM = 20.0  # |x| beyond this: a lesion has a side (the spine's width)
MIRROR_MM, MIRROR_Y = 25.0, 0.015  # a contralateral partner within 25 mm across and 1.5 % of height
COLLIMATOR_SIGMA_MM = 5.0  # as in bonescan.dicom.anatomy (the lesion's own blur is in its recorded peak)
FEATURE_NAMES = (
    "n", "n_axial", "n_spine", "n_rib", "n_pelvis", "n_skull", "n_proximal_long", "n_joint", "n_sites",
    "contrast_max", "contrast_sum", "sigma_mean", "asymmetry", "mirrored", "rib_run", "superscan",
)  # fmt: skip


def study_features(lesions: pd.DataFrame, superscan: bool) -> np.ndarray:
    """What a reader notes of one study's hot spots, as (len(FEATURE_NAMES),) floats.

    Args:
        lesions: the study's rows of the ground truth (columns site, x_mm, y_rel, contrast, sigma_mm).
        superscan: diffusely raised skeletal uptake.
    """
    site = lesions["site"].to_numpy(str)
    x, y = lesions["x_mm"].to_numpy(float), lesions["y_rel"].to_numpy(float)
    contrast, sigma = lesions["contrast"].to_numpy(float), lesions["sigma_mm"].to_numpy(float)
    n = len(site)
    lateral = np.abs(x) > LATERAL_MM
    left, right = contrast[lateral & (x > 0)].sum(), contrast[lateral & (x < 0)].sum()
    asymmetry = abs(left - right) / (left + right) if left + right > 0 else 0.0
    mirrored = 0.0
    if lateral.sum():
        lx, ly = x[lateral], y[lateral]
        partner = (np.abs(lx[:, None] + lx[None]) < MIRROR_MM) & (np.abs(ly[:, None] - ly[None]) < MIRROR_Y)
        mirrored = float((partner & (np.sign(lx[:, None]) != np.sign(lx[None]))).any(axis=1).mean())
    rib_run = 0  # most rib spots on one side within 40 mm across: a column of fractures
    for side in (-1, 1):
        rx = x[(site == "rib") & (np.sign(x) == side)]
        rib_run = max([rib_run, *(int((np.abs(rx - r) < 40.0).sum()) for r in rx)])
    return np.array([
        n, np.isin(site, list(AXIAL)).sum(), (site == "spine").sum(), (site == "rib").sum(),
        np.isin(site, ["pelvis", "sacrum"]).sum(), (site == "skull").sum(),
        np.isin(site, list(PROXIMAL_LONG)).sum(), np.isin(site, list(JOINTS)).sum(), len(set(site)),
        contrast.max(initial=0.0), contrast.sum(), sigma.mean() if n else 0.0, asymmetry, mirrored, rib_run,
        float(superscan),
    ], dtype=np.float64)  # fmt: skip


def truth_by_study(truth: pd.DataFrame, anonymizer: Anonymizer) -> dict[str, pd.DataFrame]:
    """Ground-truth rows per manifest study_id (the raw UID remapped as ingest does, then pseudonymised)."""
    keys = {uid: study_pseudonym(anonymizer.remap_uid(uid)) for uid in truth["study_instance_uid"].unique()}
    return {keys[uid]: rows for uid, rows in truth.groupby("study_instance_uid", sort=False)}


def _candidates(seed: int) -> dict[str, object]:
    return {
        "logistic": make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced")
        ),
        "forest": RandomForestClassifier(200, min_samples_leaf=2, class_weight="balanced", random_state=seed),
    }


def ceiling_scores(
    x_fit: np.ndarray,
    y_fit: Sequence[str],
    groups: Sequence[str],
    x_test: np.ndarray,
    y_test: Sequence[str],
    folds: int,
    seed: int,
) -> dict:
    """Pick the feature classifier by patient-grouped CV on the fit set, refit, score the test set.

    Returns:
        model (its name), cv_balanced_accuracy (the chosen one's), test_balanced_accuracy.
    """
    y_fit, y_test = np.asarray(y_fit), np.asarray(y_test)
    if len(set(y_fit)) < 2 or not len(y_test):  # too small a cohort to fit or score anything
        return {"model": "none", "cv_balanced_accuracy": float("nan"), "test_balanced_accuracy": float("nan")}
    per_class = min(len(set(np.asarray(groups)[y_fit == c])) for c in set(y_fit))
    k = int(min(folds, per_class))
    cv = {}
    for name, model in _candidates(seed).items():
        if k >= 2:
            split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            pred = cross_val_predict(model, x_fit, y_fit, cv=split, groups=groups)
            cv[name] = float(balanced_accuracy_score(y_fit, pred))
        else:
            cv[name] = float("nan")
    best = max(cv, key=lambda name: -1.0 if math.isnan(cv[name]) else cv[name])
    model = _candidates(seed)[best].fit(x_fit, y_fit)
    test = float(balanced_accuracy_score(y_test, model.predict(x_test)))
    return {"model": best, "cv_balanced_accuracy": cv[best], "test_balanced_accuracy": test}


def lesion_cnr(
    lesions: pd.DataFrame, geometry: pd.Series, ingest: IngestConfig, size: Size
) -> tuple[np.ndarray, np.ndarray]:
    """Each lesion's peak over the Poisson noise at the model input, in sigmas (best of the two views),
    and its full width at half maximum there, in input pixels.

    The two pull apart: a coarser input averages more counts per pixel (a higher peak-to-noise ratio)
    but leaves a lesion fewer pixels to be told from the bones it sits on.

    At the input, ingest has cropped the view to the body (+ margin) and shrunk it by f acquisition
    pixels per input pixel with a Gaussian pre-filter of sigma (f - 1) / 2 (skimage's anti-aliasing).
    The lesion's blurred peak (its own expected counts, sigma s) becomes peak x s^2 / (s^2 + a^2); the
    noise of the counts under it, sqrt(counts) x 1 / sqrt(1 + 4 pi a^2) (a unit-area Gaussian's
    noise gain, 1 without filtering). Intensity scaling is common to both and cancels.
    """
    spacing = float(geometry["spacing_mm"])
    view_rows, view_cols = float(geometry["view_rows"]), float(geometry["view_cols"])
    crop_h = min(view_rows, float(geometry["body_rows"]) + 2 * round(ingest.crop_margin * view_rows))
    crop_w = min(view_cols, float(geometry["body_cols"]) + 2 * round(ingest.crop_margin * view_cols))
    f = max(crop_h / size[0], crop_w / size[1], 1.0)  # square pixels, aspect kept: the tighter side
    a2 = max(0.0, (f - 1.0) / 2.0) ** 2
    s2 = (lesions["sigma_mm"].to_numpy(float) ** 2 + COLLIMATOR_SIGMA_MM**2) / spacing**2
    keep = s2 / (s2 + a2)
    gain = 1.0 / math.sqrt(1.0 + 4.0 * math.pi * a2)
    best = np.zeros(len(lesions))
    for view in ("anterior", "posterior"):
        own, other = lesions[f"{view}_own"].to_numpy(float), lesions[f"{view}_other"].to_numpy(float)
        best = np.maximum(best, own * keep / (np.sqrt(np.maximum(own + other, 1e-9)) * gain))
    return best, 2.3548 * np.sqrt(s2 + a2) / f


def run_ceiling(
    cfg: CeilingConfig,
    truth_path: Path,
    manifest_path: Path,
    classes: Sequence[str],
    ingest: IngestConfig,
    image_size: Size,
    anonymize: AnonymizeConfig,
    secret: bytes,
) -> dict:
    """Flat metrics of the ceiling and the visibility check (aggregates only: no key, id or path).

    Without a ground truth (a dataset of your own), returns {"available": 0}.
    """
    if not truth_path.is_file():
        log.info("no phantom ground truth at %s: no ceiling (a dataset of your own)", truth_path)
        return {"available": 0}
    truth = pd.read_csv(truth_path, dtype={"study_instance_uid": str, "accession_number": str, "site": str},
                        keep_default_na=False)  # fmt: skip
    by_study = truth_by_study(truth, Anonymizer(secret, anonymize))
    manifest = read_manifest(manifest_path)
    real = manifest[~manifest["synthetic"]]
    studies = real.drop_duplicates("study_id").set_index("study_id")
    missing = [s for s in studies.index if s not in by_study]
    if len(missing) == len(studies):
        raise ValueError(
            f"no study of {manifest_path} has ground truth in {truth_path}: ingested under another "
            "anonymization key, or not the phantom cohort"
        )
    if missing:
        log.warning("%d manifest studies have no ground truth (not phantom studies?); left out", len(missing))
    rows, cnr, fwhm, cnr_label = [], [], [], []  # per study: (id, patient, split, label, features)
    for study_id, info in studies.iterrows():
        if study_id not in by_study:
            continue
        gt = by_study[study_id]
        lesions = gt[gt["lesion"].astype(str) != ""]
        first = gt.iloc[0]
        rows.append((study_id, info["patient_id"], info["split"], info["label"],
                     study_features(lesions, bool(int(first["superscan"])))))  # fmt: skip
        if len(lesions):
            values, widths = lesion_cnr(lesions, first, ingest, image_size)
            cnr += list(values)
            fwhm += list(widths)
            cnr_label += [info["label"]] * len(values)
    table = pd.DataFrame(rows, columns=["study_id", "patient_id", "split", "label", "x"])
    fit, test = table[table["split"].isin(["train", "val"])], table[table["split"] == "test"]
    metrics: dict = {"available": 1, "studies": len(table), "test_studies": len(test)}
    scores = ceiling_scores(np.stack(fit["x"]), fit["label"], fit["patient_id"], np.stack(test["x"]), test["label"],
                            cfg.folds, cfg.seed)  # fmt: skip
    metrics.update(ceiling_balanced_accuracy=scores["test_balanced_accuracy"],
                   ceiling_cv_balanced_accuracy=scores["cv_balanced_accuracy"], ceiling_model=scores["model"])  # fmt: skip
    pair = [c for c in ("metastasis", "benign") if c in classes]
    if len(pair) == 2:
        fit2, test2 = fit[fit["label"].isin(pair)], test[test["label"].isin(pair)]
        s2 = ceiling_scores(np.stack(fit2["x"]), fit2["label"], fit2["patient_id"], np.stack(test2["x"]),
                            test2["label"], cfg.folds, cfg.seed)  # fmt: skip
        metrics.update(ceiling_metastasis_vs_benign=s2["test_balanced_accuracy"],
                       ceiling_metastasis_vs_benign_cv=s2["cv_balanced_accuracy"])  # fmt: skip
    cnr_arr, labels = np.asarray(cnr), np.asarray(cnr_label)
    metrics["lesions"] = len(cnr_arr)
    metrics["visibility_sigma"] = cfg.visibility_sigma
    metrics["visible_fraction"] = (
        float((cnr_arr >= cfg.visibility_sigma).mean()) if len(cnr_arr) else float("nan")
    )
    metrics["lesion_cnr_median"] = float(np.median(cnr_arr)) if len(cnr_arr) else float("nan")
    metrics["lesion_fwhm_px_median"] = float(np.median(fwhm)) if fwhm else float("nan")
    for cls in classes:
        sel = cnr_arr[labels == cls]
        if len(sel):
            metrics[f"visible_fraction_{cls}"] = float((sel >= cfg.visibility_sigma).mean())
    return metrics
