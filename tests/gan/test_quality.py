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
    assert faithful == (
        True,
        "admitted: fidelity 0.500 >= 0.5, label lift 0.500 >= 0.2, diversity SSIM 0.400 <= 0.9",
    )
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
        _images(3, 9),
        _images(2, 10),
        fidelity=0.2,
        tstr_recall=0.0,
        min_fidelity=0.5,
        max_diversity_ssim=0.9,
        judge_real_recall=0.75,
        off_label_rate=0.1,
        min_label_lift=0.2,
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
    # fidelity | its sd over judge seeds (none recorded here) | off-label | judge recall | TSTR recall | TSTR lift
    assert (
        "judge recall (real val)" in table and "| 0.200 | nan | 0.100 | 0.750 | 0.000 | nan | no |" in table
    )
    assert "fidelity - off-label rate >= 0.2" in table


def test_sampled_diversity_ssim_equals_the_full_mean_when_the_sample_covers_every_pair():
    images = _images(6, 11)  # 15 pairs
    matrix = quality.ssim_matrix(images, images)
    upper = torch.triu_indices(6, 6, offset=1)
    full = float(matrix[upper[0], upper[1]].mean())
    assert quality.mean_pairwise_ssim(images) == pytest.approx(full, abs=1e-12)
    assert quality.mean_pairwise_ssim(images, max_pairs=15, seed=3) == pytest.approx(full, abs=1e-12)
    sampled = quality.mean_pairwise_ssim(images, max_pairs=8, seed=3)
    assert sampled == quality.mean_pairwise_ssim(images, max_pairs=8, seed=3)  # seeded
    assert sampled != pytest.approx(full, abs=1e-12)  # 8 of 15 pairs: an estimate
    assert torch.allclose(quality.ssim_pairs(images[upper[0]], images[upper[1]]), matrix[upper[0], upper[1]])


def test_sampled_pairs_are_distinct_pairs_i_below_j_for_any_number_of_images():
    for n, k in [(7, 20), (50, 100), (3107, 4096), (10**6, 64)]:
        i, j = quality.sample_pairs(n, k, seed=0)
        assert len(i) == k and bool(((i >= 0) & (i < j) & (j < n)).all())
        assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == k
    i, j = quality.sample_pairs(4, None, seed=0)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_a_collapsed_class_whose_tstr_is_at_chance_is_refused_even_with_perfect_fidelity():
    # the run: fidelity and label lift 1.0, diversity 0.857 against 0.583 for real images
    kw = {"off_label_rate": 0.0, "min_label_lift": 0.2, "max_diversity_margin": 0.1, "min_tstr_lift": 0.1}
    collapsed = quality.gate(
        1.0, 0.857, 0.5, 0.9, real_diversity_ssim=0.583, tstr_recall=0.3, tstr_lift=0.0, **kw
    )
    assert collapsed[0] is False
    assert "diversity SSIM 0.857 > real images' 0.583 + 0.1" in collapsed[1]
    assert "TSTR lift 0.000 < 0.1" in collapsed[1] and "label lift" not in collapsed[1]
    # diverse enough, but what it teaches finds the class no better than chance: still refused
    at_chance = quality.gate(
        1.0, 0.6, 0.5, 0.9, real_diversity_ssim=0.583, tstr_recall=1.0, tstr_lift=0.0, **kw
    )
    assert at_chance[0] is False and at_chance[1].startswith("rejected: TSTR lift 0.000 < 0.1")
    assert (
        quality.gate(1.0, 0.6, 0.5, 0.9, real_diversity_ssim=0.583, tstr_lift=float("nan"), **kw)[0] is False
    )
    taught = quality.gate(1.0, 0.6, 0.5, 0.9, real_diversity_ssim=0.583, tstr_lift=0.4, **kw)
    assert taught == (
        True,
        "admitted: fidelity 1.000 >= 0.5, label lift 1.000 >= 0.2, diversity SSIM 0.600 <= 0.9 and <= real "
        "0.583 + 0.1, TSTR lift 0.400 >= 0.1",
    )


def test_tstr_lift_is_zero_for_a_classifier_that_names_one_class_for_everything():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    constant = torch.zeros(6, dtype=torch.long)
    recall = quality.per_class_recall(constant, labels, 3)
    other = quality.off_label_rates(constant, labels, 3)
    assert [r - o for r, o in zip(recall, other, strict=True)] == [0.0, 0.0, 0.0]


def _entry(admitted: list[bool], balanced: float) -> dict:
    names = ["healthy", "metastasis", "benign"]
    return {
        "tstr_val_balanced_accuracy": balanced,
        "classes": {n: {"admitted": a} for n, a in zip(names, admitted, strict=True)},
    }


def test_auto_arch_is_the_one_admitting_most_needed_classes_then_the_better_tstr_then_the_first():
    needed = {"healthy": 0, "metastasis": 2, "benign": 4}
    more_classes = {"mu_acgan": _entry([False, False, True], 0.9), "acgan": _entry([False, True, True], 0.4)}
    assert quality.choose_arch(more_classes, needed) == "acgan"
    # healthy needs nothing: admitting it does not count
    unneeded = {"mu_acgan": _entry([True, False, True], 0.4), "acgan": _entry([False, False, True], 0.5)}
    assert quality.choose_arch(unneeded, needed) == "acgan"
    nothing = {"mu_acgan": _entry([False] * 3, float("nan")), "acgan": _entry([False] * 3, 0.34)}
    assert quality.choose_arch(nothing, needed) == "acgan"
    tie = {"mu_acgan": _entry([False, True, True], 0.5), "acgan": _entry([False, True, True], 0.5)}
    assert quality.choose_arch(tie, needed) == "mu_acgan"  # the earlier in gan.archs


def test_the_judge_trains_on_a_seeded_class_balanced_sample_of_at_most_n_per_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 6)
    picked = quality.balanced_subsample(labels, 4, seed=1)
    assert torch.bincount(labels[picked]).tolist() == [4, 3, 4]
    assert torch.equal(picked, quality.balanced_subsample(labels, 4, seed=1))
    assert torch.equal(quality.balanced_subsample(labels, None, seed=1), torch.arange(19))


def test_each_judge_member_fidelity_is_reported_with_their_spread():
    images = torch.rand(8, 1, 32, 16)
    labels = torch.tensor([0, 1] * 4)
    kw = {"name": "soft_threshold_net", "epochs": 1, "batch_size": 4, "lr": 1e-3}
    ensemble = quality.train_classifier(images, labels, 2, seed=3, members=3, **kw)
    by_member = quality.member_predictions(ensemble, images)
    assert by_member.shape == (3, 8)
    alone = quality.train_classifier(images, labels, 2, seed=4, **kw)  # the second member, trained alone
    assert torch.equal(by_member[1], quality.predict(alone, images))
    assert quality.member_predictions(alone, images).shape == (1, 8)
    q = quality.class_quality(
        _images(3, 12), _images(3, 13), 0.5, 0.5, 0.5, 0.9, fidelity_members=[0.25, 0.5, 0.75]
    )
    assert q.fidelity_members == (0.25, 0.5, 0.75) and q.fidelity_sd == pytest.approx(0.25)
