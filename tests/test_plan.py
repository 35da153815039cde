"""Specification of `bonescan plan`: params overrides derived from the ingested data and the machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bonescan.cli import main
from bonescan.config import ConfigError, apply_overrides, parse_params
from bonescan.plan import (
    DatasetFingerprint,
    MachineFingerprint,
    Plan,
    PlanEntry,
    dataset_fingerprint,
    make_plan,
    plan_image_size,
    plan_threads,
    render_plan,
    validate_plan,
    write_plan,
)
from tests.png_cohorts import write_cohort

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
CLASSES = ["healthy", "metastasis", "benign"]
TWO_CPUS = MachineFingerprint(cpus=2, load_average=0.3)
H100 = MachineFingerprint(cpus=16, load_average=0.3, cuda_devices=1, cuda_name="NVIDIA H100", cuda_memory_gib=80.0)
DEMO_SPLIT = {"train": {"healthy": 324, "metastasis": 230, "benign": 98},  # metrics/split.json of the demo
              "val": {"healthy": 48, "metastasis": 42, "benign": 16},
              "test": {"healthy": 92, "metastasis": 60, "benign": 32}}  # fmt: skip


def raw_params(**target: object) -> dict:
    """The project's params.yaml with the target dataset under the test's folder (paths relative to it)."""
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    raw["datasets"]["target"].update(
        raw_dir="raw", interim_dir="interim", out_dir="processed", reports_dir="reports", metrics_dir="metrics",
        **target,
    )  # fmt: skip
    return raw


def image_folder_cohort(root: Path, size: tuple[int, int], per_class: int = 4) -> dict:
    """Raw class folders of 8-bit PNGs of `size` plus an ingested manifest; returns the params."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        for i in range(per_class):
            path = root / "raw" / name / f"{name}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(path)
    counts = {"train": dict.fromkeys(CLASSES, per_class), "val": dict.fromkeys(CLASSES, 1)}
    write_cohort(root, "processed", CLASSES, counts)
    return raw_params(format="image_folder", labels=None, modalities=[], split_views=False)


def whole_body_cohort(root: Path, studies: int = 3) -> dict:
    """Two-frame 1024 x 256 NM studies where ingest keeps its anonymized files, plus a manifest."""
    from bonescan.dicom.phantom import make_nm_dataset, sample_patient_identity, sample_study_identity

    rng = np.random.default_rng(1)
    for i in range(studies):
        frames = rng.poisson(3.0, (2, 1024, 256)).astype(np.uint16)
        patient, study = sample_patient_identity(0, "bone", i), sample_study_identity(0, "bone", i, 0, i)
        ds = make_nm_dataset(frames, ["anterior", "posterior"], patient, study)
        path = root / "interim" / "dicom" / f"{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    write_cohort(root, "processed", CLASSES, {"train": dict.fromkeys(CLASSES, 2), "test": dict.fromkeys(CLASSES, 1)})
    return raw_params()


def fingerprint(per_split: dict, native: tuple[int, int] | None = (1024, 256), synthetic: int | None = None):
    return DatasetFingerprint("target", "dicom", tuple(CLASSES), per_split, patients=100, studies=150,
                              native_size=native, synthetic_train=synthetic)  # fmt: skip


def scaled(per_split: dict, factor: int) -> dict:
    return {split: {c: n * factor for c, n in per_class.items()} for split, per_class in per_split.items()}


# --------------------------------------------------------------------------- image sizes


def test_28_by_28_images_get_a_small_input_not_the_demos_256_by_96(tmp_path):
    params = parse_params(image_folder_cohort(tmp_path, (28, 28)))
    data = dataset_fingerprint("target", params, root=tmp_path)
    plan = make_plan(params, data, TWO_CPUS)
    assert data.native_size == (28, 28)
    assert plan["base.image_size"] == [32, 32]  # native, sides rounded up to multiples of 8
    assert plan["gan.model.image_size"] == [32, 32]


def test_a_1024_by_256_whole_body_cohort_keeps_the_demos_sizes(tmp_path):
    params = parse_params(whole_body_cohort(tmp_path))
    data = dataset_fingerprint("target", params, root=tmp_path)
    plan = make_plan(params, data, TWO_CPUS)
    assert (data.native_size, data.views_sampled, data.files_sampled) == ((1024, 256), 6, 3)  # two views a study
    assert plan["base.image_size"] == [256, 96]
    assert plan["gan.model.image_size"] == [128, 48]
    assert not {"augment.poisson_p", "augment.mode"} & set(plan.overrides())  # bone scans keep both


def test_small_images_that_are_not_scintigrams_get_no_count_noise_and_no_traditional_augmentation(tmp_path):
    params = parse_params(image_folder_cohort(tmp_path, (28, 28)))
    plan = make_plan(params, dataset_fingerprint("target", params, root=tmp_path), TWO_CPUS)
    assert plan["augment.poisson_p"] == 0.0 and plan["augment.mode"] == "none"
    reasons = {entry.key: entry.reason for entry in plan.entries}
    assert "not count images" in reasons["augment.poisson_p"] and "28 x 28" in reasons["augment.mode"]


def test_larger_images_keep_the_augmentation_and_non_nm_dicom_loses_only_the_count_noise(tmp_path):
    params = parse_params(image_folder_cohort(tmp_path, (128, 128)))
    plan = make_plan(params, dataset_fingerprint("target", params, root=tmp_path), TWO_CPUS)
    assert plan["augment.poisson_p"] == 0.0 and "augment.mode" not in plan.overrides()
    chest = parse_params(raw_params(modalities=["CR", "DX"]))
    entries = {e.key: e.reason for e in make_plan(chest, fingerprint(DEMO_SPLIT), TWO_CPUS).entries}
    assert "DICOM CR/DX are not count images" in entries["augment.poisson_p"] and "augment.mode" not in entries


def test_a_square_image_is_reshaped_instead_of_padded_into_the_tall_demo_size():
    size, reason = plan_image_size((512, 512))
    assert size == (160, 160)  # ~256 x 96 pixels in the data's shape
    assert "padding" in reason


def test_the_models_minimum_input_wins_over_the_native_size():
    size, reason = plan_image_size((16, 16), model_min=(32, 32))
    assert size == (32, 32)
    assert "minimum input" in reason


def test_a_too_small_image_size_for_the_model_names_the_keys_to_change():
    from bonescan.models import check_input_size

    with pytest.raises(ValueError, match=r"clf\.model 'multiscale' needs .* 32 x 32 .* set base\.image_size: \[32, 32\]"):
        check_input_size("multiscale", (28, 28), "base.image_size", "clf.model")


def test_fine_tuning_a_model_too_large_for_the_image_size_fails_before_training_naming_the_keys(
    tmp_path, monkeypatch, capsys
):
    raw = raw_params()
    raw["base"]["image_size"] = [28, 28]
    raw["clf"]["model"] = "multiscale"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert main(["clf-finetune", "--no-progress"]) == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps the line
    assert "set base.image_size: [32, 32], or a clf.model that takes [28, 28]" in err


# --------------------------------------------------------------------------- batch, budgets, threads


def test_a_cuda_machine_gets_a_larger_batch_than_two_cpus():
    params = parse_params(raw_params())
    data = fingerprint(scaled(DEMO_SPLIT, 5))
    cpu, gpu = make_plan(params, data, TWO_CPUS), make_plan(params, data, H100)
    assert cpu["clf.finetune.batch_size"] == 16
    assert gpu["clf.finetune.batch_size"] > cpu["clf.finetune.batch_size"]
    assert (gpu["clf.device"], cpu["clf.device"]) == ("cuda", "cpu")
    assert gpu["gan.model.image_size"] == gpu["base.image_size"]  # the GPU trains the GAN at full size


def test_the_demo_fits_its_own_cpu_budget_and_ten_times_the_data_gets_a_step_budget():
    params = parse_params(raw_params())
    demo = make_plan(params, fingerprint(DEMO_SPLIT, synthetic=94), TWO_CPUS)
    big = make_plan(params, fingerprint(scaled(DEMO_SPLIT, 10), synthetic=940), TWO_CPUS)
    assert demo["clf.finetune.max_steps"] is None and demo["gan.finetune.max_steps"] is None
    epochs, steps_per_epoch = params.clf.finetune.epochs, -(-7460 // 16)
    assert big["clf.finetune.max_steps"] < epochs * steps_per_epoch / 5  # about the demo's 705 steps, not 7,000
    assert big["gan.finetune.max_steps"] is not None


def test_no_step_budget_is_guessed_for_a_gpu_whose_throughput_was_never_measured():
    plan = make_plan(parse_params(raw_params()), fingerprint(scaled(DEMO_SPLIT, 10)), H100)
    assert plan["clf.finetune.max_steps"] is None
    assert "no measured CUDA throughput" in next(e.reason for e in plan.entries if e.key == "clf.finetune.max_steps")


def test_a_busy_machine_runs_one_thread_per_process():
    assert plan_threads(MachineFingerprint(cpus=2, load_average=2.6))[0] == 1
    assert plan_threads(TWO_CPUS)[0] is None  # null: the usable CPUs, shared among torchrun's processes


# --------------------------------------------------------------------------- the override file


def test_the_written_override_loads_through_the_typed_config(tmp_path):
    raw = image_folder_cohort(tmp_path, (28, 28))
    params = parse_params(raw)
    plan = make_plan(params, dataset_fingerprint("target", params, root=tmp_path), TWO_CPUS)
    overrides = yaml.safe_load(write_plan(plan, tmp_path / "params.plan.yaml").read_text())
    assert overrides == plan.overrides()
    planned = parse_params(apply_overrides(raw, overrides))
    assert planned.base.image_size == (32, 32)
    assert planned.gan.model.image_size == (32, 32)
    assert planned.clf.finetune.batch_size == plan["clf.finetune.batch_size"]
    assert "dvc exp run -S '++base.image_size=[32, 32]'" in render_plan(plan)


def test_a_plan_with_an_unknown_key_does_not_validate():
    plan = Plan("target", fingerprint(DEMO_SPLIT), TWO_CPUS, (PlanEntry("clf.finetune.batch_sise", 16, "typo"),))
    with pytest.raises(ConfigError, match=r"clf\.finetune\.batch_sise: unknown key \(did you mean 'batch_size'\?\)"):
        validate_plan(raw_params(), plan)


def test_a_dataset_that_was_never_ingested_is_a_clear_error(tmp_path):
    params = parse_params(raw_params())
    with pytest.raises(FileNotFoundError, match=r"processed/manifest\.csv.*run `bonescan ingest --dataset target`"):
        dataset_fingerprint("target", params, root=tmp_path)


def test_the_plan_command_writes_the_override_and_prints_the_dvc_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(image_folder_cohort(tmp_path, (28, 28))))
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--dataset", "target", "--out", "planned.yaml"]) == 0
    assert yaml.safe_load((tmp_path / "planned.yaml").read_text())["base.image_size"] == [32, 32]
    assert "dvc exp run -S" in capsys.readouterr().err


def test_the_plan_command_without_an_ingested_dataset_fails_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params()))
    monkeypatch.chdir(tmp_path)
    assert main(["plan"]) == 1
    err = capsys.readouterr().err
    assert "bonescan ingest --dataset target" in err and "Traceback" not in err
