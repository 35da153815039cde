"""Specification of the MLflow registry: a version per checkpoint, champion/challenger by alias, rollback,
a self-contained pyfunc model that predicts what the checkpoint predicts, and a model card per version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bonescan import classifier_file, tracking
from bonescan.checkpoint import load_checkpoint, save_checkpoint
from bonescan.cli import main
from bonescan.config import IngestConfig, Preprocessing, PromoteConfig
from bonescan.model_registry import (
    CardSources,
    current_aliases,
    example_input,
    promote,
    rollback,
    stage,
)
from bonescan.model_registry.stage import TAG_DIGEST, logged_model_id, version_metrics
from tests.classifier_files import write_classifier

CLASSES = ["healthy", "metastasis", "benign"]
SIZE = (32, 16)
NAME = "bonescan-classifier"
CFG = PromoteConfig(min_improvement=0.01, min_class_recall=0.3, n_boot=200)
SPLIT = "5e4e27ab8b4a43c6"


@pytest.fixture
def project(mlflow_store):
    return mlflow_store


def train_and_evaluate(
    root: Path, seed: int, macro_f1: float, recalls=(0.8, 0.7, 0.6), split: str = SPLIT
) -> Path:
    """What clf_finetune and evaluate leave behind: a checkpoint (weights from `seed`) and its metrics."""
    preprocessing = Preprocessing(ingest=IngestConfig(crop_margin=0.04), modalities=("NM",), split_views=True,
                                  image_size=SIZE)  # fmt: skip
    path = root / "models" / "classifier" / "model.pt"
    record = write_classifier(path, CLASSES, SIZE, seed=seed, preprocessing=preprocessing)
    metrics = {"accuracy": macro_f1 + 0.05, "macro_f1": macro_f1, "macro_f1_ci_low": macro_f1 - 0.1,
               "macro_f1_ci_high": macro_f1 + 0.1, "n_units": 45, "n_patients": 24}  # fmt: skip
    for name, recall in zip(CLASSES, recalls, strict=True):
        metrics |= {
            f"recall_{name}": recall,
            f"recall_{name}_ci_low": recall / 2,
            f"recall_{name}_ci_high": 1.0,
        }
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text(json.dumps(metrics))
    (root / "reports" / "eval").mkdir(parents=True, exist_ok=True)
    summary = {
        "unit": "study",
        "n_units": 45,
        "n_patients": 24,
        "n_boot": 200,
        "ci": 0.95,
        "fingerprint": split,
        "model_digest": classifier_file.model_digest(record),  # evaluate names the model it scored
    }
    (root / "reports" / "eval" / "summary.json").write_text(json.dumps(summary))
    return path


def run(root: Path, **kwargs):
    return promote(CFG, "macro_f1", root, **kwargs)


def versions(root: Path):
    return tracking.client(root).search_model_versions(f"name = '{NAME}'")


def test_first_model_becomes_champion_and_challenger(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    result = run(project)
    assert result.promoted and result.version == "1" and result.new_version
    assert "no champion yet" in result.reason
    assert current_aliases(tracking.client(project), NAME) == {"champion": "1", "challenger": "1"}
    report = json.loads((project / CFG.report).read_text())
    assert report["action"] == "promote" and report["aliases_after"] == {"challenger": "1", "champion": "1"}
    (version,) = versions(project)
    assert (
        version.tags["bonescan.test_split"] == SPLIT
        and version.tags["bonescan.promotion.decision"] == "promote"
    )


def test_a_version_is_a_logged_model_with_its_metrics_and_params_and_only_a_handful_of_tags(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    result = run(project)
    registry = tracking.client(project)
    (version,) = versions(project)
    assert set(version.tags) == {"bonescan.checkpoint_digest", "bonescan.test_split", "classes",
                                 "bonescan.promotion.decision", "bonescan.promotion.reason"}  # fmt: skip
    assert json.loads(version.tags["classes"]) == CLASSES
    model = registry.get_logged_model(logged_model_id(registry, version))
    assert model.name == "classifier" and model.source_run_id == result.run_id and model.status == "READY"
    metrics = {m.key: m.value for m in model.metrics}
    assert metrics["macro_f1"] == pytest.approx(0.6) and metrics["recall_benign"] == pytest.approx(0.6)
    assert (
        model.params["clf.model"] == "soft_threshold_net"
        and model.params["model_name"] == "soft_threshold_net"
    )
    assert model.tags["bonescan.checkpoint_digest"] == result.checkpoint_digest
    assert "dvc_lock_sha256" in model.tags
    assert registry.get_run(result.run_id).outputs.model_outputs[0].model_id == model.model_id
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": NAME, "version": "1"}]


def test_the_test_split_is_the_runs_dataset_input_with_its_fingerprint_and_pseudonyms_only(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    manifest = pd.DataFrame({
        "image_id": ["i1", "i2", "i3", "i4"], "patient_id": ["pA", "pA", "pB", "pC"],
        "study_id": ["s1", "s1", "s2", "s3"], "view": ["anterior", "posterior", "anterior", "anterior"],
        "label": ["healthy", "healthy", "benign", "metastasis"], "split": ["test", "test", "test", "train"],
        "synthetic": [False, False, False, False], "source": ["dicom:NM"] * 4,
        "path": [f"data/processed/images/secret-name-{i}.png" for i in range(4)],
    })  # fmt: skip
    manifest.to_csv(project / "manifest.csv", index=False)
    result = run(project, sources=CardSources(manifest=project / "manifest.csv"))
    registry = tracking.client(project)
    (dataset_input,) = registry.get_run(result.run_id).inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert (
        dataset.name == "test" and dataset.digest == SPLIT
    )  # evaluate's fingerprint: what promotion compares
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "test"
    assert json.loads(dataset.profile)["num_rows"] == 3  # the test rows, not the train row
    columns = [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]]
    assert columns == ["image_id", "patient_id", "study_id", "view", "label"]
    assert "secret-name" not in dataset.source and "secret-name" not in dataset.schema
    (version,) = versions(project)
    linked = [
        m
        for m in registry.get_logged_model(logged_model_id(registry, version)).metrics
        if m.key == "macro_f1"
    ]
    assert [(m.dataset_name, m.dataset_digest) for m in linked] == [("test", SPLIT)]


def test_a_rerun_on_the_same_weights_refreshes_the_logged_models_metrics(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    run(project)
    train_and_evaluate(project, seed=0, macro_f1=0.65)  # same weights, evaluate re-scored them
    assert not run(project).new_version
    (version,) = versions(project)
    metrics, split = version_metrics(tracking.client(project), version)
    assert metrics["macro_f1"] == pytest.approx(0.65) and split == SPLIT


def test_a_champion_registered_with_eval_tags_is_still_compared(project, monkeypatch):
    """Versions registered before logged models carry their test metrics as `eval.*` tags."""
    train_and_evaluate(project, seed=0, macro_f1=0.8)
    run(project)
    registry = tracking.client(project)
    (old,) = versions(project)
    registry.set_model_version_tag(NAME, old.version, "eval.macro_f1", "0.9")
    for m in ("recall_healthy", "recall_metastasis", "recall_benign"):
        registry.set_model_version_tag(NAME, old.version, f"eval.{m}", "0.8")
    old = registry.get_model_version(NAME, old.version)
    monkeypatch.setattr(
        stage, "logged_model_id", lambda mlflow, version: None
    )  # registered by the earlier bonescan
    assert version_metrics(registry, old)[0]["macro_f1"] == pytest.approx(0.9)


def test_a_worse_challenger_stays_challenger(project):
    train_and_evaluate(project, seed=0, macro_f1=0.8)
    run(project)
    train_and_evaluate(project, seed=1, macro_f1=0.7)
    result = run(project)
    assert not result.promoted and result.version == "2"
    assert "below the required" in result.reason
    assert current_aliases(tracking.client(project), NAME) == {"champion": "1", "challenger": "2"}


def test_a_better_challenger_is_promoted_and_the_old_champion_kept_as_previous(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    run(project)
    train_and_evaluate(project, seed=1, macro_f1=0.8)
    result = run(project)
    assert result.promoted and result.champion_value == pytest.approx(0.6)
    assert current_aliases(tracking.client(project), NAME) == {
        "champion": "2", "challenger": "2", "previous-champion": "1"
    }  # fmt: skip


def test_a_challenger_abandoning_a_class_is_not_promoted_despite_a_better_score(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    run(project)
    train_and_evaluate(project, seed=1, macro_f1=0.9, recalls=(0.9, 0.9, 0.1))
    result = run(project)
    assert not result.promoted
    assert "benign 0.100" in result.reason  # the floor is 0.3; the interval bounds are not recalls
    assert current_aliases(tracking.client(project), NAME)["champion"] == "1"


def test_scores_on_a_different_test_split_never_promote(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    run(project)
    train_and_evaluate(project, seed=1, macro_f1=0.9, split="another-split")
    result = run(project)
    assert not result.promoted and "different test split" in result.reason


def test_rerunning_on_the_same_checkpoint_reuses_its_version(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    first = run(project)
    again = run(project)
    assert again.version == first.version == "1" and not again.new_version
    assert "already the champion" in again.reason
    assert len(versions(project)) == 1
    assert current_aliases(tracking.client(project), NAME) == {"champion": "1", "challenger": "1"}


def test_a_retraining_that_reproduces_the_weights_reuses_the_version_whatever_its_timings(project):
    path = train_and_evaluate(project, seed=0, macro_f1=0.6)
    first = run(project)
    retrained = load_checkpoint(path) | {
        "history": [{"epoch": 1, "images_per_s": 123.4}],
        "best": {"seconds": 9.9},
    }
    save_checkpoint(retrained, path)  # a deterministic re-run: same weights, other wall-clock figures
    again = run(project)
    assert again.version == first.version and not again.new_version and len(versions(project)) == 1
    train_and_evaluate(project, seed=1, macro_f1=0.6)  # other weights: another version
    assert run(project).new_version and len(versions(project)) == 2


def test_rollback_restores_the_previous_champion_and_a_rerun_does_not_undo_it(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    run(project)
    train_and_evaluate(project, seed=1, macro_f1=0.8)
    run(project)
    result = rollback(CFG, project)
    assert result.action == "rollback" and result.version == "1" and result.champion_before == "2"
    assert current_aliases(tracking.client(project), NAME) == {"champion": "1", "challenger": "2"}
    assert json.loads((project / CFG.report).read_text())["action"] == "rollback"
    again = run(project)  # the pipeline runs promote again on the rolled-back checkpoint
    assert not again.promoted and "rolled back" in again.reason
    assert current_aliases(tracking.client(project), NAME)["champion"] == "1"
    with pytest.raises(ValueError, match="no 'previous-champion'"):
        rollback(CFG, project)


def test_a_second_rollback_goes_one_more_step_back(project):
    for seed, f1 in enumerate((0.5, 0.6, 0.7)):
        train_and_evaluate(project, seed=seed, macro_f1=f1)
        run(project)
    assert current_aliases(tracking.client(project), NAME)["previous-champion"] == "2"
    rollback(CFG, project)
    assert current_aliases(tracking.client(project), NAME)["previous-champion"] == "1"
    rollback(CFG, project)
    assert current_aliases(tracking.client(project), NAME) == {"champion": "1", "challenger": "3"}


def test_dry_run_decides_but_changes_nothing(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    result = run(project, dry_run=True)
    assert result.dry_run and result.promoted and result.version is None
    assert versions(project) == [] and current_aliases(tracking.client(project), NAME) == {}
    assert not (project / CFG.report).exists() and not (project / CFG.model_card).exists()


def test_the_registered_pyfunc_predicts_the_checkpoints_probabilities(project):
    import mlflow.pyfunc

    checkpoint = train_and_evaluate(project, seed=0, macro_f1=0.6)
    run(project)
    registry = tracking.client(project)
    local = Path(registry.get_model_version_download_uri(NAME, "1").removeprefix("file://"))
    assert (local / "artifacts" / "model.pt").read_bytes() == checkpoint.read_bytes()
    assert (local / "code" / "bonescan" / "classifier_file.py").is_file()  # the code that loads it
    assert {"requirements.txt", "input_example.json", "MLmodel"} <= {p.name for p in local.iterdir()}
    assert (local / "model_card" / "model_card.md").is_file()

    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert pyfunc.metadata.get_input_schema().input_names() == ["image", "path", "content"]
    images = np.concatenate([example_input(1, SIZE), np.random.default_rng(0).random((2, 1, *SIZE))]).astype(
        np.float32
    )
    got = pyfunc.predict(pd.DataFrame({"image": list(images)}))  # (1, H, W) per row
    model, _ = classifier_file.load(checkpoint)
    with torch.inference_mode():
        expected = torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()
    assert list(got.columns) == [*CLASSES, "prediction", "n_views", "reason"]
    assert list(got["reason"]) == ["", "", ""] and list(got["n_views"]) == [1, 1, 1]
    np.testing.assert_allclose(got[CLASSES].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert list(got["prediction"]) == [CLASSES[i] for i in expected.argmax(axis=1)]


def test_the_model_is_logged_under_the_pipeline_runs_promote_stage(project, monkeypatch):
    parent = tracking.start_pipeline_run(project)
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.run_id)
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    result = run(project)
    (version,) = versions(project)
    stage = tracking.client(project).get_run(version.run_id)
    assert version.run_id == result.run_id
    assert (
        stage.data.tags["mlflow.parentRunId"] == parent.run_id
        and stage.data.tags["bonescan.stage"] == "promote"
    )
    assert stage.data.tags["bonescan.promotion.decision"] == "promote"
    assert version.tags[TAG_DIGEST] == result.checkpoint_digest


def test_model_card_has_counts_metrics_and_decision_but_no_identifiers(project):
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    manifest = pd.DataFrame({
        "image_id": [f"img{i}" for i in range(6)],
        "patient_id": ["PATIENT-A", "PATIENT-A", "PATIENT-B", "PATIENT-B", "PATIENT-C", "PATIENT-D"],
        "study_id": ["s1", "s1", "s2", "s2", "s3", "s4"], "view": ["anterior", "posterior"] * 3,
        "label": ["healthy", "healthy", "benign", "benign", "metastasis", "healthy"],
        "split": ["train", "train", "train", "train", "test", "test"], "synthetic": [False] * 6,
        "source": ["dicom:NM"] * 6, "path": [f"data/processed/images/img{i}.png" for i in range(6)],
    })  # fmt: skip
    manifest.to_csv(project / "manifest.csv", index=False)
    (project / "phi_scan.json").write_text(json.dumps({"files": 6, "leaks": 0, "details": []}))
    run(project, sources=CardSources(manifest=project / "manifest.csv", phi_scan=project / "phi_scan.json"))
    card = (project / CFG.model_card).read_text()
    assert "Not a medical device and not for diagnosis" in card
    assert "| train | 2 | 0 | 2 | 4 | 2 |" in card  # healthy, metastasis, benign, images, patients
    assert "| macro_f1 | 0.600 | 0.500 - 0.700 |" in card
    assert "found 0 leak(s) in 6 anonymized file(s)" in card
    assert (
        "modalities NM, anterior + posterior views" in card and "with margin 0.04" in card
    )  # from the checkpoint
    assert "Decision: **promote**" in card and "## Limitations" in card
    assert not any(s in card for s in ("PATIENT-", "img0", "s1 ", "data/processed/images"))


def test_cli_promote_dry_run_and_rollback_without_history(project, monkeypatch, capsys):
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    shutil.copy(params, project / "params.yaml")
    monkeypatch.chdir(project)
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    assert main(["promote", "--dry-run"]) == 0
    assert "dry run, nothing changed" in capsys.readouterr().err
    assert main(["promote", "--rollback"]) == 1
    assert "no 'previous-champion' version" in capsys.readouterr().err
    assert main(["promote"]) == 0
    assert json.loads(Path("reports/promotion.json").read_text())["aliases_after"]["champion"] == "1"


def test_metrics_of_another_model_are_never_promoted(project):
    """A clf-finetune without evaluate leaves the last model's metrics next to a new model."""
    train_and_evaluate(project, seed=0, macro_f1=0.6)
    write_classifier(
        project / "models" / "classifier" / "model.pt", CLASSES, SIZE, seed=5
    )  # retrained, not scored
    with pytest.raises(ValueError, match="were not computed for this model"):
        run(project)
    assert versions(project) == [] and not (project / "reports" / "promotion.json").exists()


def test_a_store_error_is_not_read_as_no_champion(project, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    train_and_evaluate(project, seed=0, macro_f1=0.6)
    run(project)
    train_and_evaluate(project, seed=1, macro_f1=0.1)  # worse: must never replace the champion

    def locked(self, name):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(MlflowClient, "get_registered_model", locked)
    with pytest.raises(MlflowException, match="database is locked"):
        run(project)
    monkeypatch.undo()
    assert current_aliases(tracking.client(project), NAME) == {"champion": "1", "challenger": "1"}
    assert len(versions(project)) == 1


def test_bonescan_predict_finds_the_logged_model_by_alias_and_by_its_runs_uri(project, tmp_path):
    from bonescan.predict import resolve_model

    checkpoint = train_and_evaluate(project, seed=0, macro_f1=0.6)
    result = run(project)
    for n, uri in enumerate((f"models:/{NAME}@champion", f"runs:/{result.run_id}/classifier")):
        local, source = resolve_model(uri, tmp_path / f"dl{n}", project)
        assert local.read_bytes() == checkpoint.read_bytes() and source.run_id == result.run_id


# --------------------------------------------------------------------------- paired comparison


def write_study_predictions(root: Path, wrong: int, studies: int = 90) -> None:
    """evaluate's per-study predictions: the first `wrong` studies get the wrong class, the rest the right one."""
    labels = [CLASSES[i % 3] for i in range(studies)]
    rows = []
    for i, label in enumerate(labels):
        k = (CLASSES.index(label) + (1 if i < wrong else 0)) % 3
        prob = np.full(3, 0.1)
        prob[k] = 0.8
        rows.append(
            {
                "study_id": f"s{i:03d}",
                "label": label,
                "n_views": 2,
                **dict(zip([f"p_{c}" for c in CLASSES], prob, strict=True)),
            }
        )
    pd.DataFrame(rows).to_csv(root / "reports" / "eval" / "study_predictions.csv", index=False)


def test_a_gain_within_the_test_splits_noise_does_not_replace_the_champion(project):
    """Two more studies right out of 90 clears the 0.01 margin, not the paired bootstrap's lower bound."""
    train_and_evaluate(project, seed=0, macro_f1=0.70)
    write_study_predictions(project, wrong=20)
    assert run(project).promoted
    train_and_evaluate(project, seed=1, macro_f1=0.73)
    write_study_predictions(project, wrong=18)
    result = run(project)
    assert not result.promoted and "noise" in result.reason and "paired difference" in result.reason
    assert current_aliases(tracking.client(project), NAME)["champion"] == "1"


def test_a_gain_beyond_the_noise_is_promoted_with_the_paired_interval_in_the_reason(project):
    train_and_evaluate(project, seed=0, macro_f1=0.60)
    write_study_predictions(project, wrong=30)
    run(project)
    train_and_evaluate(project, seed=1, macro_f1=0.90)
    write_study_predictions(project, wrong=3)
    result = run(project)
    assert result.promoted and "95 % CI [+" in result.reason


def test_without_the_champions_predictions_the_margin_rule_decides_and_says_so(project):
    train_and_evaluate(project, seed=0, macro_f1=0.60)
    run(project)  # no study predictions: an older evaluate, nothing stored to pair with
    train_and_evaluate(project, seed=1, macro_f1=0.80)
    write_study_predictions(project, wrong=3)
    result = run(project)
    assert result.promoted and "margin rule" in result.reason
