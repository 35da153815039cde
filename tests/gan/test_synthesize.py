"""`synthesize` stage: majority balancing, manifest rows of synthetic images, quality report and gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bonescan.data import dataset as dataset_module
from bonescan.data.manifest import read_manifest
from bonescan.dicom.read import read_png16
from bonescan.gan import build, quality
from bonescan.gan.synthesize import generate, needed_counts, run_synthesize
from bonescan.gan.weights import generator_digest, load_weights

CLASSES = ["healthy", "metastasis", "benign"]
ADMIT_ALL = {
    "min_fidelity": 0.0,
    "min_label_lift": -1.0,
    "max_diversity_ssim": 1.0,
    "max_diversity_margin": None,
    "min_tstr_lift": None,
}
REJECT_ALL = {"min_fidelity": 1.0, "max_diversity_ssim": 0.0}


def _params(make_params, name: str, **quality):
    """Tiny params whose synthesis writes under its own folder and report (tests share one trained root)."""
    return make_params(
        archs=["mu_acgan", "acgan"],
        synthesize={"out_dir": f"{name}/synthetic"},
        quality=quality,
        report=f"{name}/gan_quality.json",
    )


def test_needed_counts_bring_every_class_to_the_majority():
    labels = ["healthy"] * 6 + ["metastasis"] * 4 + ["benign"] * 2
    assert needed_counts(labels, CLASSES) == {"healthy": 0, "metastasis": 2, "benign": 4}


def test_needed_counts_use_a_fixed_count_when_given_and_cover_absent_classes():
    assert needed_counts(["healthy"], CLASSES, count=3) == dict.fromkeys(CLASSES, 3)
    assert needed_counts(["healthy", "healthy"], CLASSES) == {"healthy": 0, "metastasis": 2, "benign": 2}


def test_generated_images_are_in_unit_range_and_do_not_depend_on_how_many_are_drawn():
    torch.manual_seed(0)
    g, _ = build("acgan", 3, (32, 16), z_dim=16, base_channels=8)
    five = generate(g, 2, 5, seed=4, batch_size=2)
    three = generate(g, 2, 3, seed=4, batch_size=2)
    assert five.shape == (5, 1, 32, 16) and five.min() >= 0.0 and five.max() <= 1.0
    assert torch.equal(five[:3], three)
    assert not torch.equal(generate(g, 2, 3, seed=5), three)
    assert generate(g, 0, 0, seed=4).shape == (0, 1, 32, 16)


def test_admitted_classes_are_balanced_with_synthetic_train_rows_naming_generator_and_seed(
    trained_root, make_params
):
    params = _params(make_params, "admit", **ADMIT_ALL)
    result = run_synthesize(params, root=trained_root)
    assert result.needed == {"healthy": 0, "metastasis": 2, "benign": 4}  # 6 / 4 / 2 real train images
    assert result.admitted == dict.fromkeys(CLASSES, True)
    assert result.written == result.needed

    rows = read_manifest(trained_root / "admit/synthetic/manifest.csv")
    assert rows.groupby("label").size().to_dict() == {"metastasis": 2, "benign": 4}
    assert rows["synthetic"].all() and set(rows["split"]) == {"train"}
    digest = generator_digest(load_weights(trained_root / "models/gan/finetune/mu_acgan.pt"))[:12]
    assert set(rows["source"]) == {f"mu_acgan:{digest}:seed7"}  # <arch>:<generator digest[:12]>:seed<seed>
    assert rows["image_id"].is_unique and rows["patient_id"].str.startswith("synthetic-").all()
    for path in rows["path"]:
        image = read_png16(trained_root / path)
        assert image.shape == (32, 16)  # base.image_size, like the real images they join


def test_quality_report_compares_both_archs_per_class_with_stated_ssim_and_gate(trained_root, make_params):
    params = _params(make_params, "report", **ADMIT_ALL)
    result = run_synthesize(params, root=trained_root)
    report = json.loads(result.report.read_text())
    assert "data_range=1.0" in report["ssim_variant"] and "sigma=1.5" in report["ssim_variant"]
    assert set(report["archs"]) == {"mu_acgan", "acgan"}
    for arch, entry in report["archs"].items():
        assert entry["generator"].startswith(f"{arch}:")
        assert 0.0 <= entry["tstr_val_accuracy"] <= 1.0
        assert set(entry["classes"]) == set(CLASSES)
        for q in entry["classes"].values():
            assert q["n_generated"] == 4  # gan.quality.samples_per_class
            assert -1.0 <= q["ssim_to_real"] <= q["ssim_to_nearest_real"] <= 1.0
            assert -1.0 <= q["diversity_ssim"] <= 1.0
            assert 0.0 <= q["fidelity"] <= 1.0
            assert q["judge_real_recall"] in (None, *report["classifier"]["real_val_recall"].values())
            assert q["admitted"] is True and q["reason"].startswith("admitted")
    assert report["synthesis"]["decisions"]["benign"].startswith("admitted")

    table = result.report.with_suffix(".md").read_text()
    assert "data_range=1.0" in table
    for arch in ("mu_acgan", "acgan"):
        for name in CLASSES:
            assert f"| {arch} | {name} | 4 |" in table
    assert "- benign: admitted" in table


def test_gate_rejections_write_no_images_and_are_stated_in_the_report(trained_root, make_params):
    run_synthesize(_params(make_params, "gate", **ADMIT_ALL), root=trained_root)
    result = run_synthesize(_params(make_params, "gate", **REJECT_ALL), root=trained_root)
    assert result.admitted == dict.fromkeys(CLASSES, False)
    assert result.written == dict.fromkeys(CLASSES, 0)
    assert read_manifest(result.manifest).empty  # valid and empty: downstream stages still run
    assert not any((trained_root / "gate/synthetic/images").iterdir())  # the earlier run's images are gone
    report = json.loads(result.report.read_text())
    for name in CLASSES:
        reason = report["synthesis"]["decisions"][name]
        assert reason.startswith("rejected: ") and "diversity SSIM" in reason  # no class passes a 0.0 bound
    assert "- metastasis: rejected" in result.report.with_suffix(".md").read_text()


def test_ungated_synthesis_writes_every_class_and_still_reports_what_the_gate_decided(trained_root, make_params):
    params = make_params(
        archs=["mu_acgan", "acgan"],
        synthesize={"out_dir": "ungated/synthetic", "gated": False},
        quality=REJECT_ALL,
        report="ungated/gan_quality.json",
    )
    result = run_synthesize(params, root=trained_root)
    assert result.admitted == dict.fromkeys(CLASSES, True)
    assert result.written == {"healthy": 0, "metastasis": 2, "benign": 4}  # balanced as if admitted
    report = json.loads(result.report.read_text())
    assert report["synthesis"]["gated"] is False
    for name in CLASSES:
        assert report["synthesis"]["decisions"][name].startswith("written ungated (the gate: rejected: ")
        assert report["archs"]["mu_acgan"]["classes"][name]["admitted"] is False  # the gate's own verdict


def test_synthesis_never_reads_test_images(trained_root, make_params, monkeypatch):
    read: list[Path] = []
    original = dataset_module.read_png16
    monkeypatch.setattr(dataset_module, "read_png16", lambda path: read.append(Path(path)) or original(path))
    run_synthesize(_params(make_params, "spy", **ADMIT_ALL), root=trained_root)
    manifest = read_manifest(trained_root / "target/manifest.csv")
    test_paths = {trained_root / p for p in manifest.loc[manifest["split"] == "test", "path"]}
    assert read and not test_paths & set(read)  # train (metrics) and val (TSTR) only


def test_weights_for_other_classes_are_refused(trained_root, make_params):
    params = _params(make_params, "refuse", **ADMIT_ALL)
    other = params.datasets["target"].model_copy(update={"classes": ("healthy", "metastasis", "other")})
    params = params.model_copy(update={"datasets": {**params.datasets, "target": other}})
    with pytest.raises(ValueError, match="trained for classes"):
        run_synthesize(params, root=trained_root)


def test_synthetic_rows_are_named_by_what_the_generator_generates_not_by_its_training_history(trained_root):
    weights = load_weights(trained_root / "models/gan/finetune/mu_acgan.pt")
    rerun = {
        **weights,
        "history": [{"epoch": 1, "seconds": 99.0}],
    }  # a deterministic re-run: other wall clock
    assert generator_digest(rerun) == generator_digest(weights)
    changed = {
        **weights,
        "ema": {k: v + 1 if v.is_floating_point() else v for k, v in weights["ema"].items()},
    }
    assert generator_digest(changed) != generator_digest(weights)
    assert generator_digest({**weights, "classes": ["a", "b", "c"]}) != generator_digest(weights)


def test_what_concerns_only_real_images_is_measured_once_for_both_architectures(
    trained_root, make_params, monkeypatch
):
    calls = {"reference": 0, "judges": 0, "diversity": 0}
    real_reference, train_classifier = quality.real_reference, quality.train_classifier
    mean_pairwise_ssim = quality.mean_pairwise_ssim

    def counting(key, fn):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(quality, "real_reference", counting("reference", real_reference))
    monkeypatch.setattr(quality, "train_classifier", counting("judges", train_classifier))
    monkeypatch.setattr(quality, "mean_pairwise_ssim", counting("diversity", mean_pairwise_ssim))
    result = run_synthesize(_params(make_params, "once", **ADMIT_ALL), root=trained_root)
    report = json.loads(result.report.read_text())
    assert set(report["archs"]) == {"mu_acgan", "acgan"}
    assert calls["reference"] == 1
    assert calls["judges"] == 1 + 2  # the real-trained judge once, one TSTR classifier per architecture
    assert calls["diversity"] == 3 + 2 * 3  # real images per class once, generated per class and architecture
    for arch in ("mu_acgan", "acgan"):
        for name in CLASSES:
            q = report["archs"][arch]["classes"][name]
            assert (
                q["real_diversity_ssim"]
                == report["archs"]["mu_acgan"]["classes"][name]["real_diversity_ssim"]
            )
            assert len(q["fidelity_members"]) == 3  # gan.quality.classifier_members, with their sd
            assert q["fidelity_sd"] is None or q["fidelity_sd"] >= 0
    assert len(report["classifier"]["real_val_accuracy_members"]) == 3


def test_auto_arch_writes_the_images_of_the_architecture_the_gate_chose(trained_root, make_params):
    params = _params(make_params, "auto", **ADMIT_ALL)
    params = params.model_copy(
        update={
            "gan": params.gan.model_copy(
                update={"synthesize": params.gan.synthesize.model_copy(update={"arch": "auto"})}
            )
        }
    )
    result = run_synthesize(params, root=trained_root)
    report = json.loads(result.report.read_text())
    chosen = quality.choose_arch(report["archs"], result.needed)
    assert report["synthesis"]["arch"] == chosen and report["synthesis"]["arch_choice"] == "auto"
    rows = read_manifest(result.manifest)
    assert {s.split(":")[0] for s in rows["source"]} == {chosen}
    assert "chosen by the gate" in result.report.with_suffix(".md").read_text()


def test_a_synthesize_arch_outside_archs_is_refused_but_auto_is_accepted(make_params):
    assert make_params(synthesize={"arch": "auto"}).gan.synthesize.arch == "auto"
    with pytest.raises(ValueError, match="not 'auto' or in gan.archs"):
        make_params(archs=["mu_acgan"], synthesize={"arch": "acgan"})
