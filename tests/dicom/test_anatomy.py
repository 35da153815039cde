"""Specification of the procedural anatomy: projections, counts, findings, chest classes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bonescan.config import PhantomConfig
from bonescan.dicom import anatomy as A

SIZE = (256, 64)
CFG = PhantomConfig(bone_size=SIZE)


def _patient(seed: int, label: str = "healthy"):
    rng = np.random.default_rng(seed)
    body = A.sample_body(rng)
    return body, A.sample_findings(body, label, rng), A.sample_acquisition(body, rng, (2e6, 2e6)), rng


def test_tube_and_ellipsoid_keep_their_projected_volume_even_below_a_pixel():
    canvas = np.zeros((1, 64, 64), np.float32)
    A.draw_tube(canvas, np.array([[10.0, 10.0], [10.0, 50.0]]), 0.3, np.ones(1))  # thinner than a pixel
    assert canvas.sum() == pytest.approx(math.pi * 0.3**2 * 40.0, rel=0.15)  # end caps add a little
    canvas[:] = 0
    A.draw_ellipsoid(canvas, (32.0, 32.0), (10.0, 6.0, 4.0), 0.7, np.ones(1))
    assert canvas.sum() == pytest.approx(4 / 3 * math.pi * 10 * 6 * 4, rel=0.03)


def test_render_bone_study_gives_uint16_count_views_of_the_configured_size():
    views = A.render_bone_study(np.random.default_rng(0), "metastasis", CFG)
    lo, hi = CFG.counts_per_view
    for view in (views.anterior, views.posterior):
        assert view.shape == SIZE and view.dtype == np.uint16
        assert lo * 0.99 <= view.sum(dtype=np.int64) <= hi * 1.01
    assert views.pixel_spacing == pytest.approx(2.26 * 1024 / SIZE[0])


def test_views_are_poisson_samples_of_the_expected_counts():
    body, findings, acq, _ = _patient(1)
    expected = A.expected_counts(body, findings, acq, SIZE)
    draws = np.stack(
        [A.render_study(body, findings, acq, SIZE, np.random.default_rng(i)).anterior for i in range(40)]
    )
    hot = expected[0] > 50
    assert np.allclose(draws.mean(0)[hot], expected[0][hot], rtol=0.1)
    assert np.allclose(draws.var(0)[hot].mean(), expected[0][hot].mean(), rtol=0.15)  # variance = mean


def test_posterior_view_is_stored_as_seen_from_behind():
    body, findings, acq, _ = _patient(2)
    acq = replace(acq, shift_mm=80.0, tilt_deg=0.0)  # patient moved towards the image right
    expected = A.expected_counts(body, findings, acq, SIZE)
    columns = np.arange(SIZE[1])
    centre = [float((view.sum(0) * columns).sum() / view.sum()) for view in expected]
    assert centre[0] > SIZE[1] / 2 + 3 and centre[1] < SIZE[1] / 2 - 3


def test_kidneys_and_spine_are_brighter_in_the_posterior_view():
    body, findings, acq, _ = _patient(3)
    base = A.expected_counts(body, findings, acq, SIZE)
    hot_kidneys = A.expected_counts(replace(body, kidney_uptake=body.kidney_uptake * 6), findings, acq, SIZE)
    gain = (hot_kidneys - base).clip(0).sum(axis=(1, 2))
    assert gain[1] > 1.5 * gain[0]


def test_lesions_take_their_counts_from_the_rest_of_the_body():
    body, _, acq, rng = _patient(4)
    healthy = A.Findings("healthy")
    metastatic = A.sample_findings(body, "metastasis", rng)
    assert metastatic.lesions
    without, with_lesions = (A.expected_counts(body, f, acq, SIZE) for f in (healthy, metastatic))
    np.testing.assert_allclose(without.sum(axis=(1, 2)), with_lesions.sum(axis=(1, 2)), rtol=1e-4)
    assert (with_lesions - without).max() > 0 > (with_lesions - without).min()


def test_metastases_lie_mostly_in_the_axial_skeleton():
    axial = {
        "spine",
        "pelvis",
        "sacrum",
        "rib",
        "skull",
        "sternum",
        "femur_proximal",
        "humerus_proximal",
        "scapula",
    }
    sites = []
    for seed in range(60):
        body, findings, _, _ = _patient(seed, "metastasis")
        sites += [lesion.site for lesion in findings.lesions]
        assert findings.lesions and findings.label == "metastasis"
    core = {"spine", "pelvis", "sacrum", "rib"}
    assert set(sites) <= axial
    assert sum(s in core for s in sites) / len(sites) > 0.6


def test_degenerative_joint_uptake_is_bilateral_and_a_rib_fracture_runs_down_consecutive_ribs():
    kinds_seen = set()
    for seed in range(80):
        body, findings, _, _ = _patient(seed, "benign")
        kinds_seen |= set(findings.kinds)
        assert findings.lesions
        if findings.kinds == ("knees",):
            xs = sorted(lesion.points[0][0] for lesion in findings.lesions)
            assert xs[0] < 0 < xs[-1]  # one on each side of the midline
        if findings.kinds == ("rib_fracture",):
            xs = np.array([lesion.points[0][0] for lesion in findings.lesions])
            ys = np.sort([lesion.points[0][1] for lesion in findings.lesions])
            assert len(xs) >= 2 and (np.all(xs > 0) or np.all(xs < 0))
            assert np.all(np.diff(ys) > 5.0)
    assert {"knees", "rib_fracture"} <= kinds_seen


def test_metastases_are_mostly_several_and_some_are_solitary_or_faint():
    counts, faint = [], 0
    for seed in range(200):
        _, findings, _, _ = _patient(seed, "metastasis")
        if not findings.superscan:
            counts.append(len(findings.lesions))
            faint += findings.kinds == ("faint_metastases",)
    counts = np.array(counts)
    assert np.mean((counts >= 2) & (counts <= 8)) > 0.35 and np.median(counts) >= 3
    assert np.mean(counts == 1) > 0.05 and faint > 5  # the cases a reader can miss or mistake


def test_benign_change_includes_the_lookalikes_of_a_metastasis():
    kinds = set()
    for seed in range(150):
        _, findings, _, _ = _patient(seed, "benign")
        kinds |= set(findings.kinds)
        if findings.kinds == ("rib_fracture_solitary",) or findings.kinds == ("joint_unilateral",):
            assert len(findings.lesions) == 1
    assert {"rib_fracture_solitary", "joint_unilateral", "spondylosis"} <= kinds


def test_lesion_records_give_each_lesion_where_it_is_drawn_and_its_share_of_the_counts():
    body, findings, acq, rng = _patient(4, "metastasis")
    views = A.render_study(body, findings, acq, SIZE, rng)
    records = A.lesion_records(views, body, SIZE)
    assert len(records) == len(findings.lesions) and set(records[0]) == set(A.LESION_FIELDS)
    without = A.expected_counts(body, A.Findings("metastasis"), acq, SIZE)
    for lesion, rec in zip(findings.lesions, records, strict=True):
        alone = A.expected_counts(body, A.Findings("metastasis", (lesion,)), acq, SIZE)
        r, c = round(rec["row"]), round(rec["col"])
        gained = alone[0, r, c] - without[0, r, c]
        assert rec["anterior_own"] == pytest.approx(gained, rel=0.2)  # where the record says, as bright
        posterior = alone[1, r, SIZE[1] - 1 - c] - without[1, r, SIZE[1] - 1 - c]
        assert rec["posterior_own"] == pytest.approx(posterior, rel=0.2)
        assert rec["anterior_other"] > 0


def test_superscan_starves_kidneys_and_bladder():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        body = A.sample_body(rng)
        findings = A.sample_findings(body, "metastasis", rng)
        if findings.superscan:
            break
    else:
        pytest.fail("no superscan in 300 metastatic patients")
    acq = A.sample_acquisition(body, rng, (2e6, 2e6))
    ordinary = replace(findings, superscan=False)

    def organ_share(f: A.Findings) -> float:
        """Counts the bladder and kidneys hold: the image minus the same image without them."""
        full = A.expected_counts(body, f, acq, SIZE)
        empty = A.expected_counts(
            replace(body, kidney_uptake=0.0), f, replace(acq, bladder=(acq.bladder[0], 0.0)), SIZE
        )
        return float((full - empty).clip(0).sum() / full.sum())

    assert organ_share(findings) < 0.3 * organ_share(ordinary)


def test_unknown_classes_are_rejected():
    body, _, _, rng = _patient(0)
    with pytest.raises(ValueError, match="unknown bone-scan class"):
        A.sample_findings(body, "fracture", rng)
    with pytest.raises(ValueError, match="unknown chest class"):
        A.render_chest(rng, "pneumothorax", (64, 64))


@pytest.mark.parametrize("label", ["covid19", "lung_opacity", "viral_pneumonia"])
def test_chest_findings_add_density_inside_the_lungs_only(label):
    size = (96, 96)
    normal = A.render_chest(np.random.default_rng(5), "normal", size)
    abnormal = A.render_chest(np.random.default_rng(5), label, size)  # same patient, geometry drawn first
    assert abnormal.shape == size and abnormal.dtype == np.float32
    assert abnormal.min() >= 0.0 and abnormal.max() <= 1.0
    difference = abnormal - normal
    lungs = slice(20, 65), np.r_[10:40, 56:86]
    assert difference[lungs].mean() > 0.02
    assert abs(difference[:, :4].mean()) < 0.01  # air outside the body untouched


def test_chest_radiograph_has_dark_lungs_and_a_bright_mediastinum():
    image = A.render_chest(np.random.default_rng(8), "normal", (128, 128))
    lungs = image[40:70, 25:45].mean(), image[40:70, 83:103].mean()
    mediastinum = image[40:70, 60:68].mean()
    outside = image[:, :3].mean()
    assert outside < min(lungs) < max(lungs) < mediastinum
