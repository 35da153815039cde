"""Quality metrics of generated images (Yu et al. 2023, Table 3) and the admission gate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from bonescan.gan import quality


def _images(n: int, seed: int, size: tuple[int, int] = (24, 20)) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, *size)))


def test_ssim_matrix_is_skimages_gaussian_ssim_with_data_range_passed():
    a, b = _images(2, 0), _images(3, 1)
    b[0] = a[0] * 0.7 + 0.1  # one pair with high structural similarity
    matrix = quality.ssim_matrix(a, b)
    assert matrix.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            expected = structural_similarity(
                a[i].numpy(),
                b[j].numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            assert matrix[i, j].item() == pytest.approx(expected, abs=1e-9)
    assert matrix[0, 0] > 0.5 > matrix[1, 1]


def test_ssim_depends_on_the_stated_data_range_not_on_the_pixel_scale():
    a, b = _images(2, 2), _images(2, 3)
    in_unit_range = quality.ssim_matrix(a, b, data_range=1.0)
    assert torch.allclose(quality.ssim_matrix(a * 255, b * 255, data_range=255.0), in_unit_range)
    assert not torch.allclose(quality.ssim_matrix(a, b, data_range=255.0), in_unit_range)


def test_ssim_of_an_image_with_itself_is_one_and_tiny_images_are_refused():
    a = _images(1, 4)
    assert quality.ssim_matrix(a, a).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="11x11"):
        quality.ssim_matrix(_images(1, 0, (10, 20)), _images(1, 1, (10, 20)))


def test_collapsed_generator_has_diversity_ssim_one_and_varied_images_less():
    collapsed = _images(1, 5).repeat(4, 1, 1)
    assert quality.mean_pairwise_ssim(collapsed) == pytest.approx(1.0)
    assert quality.mean_pairwise_ssim(_images(4, 6)) < 0.5
    assert math.isnan(quality.mean_pairwise_ssim(_images(1, 7)))


def test_class_quality_flags_copies_of_training_images_as_nearest_ssim_one():
    real = _images(3, 8)
    copies = real[:2].clone()
    q = quality.class_quality(
        copies, real, fidelity=1.0, tstr_recall=0.5, min_fidelity=0.5, max_diversity_ssim=0.9
    )
    assert q.ssim_to_nearest_real == pytest.approx(1.0)
    assert q.ssim_to_real < q.ssim_to_nearest_real  # the mean over all pairs also counts the other images
    assert (q.n_generated, q.n_real) == (2, 3)
    assert q.admitted and q.as_dict()["reason"].startswith("admitted")


@pytest.mark.parametrize(
    ("fidelity", "diversity", "admitted", "says"),
    [
        (0.8, 0.4, True, "admitted: fidelity 0.800 >= 0.5"),
        (0.3, 0.4, False, "fidelity 0.300 < 0.5"),
        (0.8, 0.95, False, "diversity SSIM 0.950 > 0.9"),
        (float("nan"), 0.4, False, "fidelity nan < 0.5"),
        (0.8, float("nan"), False, "diversity SSIM nan > 0.9"),
    ],
)
def test_gate_admits_only_faithful_and_diverse_classes_and_says_why(fidelity, diversity, admitted, says):
    decision, reason = quality.gate(fidelity, diversity, min_fidelity=0.5, max_diversity_ssim=0.9)
    assert decision is admitted and says in reason


def test_a_rejection_says_when_the_judge_fails_on_real_images_of_the_class_too():
    blamed = quality.gate(0.1, 0.4, 0.5, 0.9, judge_real_recall=0.0)
    assert blamed[0] is False and "judge also recognises only 0.000 of the real val images" in blamed[1]
    competent = quality.gate(0.1, 0.4, 0.5, 0.9, judge_real_recall=0.8)
    assert competent[0] is False and "judge" not in competent[1]
    assert quality.gate(0.9, 0.4, 0.5, 0.9, judge_real_recall=0.0)[0] is True  # context, not a criterion


def test_a_class_the_judge_names_for_every_generated_image_is_not_admitted_on_fidelity_alone():
    # generated for healthy, metastasis, benign; the judge leans to metastasis whatever the label
    intended = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    judged = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 2, 2])
    fidelity = quality.per_class_recall(judged, intended, 3)
    off_label = quality.off_label_rates(judged, intended, 3)
    assert fidelity == pytest.approx([0.0, 0.75, 0.5]) and off_label == pytest.approx([1 / 8, 6 / 8, 0.0])
    leaning = quality.gate(fidelity[1], 0.4, 0.5, 0.9, off_label_rate=off_label[1], min_label_lift=0.2)
    assert leaning == (
        False,
        "rejected: label lift 0.000 < 0.2 (the judge names this class for 0.750 of the images generated "
        "for the other classes too)",
    )
    faithful = quality.gate(fidelity[2], 0.4, 0.5, 0.9, off_label_rate=off_label[2], min_label_lift=0.2)
    assert faithful == (True, "admitted: fidelity 0.500 >= 0.5, label lift 0.500 >= 0.2, diversity SSIM 0.400 <= 0.9")
    assert math.isnan(quality.off_label_rates(torch.tensor([0, 0]), torch.tensor([0, 0]), 1)[0])  # one class
    assert quality.gate(0.6, 0.4, 0.5, 0.9, min_label_lift=0.2)[0] is True  # no other class: lift not checked


def test_per_class_recall_and_accuracy_are_computed_against_the_intended_labels():
    predicted, labels = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0])
    recall = quality.per_class_recall(predicted, labels, 4)
    assert recall[:3] == [0.5, 0.5, 1.0] and math.isnan(recall[3])
    assert quality.summarise([0.5, float("nan"), 1.0]) == 0.75


def test_classifier_training_is_seeded_and_fidelity_is_an_accuracy():
    images = torch.rand(8, 1, 32, 16)
    labels = torch.tensor([0, 1] * 4)
    kw = {"name": "soft_threshold_net", "epochs": 1, "batch_size": 4, "lr": 1e-3, "seed": 3}
    one = quality.train_classifier(images, labels, 2, **kw)
    two = quality.train_classifier(images, labels, 2, **kw)
    assert torch.equal(quality.predict(one, images), quality.predict(two, images))
    accuracy = quality.classifier_accuracy(one, images, labels)
    assert accuracy == pytest.approx(float((quality.predict(one, images) == labels).float().mean()))
    assert math.isnan(quality.classifier_accuracy(one, images[:0], labels[:0]))


def test_an_ensemble_judge_averages_the_probabilities_of_consecutive_seeds():
    images = torch.rand(8, 1, 32, 16)
    labels = torch.tensor([0, 1] * 4)
    kw = {"name": "soft_threshold_net", "epochs": 1, "batch_size": 4, "lr": 1e-3}
    ensemble = quality.train_classifier(images, labels, 2, seed=3, members=2, **kw)
    singles = [quality.train_classifier(images, labels, 2, seed=s, **kw) for s in (3, 4)]
    with torch.inference_mode():
        x = (images - 0.5) / 0.5
        mean = torch.stack([m(x).softmax(1) for m in singles]).mean(0)
        assert torch.allclose(ensemble(x).exp(), mean, atol=1e-6)
    assert torch.equal(quality.predict(ensemble, images), mean.argmax(1))


def test_markdown_report_states_the_ssim_variant_each_class_and_the_gate_decisions():
    entry = quality.class_quality(
        _images(3, 9), _images(2, 10), fidelity=0.2, tstr_recall=0.0, min_fidelity=0.5, max_diversity_ssim=0.9,
        judge_real_recall=0.75, off_label_rate=0.1, min_label_lift=0.2,
    ).as_dict()
    report = {
        "ssim_variant": quality.SSIM_VARIANT,
        "image_size": [24, 20],
        "classifier": {"name": "soft_threshold_net", "epochs": 1, "real_val_accuracy": 0.5},
        "gate": {"min_fidelity": 0.5, "min_label_lift": 0.2, "max_diversity_ssim": 0.9},
        "archs": {
            arch: {
                "generator": f"{arch}:0123456789ab",
                "tstr_val_accuracy": 0.25,
                "mean_fidelity": 0.2,
                "mean_ssim_to_real": entry["ssim_to_real"],
                "classes": {"benign": entry},
            }
            for arch in ("mu_acgan", "acgan")
        },
        "synthesis": {
            "arch": "mu_acgan",
            "seed": 7,
            "needed": {"benign": 4},
            "written": {"benign": 0},
            "decisions": {"benign": entry["reason"]},
        },
    }
    table = quality.render_markdown(report)
    assert "data_range=1.0" in table and "sigma=1.5" in table
    assert "| mu_acgan | benign | 3 |" in table and "| acgan | benign | 3 |" in table
    assert "| no |" in table and "- benign: rejected: fidelity 0.200 < 0.5" in table
    assert "`acgan:0123456789ab` | 0.250 |" in table
    assert "judge recall (real val)" in table and "| 0.200 | 0.100 | 0.750 | 0.000 | no |" in table
    assert "fidelity - off-label rate >= 0.2" in table
