"""Specification of the saved classifier: a versioned record that round-trips, names its format when it
cannot be read, keys the model digest on weights + input contract + decision rule, and applies its rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bonescan import classifier_file
from bonescan.classifier_file import ClassifierFile, ClassifierFormatError, DecisionRule
from bonescan.config import IngestConfig, Preprocessing
from bonescan.models import build
from tests.classifier_files import write_classifier

CLASSES = ("healthy", "metastasis", "benign")
SIZE = (32, 16)
PRE = Preprocessing(ingest=IngestConfig(crop_margin=0.05), modalities=("NM",), split_views=True, image_size=SIZE)


def test_a_saved_classifier_loads_back_as_the_same_record_and_the_same_function(tmp_path):
    record = write_classifier(tmp_path / "model.pt", CLASSES, SIZE, seed=3, preprocessing=PRE)
    model, loaded = classifier_file.load(tmp_path / "model.pt")

    assert not model.training
    assert (loaded.model_name, loaded.classes, loaded.image_size, loaded.preprocessing) == (
        record.model_name, CLASSES, SIZE, PRE
    )  # fmt: skip
    assert classifier_file.model_digest(loaded) == classifier_file.model_digest(record)
    x = torch.rand(2, 1, *SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), record.build()(x), rtol=0, atol=0)


def test_the_file_is_versioned_and_stores_the_image_size_once(tmp_path):
    write_classifier(tmp_path / "model.pt", CLASSES, SIZE, preprocessing=PRE)
    state = torch.load(tmp_path / "model.pt", weights_only=True)  # plain tensors and types only
    assert state["format"] == classifier_file.FORMAT and state["format_version"] == classifier_file.FORMAT_VERSION
    assert state["image_size"] == list(SIZE) and "image_size" not in state["preprocessing"]


def test_a_format_1_file_of_earlier_bonescan_loads_with_its_preprocessing(tmp_path):
    torch.manual_seed(0)
    model = build("soft_threshold_net", len(CLASSES))
    legacy = {  # what train._model_record wrote: no format key, image size inside preprocessing too
        "model": model.state_dict(), "model_name": "soft_threshold_net", "num_classes": 3, "in_chans": 1,
        "classes": list(CLASSES), "image_size": list(SIZE), "normed_head": False, "stage": "finetune",
        "config": {"model": "soft_threshold_net"}, "preprocessing": PRE.model_dump(mode="json"),
    }  # fmt: skip
    torch.save(legacy, tmp_path / "old.pt")
    loaded = classifier_file.read(tmp_path / "old.pt")
    assert loaded.preprocessing == PRE and loaded.decision == DecisionRule() and loaded.classes == CLASSES


def test_a_file_of_a_newer_format_fails_with_a_message_naming_the_version_found(tmp_path):
    write_classifier(tmp_path / "model.pt", CLASSES, SIZE)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save({**state, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(ClassifierFormatError, match="format version 99"):
        classifier_file.read(tmp_path / "future.pt")


def test_a_file_that_is_not_a_classifier_is_named_as_such(tmp_path):
    torch.save({"generator": {}, "arch": "mu_acgan"}, tmp_path / "gan.pt")
    with pytest.raises(ClassifierFormatError, match="not a bonescan classifier file"):
        classifier_file.read(tmp_path / "gan.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(ClassifierFormatError, match="junk.pt"):
        classifier_file.read(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        classifier_file.read(tmp_path / "absent.pt")


def test_the_digest_follows_weights_contract_and_rule_not_history_or_config(tmp_path):
    record = write_classifier(tmp_path / "model.pt", CLASSES, SIZE, preprocessing=PRE)
    digest = classifier_file.model_digest(record)
    same = ClassifierFile(**{**record.__dict__, "history": ({"images_per_s": 99.0},), "config": {"lr": 1}})
    assert classifier_file.model_digest(same) == digest
    other_size = ClassifierFile(**{**record.__dict__, "image_size": (16, 8), "preprocessing": None})
    assert classifier_file.model_digest(other_size) != digest
    ruled = record.with_decision(DecisionRule("offsets", (0.0, 0.5, 0.0), chosen_on="val"))
    assert classifier_file.model_digest(ruled) != digest
    changed = dict(record.state_dict)
    key = next(k for k in changed if k.endswith("num_batches_tracked"))
    changed[key] = changed[key] + 1  # a 0-d buffer counts too
    assert classifier_file.model_digest(ClassifierFile(**{**record.__dict__, "state_dict": changed})) != digest


def test_preprocessing_for_another_size_than_the_model_is_refused():
    with pytest.raises(ValueError, match="preprocessing makes"):
        ClassifierFile("soft_threshold_net", CLASSES, 1, (64, 32), False, {}, preprocessing=PRE)


def test_the_decision_rule_is_argmax_by_default_and_shifts_log_probabilities_with_offsets():
    prob = np.array([[0.6, 0.3, 0.1], [0.45, 0.4, 0.15]])
    assert list(DecisionRule().predict(prob)) == [0, 0]
    favour_metastasis = DecisionRule("offsets", (0.0, np.log(1.5), 0.0))
    assert list(favour_metastasis.predict(prob)) == [0, 1]
    with pytest.raises(ValueError, match="3 classes"):
        DecisionRule("offsets", (0.0, 1.0)).predict(prob)


def test_the_decision_rule_survives_the_file(tmp_path):
    record = write_classifier(tmp_path / "model.pt", CLASSES, SIZE)
    ruled = record.with_decision(DecisionRule("offsets", (0.0, 0.25, -0.5), chosen_on="val balanced accuracy"))
    classifier_file.save(ruled, tmp_path / "ruled.pt")
    assert classifier_file.read(tmp_path / "ruled.pt").decision == ruled.decision


def test_test_time_flips_survive_the_file_and_change_the_digest_only_when_on(tmp_path):
    record = write_classifier(tmp_path / "model.pt", CLASSES, SIZE)
    assert not record.test_time_flip and "test_time_flip" not in record.identity()
    flipped = ClassifierFile(**{**record.__dict__, "test_time_flip": True})
    classifier_file.save(flipped, tmp_path / "flipped.pt")
    assert classifier_file.read(tmp_path / "flipped.pt").test_time_flip
    assert classifier_file.read(tmp_path / "model.pt").test_time_flip is False
    assert classifier_file.model_digest(flipped) != classifier_file.model_digest(record)


def test_test_time_flips_average_the_probabilities_of_an_image_and_its_mirror(tmp_path):
    record = write_classifier(tmp_path / "model.pt", CLASSES, SIZE, seed=5)
    model = record.build()
    torch.manual_seed(0)
    images = torch.rand(3, 1, *SIZE)
    dataset = list(zip(images, torch.zeros(3, dtype=torch.long), strict=True))
    plain = classifier_file.predict_probabilities(model, dataset)
    mirrored = classifier_file.predict_probabilities(model, [(x.flip(-1), y) for x, y in dataset])
    both = classifier_file.predict_probabilities(model, dataset, test_time_flip=True)
    np.testing.assert_allclose(both, (plain + mirrored) / 2, rtol=1e-6)
    assert not np.allclose(both, plain)  # the net is not mirror-symmetric, so the flag changes something
    np.testing.assert_allclose(both.sum(axis=1), 1.0, rtol=1e-6)


def test_an_ensemble_record_predicts_the_mean_of_its_members_probabilities_and_survives_the_file(tmp_path):
    first = write_classifier(tmp_path / "a.pt", CLASSES, SIZE, seed=1)
    second = write_classifier(tmp_path / "b.pt", CLASSES, SIZE, seed=2)
    ensemble = first.with_members([second.state_dict])
    classifier_file.save(ensemble, tmp_path / "ensemble.pt")
    model, loaded = classifier_file.load(tmp_path / "ensemble.pt")

    assert isinstance(model, classifier_file.MeanOfMembers) and len(loaded.members) == 1
    assert (model.in_chans, model.num_classes) == (1, len(CLASSES)) and model.gradcam_layers()
    torch.manual_seed(0)
    dataset = [(x, 0) for x in torch.rand(4, 1, *SIZE)]
    mean = (classifier_file.predict_probabilities(first.build(), dataset)
            + classifier_file.predict_probabilities(second.build(), dataset)) / 2  # fmt: skip
    np.testing.assert_allclose(classifier_file.predict_probabilities(model, dataset), mean, rtol=1e-5, atol=1e-7)
    digests = {classifier_file.model_digest(r) for r in (first, second, ensemble, loaded)}
    assert len(digests) == 3  # the ensemble is its own model; the file keeps its digest
