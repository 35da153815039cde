"""The evaluate stage: study aggregation, output files, Grad-CAM, and an end-to-end run on tiny PNGs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from bonescan.config import EvaluateConfig, PrimaryMetric
from bonescan.data.manifest import MANIFEST_COLUMNS, write_manifest
from bonescan.dicom.read import write_png16
from bonescan.evaluate import evaluate_model, run_evaluate, select_gradcam_cases
from bonescan.gradcam import GalleryItem, gradcam_maps, overlay, save_case_grid
from bonescan.metrics import MACRO_METRICS, aggregate_by_study
from bonescan.models import Classifier, build

CLASSES = ("healthy", "metastasis", "benign")
SIZE = (32, 16)  # (H, W): tall like a whole-body view, tiny for speed


class TinyNet(Classifier):
    """Conv -> ReLU -> pool -> linear; brightness decides the class, so predictions are not constant."""

    def __init__(self, num_classes: int = 3, in_chans: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, num_classes)
        self.num_features, self.classifier_name = 4, "fc"
        self.in_chans, self.num_classes = in_chans, num_classes
        self.min_input_size = (1, 1)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = features.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def gradcam_layers(self) -> dict[str, nn.Module]:
        return {"conv": self.conv}


def _cohort(root, n_patients: int = 9, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-2 studies of anterior + posterior 32x16 PNGs; brightness follows the class."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = CLASSES[p % len(CLASSES)]
        for s in range(1 + p % 2):
            for view in ("anterior", "posterior"):
                image_id = f"img{p}{s}{view[0]}"
                level = 0.2 + 0.3 * CLASSES.index(label)
                image = np.clip(level + 0.1 * rng.standard_normal(SIZE), 0, 1)
                path = f"data/images/{image_id}.png"
                write_png16(image, root / path)
                rows.append([image_id, f"P{p}", f"S{p}{s}", view, label, "test", "false", "dicom:NM", path])
    rows.append(["synth0", "P0", "S00", "anterior", "healthy", "test", "true", "mu_acgan", "data/images/img00a.png"])
    rows.append(["train0", "P99", "S99", "anterior", "benign", "train", "false", "dicom:NM", "data/images/img00a.png"])
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _cfg(**kw) -> EvaluateConfig:
    return EvaluateConfig(**{"n_boot": 50, "gradcam_per_class": 1, "device": "cpu", **kw})


def test_primary_metric_choices_are_the_summary_metrics():
    assert set(PrimaryMetric.__args__) == set(MACRO_METRICS)


def test_study_probabilities_are_the_mean_of_its_views():
    per_image = pd.DataFrame(
        {
            "study_id": ["a", "a", "b"],
            "patient_id": ["p", "p", "q"],
            "label": ["healthy", "healthy", "benign"],
            "p_healthy": [0.2, 0.6, 0.1],
            "p_benign": [0.8, 0.4, 0.9],
        }
    )
    studies = aggregate_by_study(per_image, ["healthy", "benign"])
    assert studies["study_id"].tolist() == ["a", "b"]
    assert studies["n_views"].tolist() == [2, 1]
    np.testing.assert_allclose(studies["p_healthy"], [0.4, 0.1])
    assert studies["predicted"].tolist() == ["benign", "benign"]


def test_a_study_with_two_labels_is_an_error():
    per_image = pd.DataFrame(
        {"study_id": ["a", "a"], "patient_id": ["p", "p"], "label": ["healthy", "benign"], "p_healthy": [1, 0],
         "p_benign": [0, 1]}
    )
    with pytest.raises(ValueError, match="different labels"):
        aggregate_by_study(per_image, ["healthy", "benign"])


def test_gradcam_cases_are_correct_and_wrong_ones_per_class_drawn_reproducibly():
    labels = ["healthy"] * 5 + ["benign"] * 2
    predicted = ["healthy", "healthy", "healthy", "benign", "metastasis", "benign", "healthy"]
    cases = select_gradcam_cases(labels, predicted, CLASSES, per_class=2, seed=3)
    by_kind = [(labels[i], ok) for i, ok in cases]
    assert by_kind == [("healthy", True)] * 2 + [("healthy", False)] * 2 + [("benign", True), ("benign", False)]
    assert all((predicted[i] == labels[i]) == ok for i, ok in cases)
    assert cases == select_gradcam_cases(labels, predicted, CLASSES, per_class=2, seed=3)


@pytest.mark.parametrize("model_name", ["tiny", "soft_threshold_net"])
def test_gradcam_map_has_the_input_size_and_values_in_unit_range(model_name):
    torch.manual_seed(0)
    model = TinyNet() if model_name == "tiny" else build(model_name, 3)
    model.eval()
    images = torch.rand(2, 1, *SIZE)
    maps = gradcam_maps(model, images, targets=[0, 2])
    assert list(maps) == list(model.gradcam_layers())
    for cam in maps.values():
        assert cam.shape == (2, *SIZE)
        assert cam.dtype == np.float32 and cam.min() >= 0.0 and cam.max() <= 1.0
    rgb = overlay(images[0, 0].numpy(), maps[next(iter(maps))][0])
    assert rgb.shape == (*SIZE, 3) and rgb.min() >= 0.0 and rgb.max() <= 1.0


@pytest.mark.slow  # builds the 44.6 M-parameter model: ~4 s alone, much more on a busy machine
def test_gradcam_gives_one_map_per_branch_of_the_multiscale_model():
    torch.manual_seed(0)
    model = build("multiscale", 3).eval()
    maps = gradcam_maps(model, torch.rand(1, 1, 32, 32), targets=[1])
    assert set(maps) == {"densenet", "vgg", "resnext"}
    assert all(m.shape == (1, 32, 32) for m in maps.values())


def test_evaluate_model_writes_metrics_predictions_confusion_and_gallery(tmp_path):
    torch.manual_seed(0)
    manifest = _cohort(tmp_path)
    images = manifest[(manifest["split"] == "test") & (manifest["synthetic"] == "false")]
    result = evaluate_model(TinyNet(), images, CLASSES, _cfg(), root=tmp_path, model_name="tiny")

    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    for name in MACRO_METRICS:
        assert {name, f"{name}_ci_low", f"{name}_ci_high"} <= set(metrics)
    assert metrics["n_images"] == len(images) == 26
    assert metrics["n_units"] == result.n_units == 13  # studies
    assert metrics["n_patients"] == 9

    predictions = pd.read_csv(tmp_path / "reports/eval/predictions.csv")
    assert list(predictions.columns) == ["image_id", "study_id", "view", "label", "predicted",
                                         "p_healthy", "p_metastasis", "p_benign"]
    np.testing.assert_allclose(predictions[["p_healthy", "p_metastasis", "p_benign"]].sum(axis=1), 1, atol=1e-5)
    confusion = pd.read_csv(tmp_path / "plots/eval/confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 13
    assert Image.open(tmp_path / "reports/eval/confusion_matrix.png").size[0] > 100
    gallery = Image.open(tmp_path / "reports/eval/gradcam_gallery.png")
    assert gallery.size[0] > 300  # a grid: a column per true class, a row each of correct and wrong cases
    assert len(list((tmp_path / "reports/eval/gradcam").glob("*.png"))) == 3
    assert "macro_f1" in (tmp_path / "reports/eval/report.md").read_text()
    assert result.fingerprint == json.loads((tmp_path / "reports/eval/summary.json").read_text())["fingerprint"]


def test_the_metrics_are_those_of_the_models_decision_rule_not_of_argmax(tmp_path):
    """A rule that always says benign: accuracy is benign's share and benign recall 1, AUC unchanged."""
    from bonescan.classifier_file import DecisionRule

    torch.manual_seed(0)
    manifest = _cohort(tmp_path)
    images = manifest[(manifest["split"] == "test") & (manifest["synthetic"] == "false")]
    evaluate_model(TinyNet(), images, CLASSES, _cfg(), root=tmp_path, model_name="tiny")
    argmax = json.loads((tmp_path / "metrics/eval.json").read_text())
    always_benign = DecisionRule("offsets", (0.0, 0.0, 50.0), chosen_on="test")
    torch.manual_seed(0)
    evaluate_model(TinyNet(), images, CLASSES, _cfg(), root=tmp_path, model_name="tiny", decision=always_benign)
    rule = json.loads((tmp_path / "metrics/eval.json").read_text())
    studies = pd.read_csv(tmp_path / "reports/eval/study_predictions.csv")
    assert set(studies["predicted"]) == {"benign"}
    assert rule["recall_benign"] == 1.0 and rule["recall_healthy"] == 0.0
    assert rule["accuracy"] == pytest.approx((studies["label"] == "benign").mean())
    assert rule["macro_auc"] == argmax["macro_auc"]


def test_no_patient_identifier_reaches_the_written_reports(tmp_path):
    manifest = _cohort(tmp_path)
    images = manifest[manifest["split"] == "test"]
    evaluate_model(TinyNet(), images, CLASSES, _cfg(gradcam_per_class=0), root=tmp_path)
    for path in [*(tmp_path / "reports").rglob("*.*"), *(tmp_path / "plots").rglob("*.*"),
                 tmp_path / "metrics/eval.json"]:
        if path.suffix in {".csv", ".json", ".md"}:
            text = path.read_text()
            assert "patient_id" not in text and "P1" not in text, path


def test_image_unit_scores_every_image(tmp_path):
    manifest = _cohort(tmp_path)
    images = manifest[manifest["synthetic"] == "false"]
    images = images[images["split"] == "test"]
    result = evaluate_model(TinyNet(), images, CLASSES, _cfg(unit="image", gradcam_per_class=0), root=tmp_path)
    assert result.n_units == result.n_images == 26
    assert not (tmp_path / "reports/eval/study_predictions.csv").exists()


def test_a_class_missing_from_the_test_split_is_reported_not_fatal(tmp_path):
    manifest = _cohort(tmp_path)
    images = manifest[(manifest["split"] == "test") & (manifest["label"] != "benign")]
    result = evaluate_model(TinyNet(), images, CLASSES, _cfg(gradcam_per_class=1), root=tmp_path)
    assert result.metrics["recall_benign"] is None
    assert any("benign" in note for note in result.notes)
    assert "benign" in (tmp_path / "reports/eval/report.md").read_text()


def _save_checkpoint(path, model: nn.Module, name: str) -> None:
    """The fine-tuning stage's checkpoint format (bonescan.train)."""
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": name,
            "num_classes": len(CLASSES),
            "in_chans": 1,
            "classes": list(CLASSES),
            "image_size": list(SIZE),
            "config": {},
        },
        path,
    )


def test_run_evaluate_end_to_end_from_a_saved_checkpoint(tmp_path):
    manifest = _cohort(tmp_path)
    write_manifest(manifest, tmp_path / "manifest.csv")
    torch.manual_seed(0)
    _save_checkpoint(tmp_path / "model.pt", build("soft_threshold_net", len(CLASSES)), "soft_threshold_net")
    result = run_evaluate(_cfg(), CLASSES, tmp_path / "manifest.csv", tmp_path / "model.pt", root=tmp_path)
    assert result.n_images == 26  # synthetic and train rows left out
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert result.metrics["accuracy_ci_low"] <= result.metrics["accuracy"] <= result.metrics["accuracy_ci_high"]


def test_run_evaluate_refuses_a_checkpoint_of_other_classes(tmp_path):
    manifest = _cohort(tmp_path)
    write_manifest(manifest, tmp_path / "manifest.csv")
    _save_checkpoint(tmp_path / "model.pt", build("soft_threshold_net", len(CLASSES)), "soft_threshold_net")
    with pytest.raises(ValueError, match="trained on classes"):
        run_evaluate(_cfg(), ("a", "b", "c"), tmp_path / "manifest.csv", tmp_path / "model.pt", root=tmp_path)


def test_evaluate_writes_curves_with_bands_calibration_and_the_training_curves(tmp_path):
    torch.manual_seed(0)
    manifest = _cohort(tmp_path)
    images = manifest[(manifest["split"] == "test") & (manifest["synthetic"] == "false")]
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_macro_f1": 0.2 * e} for e in (1, 2, 3)]
    result = evaluate_model(TinyNet(), images, CLASSES, _cfg(), root=tmp_path, history=history)

    for name in ("roc_png", "pr_png", "reliability_png", "training_curves_png"):
        assert Image.open(result.files[name]).size[0] > 300, name
    for kind, x in (("roc", "fpr"), ("pr", "recall")):
        files = sorted(p.name for p in (tmp_path / "plots/eval" / kind).glob("*.csv"))
        assert files == sorted(f"{c}.csv" for c in CLASSES)
        assert pd.read_csv(tmp_path / "plots/eval" / kind / "benign.csv").columns[0] == x
    calibration = pd.read_csv(tmp_path / "plots/eval/calibration.csv")
    assert {"confidence", "accuracy", "count"} <= set(calibration.columns)
    assert calibration["count"].sum() == result.n_units

    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    for name in ("ece", "brier"):
        assert {name, f"{name}_ci_low", f"{name}_ci_high"} <= set(metrics)
    assert "temperature" not in metrics, "temperature scaling is off by default"
    summary = json.loads((tmp_path / "reports/eval/summary.json").read_text())
    assert set(summary["curves"]["roc"]) == set(CLASSES)
    assert summary["curves"]["roc"]["healthy"]["area"] == pytest.approx(metrics["auc_healthy"], abs=1e-5)
    assert "ECE" in (tmp_path / "reports/eval/report.md").read_text()


def test_temperature_scaling_is_fitted_on_val_and_reported_next_to_the_raw_calibration(tmp_path):
    torch.manual_seed(0)
    manifest = _cohort(tmp_path)
    images = manifest[(manifest["split"] == "test") & (manifest["synthetic"] == "false")]
    val = images.assign(split="val", image_id=images["image_id"] + "v", study_id=images["study_id"] + "v")
    result = evaluate_model(TinyNet(), images, CLASSES, _cfg(temperature_scaling=True, gradcam_per_class=0),
                            root=tmp_path, calibration_images=val)

    assert result.calibrated is not None and result.calibrated.temperature > 0
    assert result.metrics["temperature"] == pytest.approx(result.calibrated.temperature, abs=1e-5)
    assert {"ece_calibrated", "brier_calibrated", "ece_calibrated_ci_low"} <= set(result.metrics)
    assert "fitted on val" in (tmp_path / "reports/eval/report.md").read_text()
    assert "accuracy_calibrated" in pd.read_csv(tmp_path / "plots/eval/calibration.csv").columns


def test_temperature_scaling_needs_validation_images_and_cannot_calibrate_the_val_split_itself(tmp_path):
    manifest = _cohort(tmp_path)
    images = manifest[(manifest["split"] == "test") & (manifest["synthetic"] == "false")]
    with pytest.raises(ValueError, match="validation images"):
        evaluate_model(TinyNet(), images, CLASSES, _cfg(temperature_scaling=True), root=tmp_path)
    with pytest.raises(ValueError, match="val split"):
        EvaluateConfig(split="val", temperature_scaling=True)


def test_gradcam_cases_are_indexed_by_class_outcome_and_layer(tmp_path):
    torch.manual_seed(0)
    manifest = _cohort(tmp_path)
    images = manifest[(manifest["split"] == "test") & (manifest["synthetic"] == "false")]
    evaluate_model(TinyNet(), images, CLASSES, _cfg(gradcam_per_class=2), root=tmp_path)
    cases = pd.read_csv(tmp_path / "reports/eval/gradcam/cases.csv")
    assert list(cases.columns) == ["image_id", "label", "predicted", "probability", "correct", "layer", "file"]
    assert (cases["correct"] == (cases["label"] == cases["predicted"])).all()
    assert cases.groupby(["label", "correct"]).size().max() <= 2
    assert all((tmp_path / "reports/eval/gradcam" / f).is_file() for f in cases["file"])


def test_the_gradcam_grid_puts_classes_across_and_outcomes_down(tmp_path):
    rng = np.random.default_rng(0)

    def case(label: str) -> GalleryItem:
        return GalleryItem(label, rng.random((48, 24), dtype=np.float32), f"true {label}",
                           {"conv": rng.random((48, 24), dtype=np.float32)})  # fmt: skip

    cells = {("correct", c): [case(c), case(c)] for c in CLASSES} | {("wrong", "benign"): [case("benign")]}
    grid = Image.open(save_case_grid(cells, ["correct", "wrong"], CLASSES, tmp_path / "grid.png"))
    assert grid.size[0] > grid.size[1], "six tall images across, two rows down: wider than high"
    with pytest.raises(ValueError, match="no images"):
        save_case_grid({}, ["correct", "wrong"], CLASSES, tmp_path / "none.png")
