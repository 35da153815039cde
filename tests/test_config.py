"""Specification of params.yaml loading: every key typed, unknown keys rejected by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bonescan.config import ConfigError, load_params, parse_params

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def project_params() -> dict:
    return yaml.safe_load(PROJECT_PARAMS.read_text())


def test_project_params_file_is_valid():
    params = load_params(PROJECT_PARAMS)
    assert params.base.classes == ("healthy", "metastasis", "benign")
    assert params.image_size("target") == tuple(params.base.image_size)


def test_unknown_key_is_rejected_with_its_dotted_name_and_a_suggestion():
    raw = project_params()
    raw["ingest"]["wrokers"] = 4
    with pytest.raises(ConfigError, match=r"ingest\.wrokers: unknown key \(did you mean 'workers'\?\)"):
        parse_params(raw)


def test_unknown_section_is_rejected():
    raw = project_params() | {"trian": {"epochs": 3}}
    with pytest.raises(ConfigError, match="trian: unknown key"):
        parse_params(raw)


def test_ill_typed_value_is_rejected_with_the_value():
    raw = project_params()
    raw["phantoms"]["patients"] = "many"
    with pytest.raises(ConfigError, match=r"phantoms\.patients: .*'many'"):
        parse_params(raw)


def test_split_ratios_must_sum_to_one():
    raw = project_params()
    raw["split"]["ratios"] = {"train": 0.7, "val": 0.2, "test": 0.2}
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_params(raw)


def test_a_cross_validation_ensemble_leaves_no_held_out_images_to_calibrate_on():
    raw = project_params()
    raw["clf"]["folds"] = 5
    raw["evaluate"]["temperature_scaling"] = True
    with pytest.raises(ConfigError, match="temperature_scaling fits on the val split, which clf.folds 5 trains on"):
        parse_params(raw)
    raw["evaluate"]["temperature_scaling"] = False
    assert parse_params(raw).clf.folds == 5

def test_class_proportions_must_sum_to_one():
    raw = project_params()
    raw["phantoms"]["class_proportions"]["benign"] = 0.5
    with pytest.raises(ConfigError, match="class_proportions"):
        parse_params(raw)


def test_a_target_dataset_is_required():
    raw = project_params()
    del raw["datasets"]["target"]
    with pytest.raises(ConfigError, match="target"):
        parse_params(raw)


def test_the_target_classes_must_be_the_classifier_classes_in_the_same_order():
    """A mismatch would otherwise surface only in augment, after both GAN stages."""
    raw = project_params()
    raw["datasets"]["target"]["classes"] = ["healthy", "benign", "metastasis"]
    with pytest.raises(ConfigError, match=r"base\.classes .* and datasets\.target\.classes .* differ"):
        parse_params(raw)


def test_unknown_dataset_name_lists_the_configured_ones():
    params = load_params(PROJECT_PARAMS)
    with pytest.raises(ConfigError, match=r"unknown dataset 'bone'.*\['source', 'target'\]"):
        params.dataset("bone")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: parameter file not found"):
        load_params(tmp_path / "nope.yaml")


def test_config_objects_are_immutable():
    params = load_params(PROJECT_PARAMS)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError subclass
        params.base.seed = 1


def test_typo_inside_a_dataset_is_named_with_its_dataset():
    raw = project_params()
    raw["datasets"]["source"]["raw_dri"] = "x"
    with pytest.raises(ConfigError, match=r"datasets\.source\.raw_dri: unknown key \(did you mean 'raw_dir'\?\)"):
        parse_params(raw)


def test_the_gan_paper_preset_restores_the_papers_optimisation_and_keeps_the_other_choices():
    raw = project_params()
    raw["gan"]["preset"] = "paper"
    gan = parse_params(raw).gan
    assert (gan.train.batch_size, gan.pretrain.epochs, gan.finetune.epochs) == (2, 500, 500)  # Sec. 4.2
    assert gan.train.lr == 2e-4 and gan.train.d_fake_class_loss and gan.train.mode_seeking == 0  # Eq. 2-4
    assert gan.model.image_size is None  # full size: base.image_size
    assert gan.train.diffaugment == raw["gan"]["train"]["diffaugment"]  # beyond-paper switches stay the user's
    demo = load_params(PROJECT_PARAMS).gan
    assert not demo.train.d_fake_class_loss and demo.train.mode_seeking > 0


def _tiny_target(out_dir: str = "tgt") -> dict:
    return {"raw_dir": "r", "interim_dir": "i", "reports_dir": "rep", "metrics_dir": "m", "out_dir": out_dir,
            "classes": ["healthy", "metastasis", "benign"]}  # fmt: skip


def test_paths_another_stage_reads_are_derived_from_the_stage_that_writes_them():
    params = parse_params({"datasets": {"target": _tiny_target()}, "clf": {"out_dir": "mdl"},
                           "augment": {"out_dir": "aug"}, "evaluate": {"reports_dir": "ev"}})  # fmt: skip
    assert params.augment.manifest == "tgt/manifest.csv" == str(params.manifest("target"))
    assert params.clf.manifest == "aug/manifest.csv" == str(params.augmented_manifest)
    assert params.promote.model_file == "mdl/model.pt" == str(params.classifier_file)
    assert params.promote.eval_summary == "ev/summary.json" == str(params.eval_summary)


def test_a_restated_path_that_disagrees_fails_naming_both_keys():
    with pytest.raises(ConfigError, match=r"promote\.model_file is 'x/model\.pt' but clf\.out_dir makes it"):
        parse_params({"datasets": {"target": _tiny_target()}, "promote": {"model_file": "x/model.pt"}})
    same = parse_params({"datasets": {"target": _tiny_target()}, "augment": {"manifest": "./tgt/manifest.csv"}})
    assert same.augment.manifest == "./tgt/manifest.csv"  # the same file, spelled otherwise, is fine


def test_the_key_that_sets_a_datasets_image_size_is_its_own_else_base():
    raw = project_params()
    raw["datasets"]["source"]["image_size"] = [64, 64]
    params = parse_params(raw)
    assert params.image_size_key("target") == "base.image_size"
    assert params.image_size_key("source") == "datasets.source.image_size"


def test_a_gan_size_too_small_for_four_halvings_names_its_key():
    raw = project_params()
    raw["gan"]["model"]["image_size"] = [8, 48]
    with pytest.raises(ConfigError, match=r"gan\.model\.image_size: .*at least 16"):
        parse_params(raw)


def test_dotted_overrides_set_nested_keys_without_touching_the_original():
    from bonescan.config import apply_overrides, override_text

    raw = project_params()
    planned = apply_overrides(raw, {"clf.finetune.batch_size": 64, "datasets.target.image_size": [32, 32]})
    assert parse_params(planned).clf.finetune.batch_size == 64
    assert parse_params(planned).image_size("target") == (32, 32)
    assert raw["clf"]["finetune"]["batch_size"] == 16
    assert [override_text(v) for v in ([32, 32], None, "cpu")] == ["[32, 32]", "null", "cpu"]


def test_every_sampling_name_the_config_accepts_is_one_the_loader_knows():
    from typing import get_args

    from bonescan.config import SAMPLING_POWER, Sampling

    assert set(get_args(Sampling)) == {"uniform", *SAMPLING_POWER}
