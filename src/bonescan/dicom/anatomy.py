"""Procedural anatomy: whole-body bone-scan views and chest radiographs drawn from a few dozen numbers.

Why procedural: the embedded default cohort must exist without any downloaded data, yet look like the
real thing to a classifier, an anonymizer and a reader -- photon-count statistics, attenuation-weighted
anterior/posterior projections, patient-to-patient anatomy, and findings placed where they occur
clinically. Every structure is a projected solid (tube, ellipsoid, shell or Gaussian) added onto a
float canvas on a small bounding-box patch, so one whole-body study costs a few hundred vectorised
patch updates, never a per-pixel Python loop.

Bone-scan model. Anatomy lives in a body frame in millimetres: x lateral (positive = the patient's left,
which an anterior view shows on the image right), y downwards from the vertex. Each structure has a
depth (0 = anterior skin, 1 = posterior skin); its weight in a view is exp(-k * distance to that
detector), which makes the spine, scapulae and kidneys brighter posteriorly and the sternum and patellae
anteriorly. The posterior view is stored as acquired: seen from behind, i.e. mirrored left-right.
Each view is blurred by the collimator response, gets a scatter halo and room background, is scaled to
its drawn total count and Poisson-sampled. Lesions take their counts out of the rest of the body: the
total count of a view is drawn from one distribution for every class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import ndimage

from bonescan.config import PhantomConfig

BONE_CLASSES = ("healthy", "metastasis", "benign")
CHEST_CLASSES = ("normal", "covid19", "lung_opacity", "viral_pneumonia")

FOV_HEIGHT_MM = 1024 * 2.26  # whole-body field of view of the reference NM1 scan (1024 rows x 2.26 mm)
ATTENUATION_K = 1.2  # exp(-k * depth): 3.3x between the near and the far surface (Tc-99m, ~20 cm body)
COLLIMATOR_SIGMA_MM = 5.0  # LEHR collimator + intrinsic resolution, FWHM ~12 mm at ~10 cm
SCATTER_SIGMA_MM = 30.0
SCATTER_FRACTION = 0.18  # share of detected counts that are scattered (Compton in the body)
BACKGROUND_COUNTS = 0.15  # mean room/electronic background per pixel (the real NM1 scan: median 1)
REFERENCE_PEAK = 45.0  # projected peak (mm x uptake) of a normal lumbar vertebral body: lesion contrast unit
MIN_RADIUS_PX = 1.5  # thinner structures are widened (area kept) so pixel sampling keeps their volume

Tissue = Literal["bone", "soft", "kidney", "bladder", "injection", "contamination", "lesion"]
Kind = Literal["tube", "ellipsoid", "shell", "blob"]


# --------------------------------------------------------------------------- drawing primitives


def _patch(shape: tuple[int, int], y_lo: float, y_hi: float, x_lo: float, x_hi: float):
    """Clipped bounding box -> (row slice, col slice, row coords (h,1), col coords (1,w)), or None."""
    height, width = shape
    y0, y1 = max(math.floor(y_lo), 0), min(math.ceil(y_hi) + 1, height)
    x0, x1 = max(math.floor(x_lo), 0), min(math.ceil(x_hi) + 1, width)
    if y0 >= y1 or x0 >= x1:
        return None
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    return slice(y0, y1), slice(x0, x1), ys, xs


def _add(canvas: np.ndarray, rows: slice, cols: slice, values: np.ndarray, gains: np.ndarray) -> None:
    """canvas[v, rows, cols] += gains[v] * values for every view v of a (V, H, W) canvas."""
    canvas[:, rows, cols] += gains[:, None, None].astype(np.float32) * values[None]


def draw_tube(canvas: np.ndarray, points: np.ndarray, radii, gains: np.ndarray) -> None:
    """Projected thickness of a tube of varying radius along a polyline.

    Args:
        canvas: (V, H, W) float32, modified in place.
        points: (N, 2) polyline vertices (row, col) in pixels; N = 1 draws a sphere.
        radii: radius per vertex in pixels, scalar or (N,); interpolated along each segment.
        gains: (V,) activity x view weight; the added value is gain x chord length in pixels.
    """
    pts = np.atleast_2d(np.asarray(points, dtype=np.float32))
    if len(pts) == 1:
        pts = np.concatenate([pts, pts])
    rad = np.broadcast_to(np.asarray(radii, dtype=np.float32), (len(pts),))
    pad = float(np.maximum(rad, MIN_RADIUS_PX).max()) + 1.0
    box = _patch(
        canvas.shape[1:],
        pts[:, 0].min() - pad,
        pts[:, 0].max() + pad,
        pts[:, 1].min() - pad,
        pts[:, 1].max() + pad,
    )
    if box is None:
        return
    rows, cols, ys, xs = box
    a, ab = pts[:-1, :, None, None], (pts[1:] - pts[:-1])[:, :, None, None]  # (S, 2, 1, 1)
    length2 = np.maximum((ab**2).sum(axis=1), 1e-6)  # (S, 1, 1)
    t = np.clip(((ys - a[:, 0]) * ab[:, 0] + (xs - a[:, 1]) * ab[:, 1]) / length2, 0.0, 1.0)  # (S, h, w)
    d2 = (ys - a[:, 0] - t * ab[:, 0]) ** 2 + (xs - a[:, 1] - t * ab[:, 1]) ** 2
    r = rad[:-1, None, None] + t * (rad[1:] - rad[:-1])[:, None, None]
    r_eff = np.maximum(r, MIN_RADIUS_PX)
    chord = 2.0 * r * (r / r_eff) * np.sqrt(np.clip(1.0 - d2 / r_eff**2, 0.0, None))  # keeps the area pi r^2
    _add(canvas, rows, cols, chord.max(axis=0), gains)


def _rotated(ys: np.ndarray, xs: np.ndarray, centre: tuple[float, float], angle: float):
    """Coordinates along (u) and across (v) an axis turned by `angle` radians from the column axis."""
    dy, dx = ys - centre[0], xs - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def draw_ellipsoid(
    canvas: np.ndarray,
    centre: tuple[float, float],
    semi_axes: tuple[float, float, float],
    angle: float,
    gains: np.ndarray,
    shell: float = 0.0,
) -> None:
    """Projected thickness of an ellipsoid (or of its shell of thickness `shell` pixels, like a skull).

    Args:
        centre: (row, col) in pixels.
        semi_axes: (along, across, depth) semi-axes in pixels; `along` is turned by `angle` from the
            column axis (towards increasing rows).
    """
    along, across, depth = semi_axes
    reach = max(along, across, MIN_RADIUS_PX) + 1.0
    box = _patch(canvas.shape[1:], centre[0] - reach, centre[0] + reach, centre[1] - reach, centre[1] + reach)
    if box is None:
        return
    rows, cols, ys, xs = box
    u, v = _rotated(ys, xs, centre, angle)
    thickness = _ellipsoid_thickness(u, v, along, across, depth)
    if shell > 0 and min(along, across, depth) > shell:
        thickness -= _ellipsoid_thickness(u, v, along - shell, across - shell, depth - shell)
    _add(canvas, rows, cols, thickness, gains)


def _ellipsoid_thickness(
    u: np.ndarray, v: np.ndarray, along: float, across: float, depth: float
) -> np.ndarray:
    """Chord length through an ellipsoid; semi-axes below MIN_RADIUS_PX are widened with the volume kept."""
    a, b = max(along, MIN_RADIUS_PX), max(across, MIN_RADIUS_PX)
    scale = 2.0 * depth * (along * across) / (a * b)
    return scale * np.sqrt(np.clip(1.0 - (u / a) ** 2 - (v / b) ** 2, 0.0, None))


def draw_gaussian(
    canvas: np.ndarray,
    centre: tuple[float, float],
    sigmas: tuple[float, float],
    angle: float,
    gains: np.ndarray,
) -> None:
    """A 2-D Gaussian of peak `gains` (sigmas along/across the axis turned by `angle`), cut at 3.5 sigma."""
    s_along, s_across = (max(s, 0.6) for s in sigmas)
    gains = gains * (sigmas[0] * sigmas[1]) / (s_along * s_across)  # a widened Gaussian keeps its integral
    reach = 3.5 * max(s_along, s_across)
    box = _patch(canvas.shape[1:], centre[0] - reach, centre[0] + reach, centre[1] - reach, centre[1] + reach)
    if box is None:
        return
    rows, cols, ys, xs = box
    u, v = _rotated(ys, xs, centre, angle)
    _add(canvas, rows, cols, np.exp(-0.5 * ((u / s_along) ** 2 + (v / s_across) ** 2)), gains)


# --------------------------------------------------------------------------- body model


@dataclass(frozen=True, eq=False)
class Shape:
    """One projected solid in the body frame (mm).

    Attributes:
        kind: tube (polyline with radii), ellipsoid, shell (hollow ellipsoid), blob (Gaussian).
        points: (N, 2) (x, y) mm; one point (the centre) for ellipsoid/shell/blob.
        size: tube: (N,) radii; ellipsoid/shell: (along, across, depth semi-axis, shell thickness);
            blob: (sigma along, sigma across).
        angle: radians from the x axis towards +y (ellipsoid, shell, blob).
        activity: tracer concentration relative to the tissue's uptake (blob: peak projected value).
        depth: 0 = anterior skin ... 1 = posterior skin.
        tissue: uptake group that scales `activity` per study.
        site: anatomical site, used to place findings ("" = not a lesion host).
        side: -1 patient's right, 0 midline, +1 patient's left.
        index: vertebra or rib number where it matters, else 0.
    """

    kind: Kind
    points: np.ndarray
    size: np.ndarray
    activity: float
    depth: float
    tissue: Tissue = "bone"
    angle: float = 0.0
    site: str = ""
    side: int = 0
    index: int = 0

    def peak(self) -> float:
        """Largest projected value (thickness x activity) in mm: what a lesion's contrast refers to."""
        if self.kind == "tube":
            return float(2.0 * self.size.max() * self.activity)
        if self.kind == "blob":
            return float(self.activity)
        return float(2.0 * (self.size[3] if self.kind == "shell" else self.size[2]) * self.activity)

    def point_at(
        self, rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0
    ) -> tuple[np.ndarray, float]:
        """A random point inside the shape (tube: within length fraction [lo, hi]) and its axis angle."""
        if self.kind == "tube" and len(self.points) > 1:
            seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
            cum = np.concatenate([[0.0], np.cumsum(seg)])
            s = rng.uniform(lo, hi) * cum[-1]
            i = int(np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1))
            frac = (s - cum[i]) / max(seg[i], 1e-6)
            d = self.points[i + 1] - self.points[i]
            return self.points[i] + frac * d, math.atan2(d[1], d[0])
        if self.kind in ("ellipsoid", "shell"):
            r, phi = math.sqrt(rng.uniform(0.0, 0.8)), rng.uniform(0.0, 2 * math.pi)
            u, v = r * self.size[0] * math.cos(phi), r * self.size[1] * math.sin(phi)
            c, s = math.cos(self.angle), math.sin(self.angle)
            return self.points[0] + np.array([u * c - v * s, u * s + v * c]), self.angle
        return self.points[0].copy(), self.angle


def _tube(points, radii, activity, depth, site="", side=0, index=0, tissue: Tissue = "bone") -> Shape:
    pts = np.asarray(points, dtype=np.float64)
    return Shape(
        "tube",
        pts,
        np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),)).copy(),
        activity,
        depth,
        tissue,
        0.0,
        site,
        side,
        index,
    )


def _ellipsoid(
    centre,
    along,
    across,
    depth_semi,
    activity,
    depth,
    angle=0.0,
    site="",
    side=0,
    index=0,
    tissue: Tissue = "bone",
    shell=0.0,
) -> Shape:
    kind: Kind = "shell" if shell > 0 else "ellipsoid"
    size = np.array([along, across, depth_semi, shell], dtype=np.float64)
    return Shape(
        kind, np.asarray([centre], dtype=np.float64), size, activity, depth, tissue, angle, site, side, index
    )


def _blob(
    centre, sigma_along, sigma_across, peak, depth, angle=0.0, tissue: Tissue = "lesion", site=""
) -> Shape:
    return Shape(
        "blob",
        np.asarray([centre], dtype=np.float64),
        np.array([sigma_along, sigma_across]),
        peak,
        depth,
        tissue,
        angle,
        site,
    )


@dataclass(frozen=True)
class Body:
    """A patient's anatomy: constant across their studies.

    Attributes:
        height: vertex to sole, mm.
        width: lateral scale of the trunk skeleton (1 = average).
        girth: soft-tissue scale (1 = average, > 1 = obese).
        arm_abduction: degrees, (right, left); 0 = arm along the body.
        forearms_on_belly: hands resting on the abdomen instead of along the thighs.
        leg_spread: degrees each leg is turned outwards.
        scoliosis: lateral spine deviation amplitude, mm (signed).
        rib_drop: steepness of the ribs (1 = average).
        head_turn: degrees of head tilt.
        bone_uptake, soft_tissue, kidney_uptake: relative concentrations (renal function, age).
        texture_seed: seeds the patient's own uneven uptake (per bone and a smooth field), same every study.
    """

    height: float
    width: float
    girth: float
    arm_abduction: tuple[float, float]
    forearms_on_belly: bool
    leg_spread: float
    scoliosis: float
    rib_drop: float
    head_turn: float
    bone_uptake: float
    soft_tissue: float
    kidney_uptake: float
    texture_seed: int = 0


def sample_body(rng: np.random.Generator) -> Body:
    """Draw one patient's anatomy (adult cohort, either sex)."""
    return Body(
        height=float(np.clip(rng.normal(1700.0, 90.0), 1500.0, 1950.0)),
        width=float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.15)),
        girth=float(np.clip(rng.lognormal(0.0, 0.14), 0.85, 1.3)),
        arm_abduction=(float(rng.uniform(0.0, 6.0)), float(rng.uniform(0.0, 6.0))),
        forearms_on_belly=bool(rng.random() < 0.18),
        leg_spread=float(rng.uniform(0.0, 3.5)),
        scoliosis=float(
            rng.normal(0.0, 4.0) + (rng.choice([-1, 1]) * rng.uniform(8, 16) if rng.random() < 0.12 else 0.0)
        ),
        rib_drop=float(rng.uniform(0.85, 1.15)),
        head_turn=float(rng.normal(0.0, 3.0)),
        bone_uptake=float(rng.lognormal(0.0, 0.15)),
        soft_tissue=float(rng.lognormal(0.0, 0.2)),
        kidney_uptake=float(rng.lognormal(0.0, 0.45)),
        texture_seed=int(rng.integers(2**31)),
    )


# Vertebral levels: (name, y / height, half-width mm). Cervical C2-C7, thoracic, lumbar.
_CERVICAL = [(f"C{i}", 0.104 + 0.0118 * (i - 2), 11.0) for i in range(2, 8)]
_THORACIC = [(f"T{i}", 0.178 + 0.0138 * (i - 1), 13.0 + 0.6 * i) for i in range(1, 13)]
_LUMBAR = [(f"L{i}", 0.347 + 0.0215 * (i - 1), 21.0 + 1.2 * i) for i in range(1, 6)]
# Rib cage half-width at each rib, fraction of height (ribs 1..12); 11 and 12 float.
_RIB_REACH = [0.052, 0.068, 0.078, 0.086, 0.091, 0.094, 0.096, 0.096, 0.094, 0.09, 0.075, 0.06]


def _spine_x(body: Body, y: float) -> float:
    top, bottom = 0.178 * body.height, 0.433 * body.height
    f = min(max((y - top) / (bottom - top), 0.0), 1.0)
    return body.scoliosis * math.sin(math.pi * f)


def skeleton(body: Body) -> list[Shape]:
    """Bones of the whole body in the body frame; activities relative to bone uptake 1."""
    h, w = body.height, body.width
    X, Y = (lambda f: f * h * w), (lambda f: f * h)  # lateral trunk scale vs. craniocaudal scale
    shapes: list[Shape] = []
    add = shapes.append

    # Skull: a shell brighter at its rim, face and skull base; the head may be tilted.
    turn = math.radians(body.head_turn)
    add(
        _ellipsoid(
            (0.0, Y(0.064)), Y(0.043), Y(0.062), Y(0.054), 0.9, 0.5, angle=turn, site="skull", shell=7.0
        )
    )
    add(
        _ellipsoid((math.sin(turn) * Y(0.02), Y(0.086)), 22.0, 15.0, 12.0, 1.4, 0.15, site="skull")
    )  # maxilla/sinuses
    add(
        _tube(
            [
                (-Y(0.036), Y(0.092)),
                (-Y(0.029), Y(0.116)),
                (0.0, Y(0.128)),
                (Y(0.029), Y(0.116)),
                (Y(0.036), Y(0.092)),
            ],
            6.0,
            0.9,
            0.3,
            site="skull",
        )
    )
    for s in (-1, 1):
        add(
            _ellipsoid((s * Y(0.028), Y(0.084)), 14.0, 10.0, 14.0, 0.9, 0.5, site="skull", side=s)
        )  # petrous bone

    # Spine: vertebral bodies, posterior elements, sacrum and sacroiliac joints.
    add(_tube([(0.0, Y(0.097)), (0.0, Y(0.172))], 9.0, 0.7, 0.72, site="spine"))
    for index, (name, fy, half) in enumerate(_CERVICAL + _THORACIC + _LUMBAR):
        y = Y(fy)
        x = _spine_x(body, y)
        step = Y(0.0118 if name[0] == "C" else 0.0138 if name[0] == "T" else 0.0215)
        add(_ellipsoid((x, y), half, 0.47 * step, 14.0 + half * 0.5, 0.85, 0.72, site="spine", index=index))
        if name[0] != "C":
            for s in (-1, 1):
                add(
                    _ellipsoid(
                        (x + s * (half + 3.0), y - 0.15 * step),
                        5.0,
                        0.28 * step,
                        10.0,
                        0.9,
                        0.88,
                        site="spine",
                        side=s,
                        index=index,
                    )
                )
    column = [(_spine_x(body, Y(f)), Y(f)) for f in np.linspace(0.175, 0.445, 10)]
    add(_tube(column, np.linspace(9.0, 16.0, 10), 0.35, 0.72))  # discs and end plates between the bodies
    add(_ellipsoid((0.0, Y(0.468)), X(0.028), Y(0.03), 20.0, 0.9, 0.8, site="sacrum"))
    add(_tube([(0.0, Y(0.48)), (0.0, Y(0.503))], [12.0, 5.0], 0.7, 0.8, site="sacrum"))

    # Pelvis, per side.
    for s in (-1, 1):
        add(
            _tube([(s * X(0.026), Y(0.447)), (s * X(0.031), Y(0.478))], 7.0, 1.3, 0.8, site="pelvis", side=s)
        )  # SI joint
        add(
            _ellipsoid(
                (s * X(0.06), Y(0.433)),
                X(0.033),
                Y(0.026),
                7.0,
                0.9,
                0.55,
                angle=-s * 0.45,
                site="pelvis",
                side=s,
            )
        )
        crest = [
            (s * X(0.03), Y(0.42)),
            (s * X(0.058), Y(0.405)),
            (s * X(0.084), Y(0.41)),
            (s * X(0.093), Y(0.425)),
            (s * X(0.088), Y(0.445)),
            (s * X(0.07), Y(0.474)),
        ]
        add(_tube(crest, 6.0, 1.0, 0.5, site="pelvis", side=s))
        hip = np.array([s * X(0.056), Y(0.487)])
        roof = [
            hip + 24.0 * np.array([math.cos(a), math.sin(a)])
            for a in np.linspace(math.radians(200), math.radians(340), 5)
        ]
        add(_tube(roof, 6.0, 1.1, 0.5, site="pelvis", side=s))  # acetabular roof
        add(
            _tube(
                [hip + np.array([-s * 16.0, 10.0]), (s * Y(0.011), Y(0.497))],
                7.0,
                0.9,
                0.3,
                site="pelvis",
                side=s,
            )
        )  # sup. ramus
        add(
            _tube(
                [(s * Y(0.012), Y(0.505)), (s * X(0.036), Y(0.521)), (s * X(0.05), Y(0.5))],
                [6.0, 9.0, 8.0],
                0.9,
                0.6,
                site="pelvis",
                side=s,
            )
        )

    # Legs: femur, knee, tibia, fibula, ankle, foot. The legs turn outwards by `leg_spread`.
    limbs = joints(body)
    spread = math.tan(math.radians(body.leg_spread))
    for s in (-1, 1):
        hip = limbs[("hip", s)]

        def leg_x(base: float, y: float, s: int = s) -> float:
            return s * (base + spread * (y - Y(0.49)))

        trochanter = (s * X(0.083), Y(0.497))
        add(_ellipsoid(tuple(hip), 22.0, 22.0, 22.0, 1.0, 0.5, site="femur_proximal", side=s))
        add(_tube([tuple(hip), trochanter], [14.0, 16.0], 1.0, 0.5, site="femur_proximal", side=s))
        add(_ellipsoid(trochanter, 14.0, 20.0, 18.0, 0.9, 0.5, site="femur_proximal", side=s))
        knee_x, knee_y = limbs[("knee", s)]
        add(
            _tube(
                [(s * X(0.078), Y(0.5)), (s * X(0.072), Y(0.56))],
                13.0,
                0.7,
                0.5,
                site="femur_proximal",
                side=s,
            )
        )
        add(
            _tube(
                [(s * X(0.072), Y(0.56)), (knee_x, knee_y - 20.0)],
                [13.0, 14.0],
                0.65,
                0.5,
                site="femur",
                side=s,
            )
        )
        add(_ellipsoid((knee_x, knee_y - 6.0), 38.0, 26.0, 34.0, 0.75, 0.5, site="knee", side=s))
        add(
            _ellipsoid(
                (knee_x, knee_y - 6.0), 20.0, 23.0, 10.0, 0.9, 0.08, angle=math.pi / 2, site="knee", side=s
            )
        )  # patella
        add(_ellipsoid((knee_x, knee_y + 24.0), 35.0, 16.0, 28.0, 0.75, 0.45, site="knee", side=s))
        ankle_y = Y(0.953)
        add(
            _tube(
                [(knee_x, knee_y + 30.0), (leg_x(Y(0.045), ankle_y), ankle_y - 8.0)],
                [12.0, 10.0],
                0.65,
                0.3,
                site="tibia",
                side=s,
            )
        )
        add(
            _tube(
                [(knee_x + s * Y(0.018), Y(0.74)), (leg_x(Y(0.064), ankle_y), ankle_y)],
                5.0,
                0.5,
                0.6,
                site="tibia",
                side=s,
            )
        )
        ankle_x = limbs[("ankle", s)][0]
        add(_ellipsoid((ankle_x, ankle_y), 28.0, 15.0, 24.0, 0.9, 0.5, site="ankle", side=s))
        add(_ellipsoid((ankle_x + s * 4.0, Y(0.968)), 22.0, 17.0, 24.0, 1.0, 0.5, site="foot", side=s))
        for k in range(3):
            base = ankle_x + s * (k * 7.0 - 4.0)
            add(
                _tube(
                    [(base, Y(0.977)), (base + s * (4.0 + 3.0 * k), Y(0.996))],
                    4.0,
                    0.7,
                    0.3,
                    site="foot",
                    side=s,
                )
            )

    # Arms: humerus, elbow, forearm, wrist and hand; optionally resting on the belly.
    for s in (-1, 1):
        shoulder, elbow, wrist = (limbs[(k, s)] for k in ("shoulder", "elbow", "wrist"))
        direction = (wrist - elbow) / np.linalg.norm(wrist - elbow)
        across = np.array([-direction[1], direction[0]])
        add(_ellipsoid(tuple(shoulder), 23.0, 23.0, 23.0, 0.9, 0.5, site="humerus_proximal", side=s))
        add(
            _tube(
                [tuple(shoulder), tuple(shoulder + 0.35 * (elbow - shoulder))],
                12.0,
                0.7,
                0.5,
                site="humerus_proximal",
                side=s,
            )
        )
        add(
            _tube(
                [tuple(shoulder + 0.35 * (elbow - shoulder)), tuple(elbow)],
                [12.0, 13.0],
                0.6,
                0.5,
                site="humerus",
                side=s,
            )
        )
        add(_ellipsoid(tuple(elbow), 24.0, 16.0, 20.0, 0.75, 0.5, site="elbow", side=s))
        for offset, radius in ((7.0, 6.0), (-7.0, 5.0)):
            add(
                _tube(
                    [tuple(elbow + offset * across), tuple(wrist + 0.8 * offset * across)],
                    radius,
                    0.55,
                    0.5,
                    site="forearm",
                    side=s,
                )
            )
        add(
            _ellipsoid(
                tuple(wrist + 10.0 * direction),
                18.0,
                14.0,
                14.0,
                1.0,
                0.5,
                angle=math.atan2(direction[1], direction[0]),
                site="hand",
                side=s,
            )
        )
        for k in range(4):
            fan = (k - 1.5) * 0.12
            d = np.array(
                [
                    direction[0] * math.cos(fan) - direction[1] * math.sin(fan),
                    direction[0] * math.sin(fan) + direction[1] * math.cos(fan),
                ]
            )
            start = wrist + 24.0 * direction + (k - 1.5) * 8.0 * across
            add(
                _tube(
                    [tuple(start), tuple(start + 45.0 * d), tuple(start + 85.0 * d)],
                    [4.0, 3.5, 2.5],
                    0.6,
                    0.5,
                    site="hand",
                    side=s,
                )
            )

    # Shoulder girdle and thorax.
    for s in (-1, 1):
        sup, inf = (s * X(0.05), Y(0.19)), (s * X(0.068), Y(0.296))
        glenoid, acromion = (s * X(0.1), Y(0.206)), (s * X(0.11), Y(0.184))
        add(_tube([sup, inf], 5.0, 0.8, 0.88, site="scapula", side=s))
        add(_tube([inf, glenoid], 7.0, 0.8, 0.88, site="scapula", side=s))
        add(_tube([(s * X(0.052), Y(0.213)), acromion], 6.0, 0.9, 0.85, site="scapula", side=s))
        centre = ((sup[0] + inf[0] + glenoid[0]) / 3, (sup[1] + inf[1] + glenoid[1]) / 3)
        add(
            _ellipsoid(
                centre,
                Y(0.046),
                Y(0.021),
                3.0,
                0.8,
                0.88,
                angle=math.pi / 2 + s * 0.2,
                site="scapula",
                side=s,
            )
        )
        add(_ellipsoid(glenoid, 9.0, 16.0, 14.0, 1.0, 0.6, site="scapula", side=s))
        add(
            _tube(
                [
                    (s * Y(0.017), Y(0.188)),
                    (s * X(0.045), Y(0.182)),
                    (s * X(0.08), Y(0.176)),
                    (s * X(0.105), Y(0.184)),
                ],
                7.0,
                0.9,
                0.15,
                site="clavicle",
                side=s,
            )
        )
        add(
            _ellipsoid((s * Y(0.018), Y(0.191)), 9.0, 9.0, 9.0, 1.2, 0.1, site="sternum", side=s)
        )  # sternoclavicular joint
    add(_ellipsoid((0.0, Y(0.2)), 22.0, 20.0, 7.0, 1.0, 0.05, site="sternum"))
    add(_ellipsoid((0.0, Y(0.213)), 12.0, 7.0, 7.0, 1.3, 0.05, site="sternum"))  # manubriosternal joint
    add(_tube([(0.0, Y(0.215)), (0.0, Y(0.283))], [13.0, 9.0], 0.55, 0.05, site="sternum"))

    for s in (-1, 1):
        for i in range(1, 13):
            _, fy, half = _THORACIC[i - 1]
            y = Y(fy)
            x0 = _spine_x(body, y) + s * (half + 3.0)
            reach = X(_RIB_REACH[i - 1])
            drop = Y(0.04 + 0.0025 * i) * body.rib_drop
            back = [
                (x0, y),
                (s * 0.35 * reach, y - Y(0.004)),
                (s * 0.75 * reach, y + 0.12 * drop),
                (s * reach, y + 0.38 * drop),
            ]
            if i >= 11:  # floating ribs: posterior arc only
                back = [(x0, y), (s * 0.5 * reach, y + 0.1 * drop), (s * reach, y + 0.45 * drop)]
                add(_tube(back, 5.0, 0.45, 0.85, site="rib", side=s, index=i))
                continue
            front = [
                back[-1],
                (s * 0.94 * reach, y + 0.62 * drop),
                (s * 0.72 * reach, y + 0.86 * drop),
                (s * max(0.42 * reach, Y(0.025)), y + drop),
            ]
            add(_tube(back, 5.0, 0.45, 0.85, site="rib", side=s, index=i))
            add(_tube(front, 4.5, 0.3, 0.2, site="rib", side=s, index=i))
    return shapes


def soft_tissue(body: Body) -> list[Shape]:
    """Body outline (background activity proportional to thickness) with air-filled lungs subtracted."""
    h, w, g = body.height, body.width, body.girth
    Y = lambda f: f * h  # noqa: E731
    shapes = [
        _ellipsoid((0.0, Y(0.064)), Y(0.05), Y(0.069), Y(0.058), 1.0, 0.5, tissue="soft"),
        _tube([(0.0, Y(0.11)), (0.0, Y(0.18))], Y(0.033) * g, 1.0, 0.5, tissue="soft"),
        # Torso as a tube of elliptic cross-section (AP depth ~0.6 x width): activity scaled by 0.6.
        _tube(
            [
                (0.0, Y(0.17)),
                (0.0, Y(0.205)),
                (0.0, Y(0.29)),
                (0.0, Y(0.37)),
                (0.0, Y(0.45)),
                (0.0, Y(0.505)),
            ],
            np.array([0.055, 0.115 * w, 0.11 * w * g, 0.1 * w * g, 0.108 * w * g, 0.088 * w * g]) * h,
            0.6 * g,
            0.5,
            tissue="soft",
        ),
    ]
    for s in (-1, 1):
        shapes.append(
            _ellipsoid(
                (s * 0.05 * h * w, Y(0.255)),
                Y(0.04) * w,
                Y(0.075),
                Y(0.05),
                -0.45,
                0.5,
                angle=math.pi / 2,
                tissue="soft",
            )
        )
    bones = joints(body)
    for s in (-1, 1):
        shoulder, elbow, wrist = (bones[(k, s)] for k in ("shoulder", "elbow", "wrist"))
        shapes.append(
            _tube([shoulder, elbow, wrist], np.array([0.03, 0.025, 0.018]) * h * g, 1.0, 0.5, tissue="soft")
        )
        shapes.append(
            _ellipsoid(
                tuple(
                    np.array(wrist)
                    + 0.03
                    * h
                    * (np.array(wrist) - np.array(elbow))
                    / np.linalg.norm(np.array(wrist) - np.array(elbow))
                ),
                Y(0.025),
                Y(0.014),
                Y(0.012),
                1.0,
                0.5,
                tissue="soft",
            )
        )
        hip, knee, ankle = (bones[(k, s)] for k in ("hip", "knee", "ankle"))
        thigh_top = (hip[0] + s * 0.012 * h, hip[1] + 0.035 * h)
        shapes.append(
            _tube(
                [thigh_top, knee, ankle], np.array([0.056 * g, 0.034 * g, 0.022]) * h, 1.0, 0.5, tissue="soft"
            )
        )
        shapes.append(
            _ellipsoid((ankle[0], ankle[1] + 0.025 * h), Y(0.028), Y(0.02), Y(0.03), 1.0, 0.5, tissue="soft")
        )
    return shapes


def joints(body: Body) -> dict[tuple[str, int], np.ndarray]:
    """Joint centres (x, y) mm in the body frame, keyed by (name, side): shoulder, elbow, wrist, hip,
    knee, ankle. One source for the skeleton, the soft tissue and the findings placed at joints."""
    h, w = body.height, body.width
    spread = math.tan(math.radians(body.leg_spread))
    out: dict[tuple[str, int], np.ndarray] = {}
    for s, abduction in zip((-1, 1), body.arm_abduction, strict=True):
        shoulder = np.array([s * 0.106 * h * w, 0.195 * h])
        a = math.radians(abduction)
        elbow = shoulder + 0.186 * h * np.array([s * math.sin(a), math.cos(a)])
        if body.forearms_on_belly:
            target = np.array([s * 0.015 * h, 0.41 * h])
            direction = (target - elbow) / np.linalg.norm(target - elbow)
        else:
            b = a + math.radians(5.0)  # carrying angle of the elbow
            direction = np.array([s * math.sin(b), math.cos(b)])
        knee_y, ankle_y = 0.703 * h, 0.953 * h
        out[("shoulder", s)] = shoulder
        out[("elbow", s)] = elbow
        out[("wrist", s)] = elbow + 0.146 * h * direction
        out[("hip", s)] = np.array([s * 0.056 * h * w, 0.487 * h])
        out[("knee", s)] = np.array([s * (0.048 * h + spread * (knee_y - 0.49 * h)), knee_y])
        out[("ankle", s)] = np.array([s * (0.05 * h + spread * (ankle_y - 0.49 * h)), ankle_y])
    return out


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Findings:
    """What distinguishes a patient's scans: lesions (blobs relative to bone uptake) and a superscan flag.

    Attributes:
        label: "healthy", "metastasis" or "benign".
        lesions: Gaussian blobs in the body frame; `activity` is the peak relative to bone uptake 1.
        kinds: short names of what was placed (for tests and documentation, never for labels).
        superscan: diffusely raised skeletal uptake with faint kidneys and bladder.
    """

    label: str
    lesions: tuple[Shape, ...] = ()
    kinds: tuple[str, ...] = ()
    superscan: bool = False


# Where metastases arise: axial skeleton first (spine, pelvis, ribs), then skull and proximal long bones.
_METASTASIS_SITES = {
    "spine": 0.33,
    "pelvis": 0.17,
    "sacrum": 0.05,
    "rib": 0.2,
    "skull": 0.06,
    "femur_proximal": 0.08,
    "humerus_proximal": 0.04,
    "scapula": 0.03,
    "sternum": 0.04,
}
# Benign patterns (weights): symmetric degenerative joints, lower-lumbar facet/disc disease, a run of
# aligned rib fractures; and the ones a reader can mistake for a metastasis -- a solitary rib
# fracture, an osteoporotic vertebral compression fracture, degenerative change in one joint only.
_BENIGN_KINDS = {
    "knees": 0.2,
    "shoulders": 0.12,
    "hips": 0.06,
    "rib_fracture": 0.15,
    "rib_fracture_solitary": 0.14,
    "vertebral_fracture": 0.1,
    "spondylosis": 0.12,
    "joint_unilateral": 0.12,
    "hands_feet": 0.05,
}
# Metastatic burden: (probability, lesion count range); the solitary and faint few keep metastasis vs.
# benign change from being trivially separable, as in the clinic.
_METASTASIS_BURDEN = ((0.18, (1, 2)), (0.25, (2, 4)), (0.42, (4, 9)), (0.15, (9, 17)))
_SUPERSCAN_P = 0.05
# Peak of a metastasis / a normal vertebral body's; faint: early disease. Hotter ones would let a
# global image statistic (the 99.9th percentile) give the class away (phantom.global_statistics).
_METASTASIS_CONTRAST = (1.2, 3.0)
_FAINT_CONTRAST = (0.6, 1.3)


def _lesion_on(
    host: Shape,
    rng: np.random.Generator,
    contrast: float,
    size_mm: float,
    elongation: float = 1.0,
    lo: float = 0.0,
    hi: float = 1.0,
) -> Shape:
    """A hot spot inside `host` whose peak is `contrast` x the projected peak of a normal vertebral body.

    A common reference (not the host's own peak) keeps a rib metastasis as conspicuous as a spinal one,
    as on real scans, although a rib is much thinner than a vertebra.
    """
    centre, axis = host.point_at(rng, lo, hi)
    sigma_along = size_mm * elongation if host.kind == "tube" else size_mm * rng.uniform(0.8, 1.3)
    angle = axis if host.kind == "tube" else rng.uniform(0, math.pi)
    return _blob(
        tuple(centre), sigma_along, size_mm, contrast * REFERENCE_PEAK, host.depth, angle, site=host.site
    )


def _sample_metastases(
    body: Body,
    rng: np.random.Generator,
    count: int,
    bones: list[Shape],
    contrast_range: tuple[float, float] = _METASTASIS_CONTRAST,
) -> list[Shape]:
    hosts: dict[str, list[Shape]] = {}
    for sh in bones:
        if sh.site in _METASTASIS_SITES and sh.kind != "blob":
            hosts.setdefault(sh.site, []).append(sh)
    sites = list(_METASTASIS_SITES)
    p = np.array([_METASTASIS_SITES[s] for s in sites])
    lesions = []
    for site in rng.choice(sites, size=count, p=p / p.sum()):
        candidates = hosts[str(site)]
        if site == "spine":  # thoracolumbar vertebral bodies far more often than cervical ones
            candidates = [c for c in candidates if c.index >= 6 or rng.random() < 0.15] or candidates
        host = candidates[rng.integers(len(candidates))]
        size = rng.uniform(5.0, 13.0)  # sigma: FWHM 1.2-3 cm, a hot spot of 1-3 cm
        elongation = rng.uniform(1.3, 2.6) if site == "rib" else 1.0
        contrast = rng.uniform(*contrast_range)
        lo, hi = (0.0, 0.5) if site == "femur_proximal" and host.kind == "tube" else (0.0, 1.0)
        lesions.append(_lesion_on(host, rng, contrast, size, elongation, lo, hi))
    return lesions


def _symmetric_pair(
    body: Body,
    rng: np.random.Generator,
    joint: str,
    offset: tuple[float, float],
    size: float,
    contrast: float,
    depth: float = 0.5,
) -> list[Shape]:
    """Degenerative uptake on both sides of a joint; the two sides differ by at most ~25 %."""
    blobs = []
    for s in (-1, 1):
        c = joints(body)[(joint, s)] + np.array([s * offset[0], offset[1]])
        blobs.append(
            _blob(
                tuple(c),
                size * rng.uniform(0.85, 1.15),
                size * rng.uniform(0.7, 1.0),
                contrast * rng.uniform(0.8, 1.2),
                depth,
                rng.uniform(-0.3, 0.3),
                site=joint,
            )
        )
    return blobs


_JOINT_OFFSETS = {"knee": (-12.0, 14.0), "shoulder": (8.0, -14.0), "hip": (4.0, -18.0), "ankle": (0.0, 14.0)}


def _sample_benign(body: Body, rng: np.random.Generator, kind: str, bones: list[Shape]) -> list[Shape]:
    bone_peak = REFERENCE_PEAK
    if kind == "knees":
        return _symmetric_pair(
            body, rng, "knee", (-12.0, 14.0), rng.uniform(7, 12), rng.uniform(1.0, 2.5) * bone_peak
        )
    if kind == "shoulders":
        return _symmetric_pair(
            body, rng, "shoulder", (8.0, -14.0), rng.uniform(6, 10), rng.uniform(0.8, 1.8) * bone_peak, 0.4
        )
    if kind == "hips":
        return _symmetric_pair(
            body, rng, "hip", (4.0, -18.0), rng.uniform(6, 10), rng.uniform(0.8, 1.8) * bone_peak
        )
    if kind == "hands_feet":
        joint = "wrist" if rng.random() < 0.6 else "ankle"
        blobs = _symmetric_pair(
            body, rng, joint, (0.0, 14.0), rng.uniform(5, 8), rng.uniform(1.0, 2.0) * bone_peak
        )
        if joint == "wrist":  # small joints of the hand (MCP) on both sides
            for s in (-1, 1):
                base = joints(body)[("wrist", s)]
                for k in range(int(rng.integers(1, 4))):
                    c = base + np.array([s * (k - 1) * 8.0, 0.03 * body.height])
                    blobs.append(
                        _blob(tuple(c), 4.0, 4.0, rng.uniform(0.8, 1.6) * bone_peak, 0.5, site="hand")
                    )
        return blobs
    if kind == "joint_unilateral":  # degenerative change of one joint only: asymmetric, yet benign
        joint = str(rng.choice(["knee", "shoulder", "hip", "ankle"], p=[0.4, 0.3, 0.15, 0.15]))
        side = int(rng.choice([-1, 1]))
        offset = _JOINT_OFFSETS[joint]
        c = joints(body)[(joint, side)] + np.array([side * offset[0], offset[1]])
        size = rng.uniform(6.0, 11.0)
        return [
            _blob(tuple(c), size, size * rng.uniform(0.7, 1.0), rng.uniform(1.0, 2.2) * bone_peak,
                  0.4 if joint == "shoulder" else 0.5, rng.uniform(-0.3, 0.3), site=joint)
        ]  # fmt: skip
    if kind == "rib_fracture_solitary":  # one focal spot on one rib: looks like a solitary rib metastasis
        ribs = [sh for sh in bones if sh.site == "rib" and 3 <= sh.index <= 10]
        host = ribs[rng.integers(len(ribs))]
        return [
            _lesion_on(
                host, rng, rng.uniform(1.0, 3.0), rng.uniform(5.0, 9.0), rng.uniform(1.0, 1.6), 0.3, 0.95
            )
        ]
    if kind == "vertebral_fracture":  # compression fracture: a hot band across one thoracolumbar body
        host = [sh for sh in bones if sh.site == "spine" and sh.kind == "ellipsoid" and sh.side == 0][
            int(rng.integers(10, 20))
        ]
        return [_blob(tuple(host.points[0]), host.size[0] * rng.uniform(0.8, 1.1), rng.uniform(5.0, 8.0),
                      rng.uniform(1.0, 2.5) * bone_peak, host.depth, 0.0, site="spine")]  # fmt: skip
    if kind == "rib_fracture":  # focal spots on consecutive ribs, aligned vertically: trauma, not tumour
        side = int(rng.choice([-1, 1]))
        first = int(rng.integers(4, 9))
        n = int(rng.integers(2, 5))
        t = rng.uniform(0.55, 0.95)
        blobs = []
        for sh in bones:
            if sh.site == "rib" and sh.side == side and first <= sh.index < first + n and sh.depth > 0.5:
                centre, axis = sh.point_at(np.random.default_rng(0), t, t)
                blobs.append(
                    _blob(
                        tuple(centre),
                        rng.uniform(5.0, 8.0),
                        rng.uniform(4.0, 5.0),
                        rng.uniform(0.8, 1.6) * bone_peak,
                        sh.depth,
                        axis,
                        site="rib",
                    )
                )
        return blobs
    # Spondylosis: osteophytes at one lower-lumbar disc level, both margins.
    level = [sh for sh in bones if sh.site == "spine" and sh.kind == "ellipsoid" and sh.side == 0][
        -int(rng.integers(1, 3))
    ]
    blobs = []
    for s in (-1, 1):
        c = level.points[0] + np.array([s * level.size[0], level.size[1] * 1.6])
        blobs.append(
            _blob(tuple(c), rng.uniform(5, 8), 4.0, rng.uniform(0.6, 1.2) * bone_peak, 0.72, site="spine")
        )
    if rng.random() < 0.6:  # facet arthropathy at the same level, posterior, on one or both sides
        for s in (-1, 1) if rng.random() < 0.6 else (int(rng.choice([-1, 1])),):
            c = level.points[0] + np.array([s * (level.size[0] + 3.0), level.size[1]])
            blobs.append(
                _blob(tuple(c), rng.uniform(5, 8), rng.uniform(4, 6), rng.uniform(0.8, 1.6) * bone_peak, 0.88,
                      site="spine")
            )  # fmt: skip
    return blobs


def sample_findings(body: Body, label: str, rng: np.random.Generator) -> Findings:
    """Findings of a patient of class `label`.

    Metastatic patients: mostly 2-8 asymmetric hot spots in the axial skeleton and proximal long bones,
    some solitary or faint, a few with many, a few superscans. Benign: 1-3 degenerative or traumatic
    patterns, mostly symmetric (joints, lower-lumbar facets) or aligned (consecutive rib fractures),
    some solitary or one-sided. Healthy: at most mild symmetric joint uptake of age.
    """
    if label not in BONE_CLASSES:
        raise ValueError(f"unknown bone-scan class {label!r}; expected one of {BONE_CLASSES}")
    bones = skeleton(body)
    if label == "metastasis":
        if rng.random() < _SUPERSCAN_P:
            lesions = _sample_metastases(body, rng, int(rng.integers(12, 25)), bones)
            faint = tuple(replace(le, activity=le.activity * 0.3, size=le.size * 1.2) for le in lesions)
            return Findings(label, faint, ("superscan",), superscan=True)
        p = np.array([w for w, _ in _METASTASIS_BURDEN])
        lo, hi = _METASTASIS_BURDEN[int(rng.choice(len(p), p=p / p.sum()))][1]
        burden = int(rng.integers(lo, hi))
        faint = burden <= 2 and rng.random() < 0.5  # early disease: one or two faint spots
        lesions = _sample_metastases(
            body, rng, burden, bones, _FAINT_CONTRAST if faint else _METASTASIS_CONTRAST
        )
        return Findings(label, tuple(lesions), ("faint_metastases" if faint else "metastases",))
    if label == "benign":
        names = list(_BENIGN_KINDS)
        p = np.array(list(_BENIGN_KINDS.values()))
        n_kinds = int(rng.choice([1, 2, 3], p=[0.55, 0.33, 0.12]))
        kinds = rng.choice(names, size=n_kinds, replace=False, p=p / p.sum())
        lesions = [le for k in kinds for le in _sample_benign(body, rng, str(k), bones)]
        return Findings(label, tuple(lesions), tuple(str(k) for k in kinds))
    if rng.random() < 0.25:  # mild, symmetric, age-related joint uptake in otherwise normal scans
        kind = str(rng.choice(["knees", "shoulders"]))
        lesions = [replace(le, activity=le.activity * 0.35) for le in _sample_benign(body, rng, kind, bones)]
        return Findings(label, tuple(lesions), (f"mild_{kind}",))
    return Findings(label)


def progress_findings(findings: Findings, rng: np.random.Generator, body: Body) -> Findings:
    """The same patient at a later study: metastases grow and new ones appear; other findings persist."""
    if findings.label != "metastasis" or findings.superscan:
        return findings
    grown = tuple(replace(le, activity=le.activity * rng.uniform(0.9, 1.5)) for le in findings.lesions)
    new = _sample_metastases(body, rng, int(rng.poisson(1.5)), skeleton(body))
    return replace(findings, lesions=grown + tuple(new))


# --------------------------------------------------------------------------- acquisition and rendering


@dataclass(frozen=True)
class Acquisition:
    """What changes from one study of a patient to the next.

    Attributes:
        top_mm: vertex distance below the top of the field of view.
        shift_mm: lateral offset of the body axis from the image centre (positive = image right).
        tilt_deg: rotation of the body in the image plane.
        counts: total counts of the (anterior, posterior) views.
        bladder: (semi-axis mm, concentration relative to bone).
        injection: Gaussian hot spot at the injection site (None when invisible).
        contamination: urine contamination hot spot (None when absent).
        uptake_jitter: per-study factors on (soft tissue, kidneys).
    """

    top_mm: float
    shift_mm: float
    tilt_deg: float
    counts: tuple[float, float]
    bladder: tuple[float, float]
    injection: Shape | None
    contamination: Shape | None
    uptake_jitter: tuple[float, float] = (1.0, 1.0)


def sample_acquisition(
    body: Body, rng: np.random.Generator, counts_range: tuple[float, float]
) -> Acquisition:
    """Positioning, count level, bladder filling, injection site and contamination of one study."""
    total = float(rng.uniform(*counts_range))
    posterior = float(np.clip(total * rng.uniform(0.95, 1.15), *counts_range))
    free = FOV_HEIGHT_MM - body.height
    injection = None
    site = rng.choice(["antecubital", "hand", "none"], p=[0.6, 0.28, 0.12])
    side = int(rng.choice([-1, 1]))
    if site != "none":
        joint = joints(body)[("elbow" if site == "antecubital" else "wrist", side)]
        centre = joint + rng.normal(0.0, 6.0, 2) + (np.array([0.0, 40.0]) if site == "hand" else 0.0)
        sigma = rng.uniform(4.0, 12.0)
        injection = _blob(
            tuple(centre),
            sigma,
            sigma * rng.uniform(0.7, 1.0),
            float(rng.lognormal(math.log(60.0), 0.8)),
            0.25,
            tissue="injection",
        )
    contamination = None
    if rng.random() < 0.12:
        c = (rng.uniform(-0.07, 0.07) * body.height, rng.uniform(0.5, 0.62) * body.height)
        contamination = _blob(
            c,
            rng.uniform(3.0, 8.0),
            rng.uniform(3.0, 6.0),
            float(rng.lognormal(math.log(50.0), 0.6)),
            float(rng.choice([0.05, 0.95])),
            tissue="contamination",
        )
    return Acquisition(
        top_mm=float(rng.uniform(0.08, 0.6) * free),
        shift_mm=float(rng.normal(0.0, 12.0)),
        tilt_deg=float(rng.normal(0.0, 1.5)),
        counts=(total, posterior),
        bladder=(float(rng.uniform(28.0, 60.0)), float(rng.lognormal(math.log(3.0), 0.6))),
        injection=injection,
        contamination=contamination,
        uptake_jitter=(float(rng.lognormal(0.0, 0.1)), float(rng.lognormal(0.0, 0.2))),
    )


def organs(body: Body, acq: Acquisition) -> list[Shape]:
    """Kidneys (upper poles tilted medially, left higher) and the urinary bladder."""
    h, w = body.height, body.width
    shapes = []
    for s in (-1, 1):
        centre = (s * 0.052 * h * w, (0.343 if s > 0 else 0.351) * h)
        shapes.append(
            _ellipsoid(centre, 55.0, 26.0, 22.0, 1.0, 0.78, angle=math.pi / 2 - s * 0.3, tissue="kidney")
        )
        shapes.append(
            _blob((centre[0] - s * 10.0, centre[1]), 10.0, 7.0, 40.0, 0.78, tissue="kidney")
        )  # renal pelvis
    size, activity = acq.bladder
    shapes.append(
        _ellipsoid((0.0, 0.489 * h), size, 0.75 * size, 0.8 * size, activity, 0.35, tissue="bladder")
    )
    return shapes


def _uptake(body: Body, acq: Acquisition, findings: Findings) -> dict[str, float]:
    """Concentration multiplier per tissue group for one study."""
    soft, kidney = acq.uptake_jitter
    factors = {
        "bone": body.bone_uptake,
        "lesion": body.bone_uptake,
        "soft": 0.12 * body.soft_tissue * soft,
        "kidney": 0.5 * body.kidney_uptake * kidney,
        "bladder": 1.0,
        "injection": 1.0,
        "contamination": 1.0,
    }
    if findings.superscan:  # avid skeleton, little tracer left for kidneys, bladder and soft tissue
        factors.update(bone=2.6 * body.bone_uptake, lesion=2.6 * body.bone_uptake)
        factors.update(soft=factors["soft"] * 0.45, kidney=factors["kidney"] * 0.08, bladder=0.15)
    return factors


@dataclass(frozen=True)
class BoneViews:
    """One whole-body study.

    Attributes:
        anterior: (H, W) uint16 counts, patient's right on the image left.
        posterior: (H, W) uint16 counts as acquired from behind (patient's right on the image right).
        findings: what was drawn.
        acquisition: positioning and count level.
        pixel_spacing: mm per pixel (square pixels).
        lesion_shares: (N, 2, 2) per lesion and view, (its own, all other) expected counts at its centre.
    """

    anterior: np.ndarray
    posterior: np.ndarray
    findings: Findings
    acquisition: Acquisition
    pixel_spacing: float
    lesion_shares: np.ndarray | None = None


def _view_weights(depth: float) -> np.ndarray:
    return np.array(
        [math.exp(-ATTENUATION_K * depth), math.exp(-ATTENUATION_K * (1.0 - depth))], dtype=np.float32
    )


def _draw(canvas: np.ndarray, shape: Shape, to_px, tilt: float, spacing: float, gain: float) -> None:
    """Draw a body-frame shape with the study's positioning onto a (2, H, W) canvas."""
    gains = _view_weights(shape.depth) * gain * shape.activity
    if shape.kind == "tube":
        draw_tube(canvas, to_px(shape.points), shape.size / spacing, gains)
    elif shape.kind in ("ellipsoid", "shell"):
        centre = to_px(shape.points)[0]
        along, across, depth, shell = shape.size / spacing
        draw_ellipsoid(
            canvas, (centre[0], centre[1]), (along, across, depth), shape.angle + tilt, gains, shell
        )
    else:
        centre = to_px(shape.points)[0]
        s_along, s_across = shape.size / spacing
        draw_gaussian(
            canvas, (centre[0], centre[1]), (s_along, s_across), shape.angle + tilt, gains / spacing
        )


def _wide_blur(canvas: np.ndarray, sigma: float, factor: int = 4) -> np.ndarray:
    """Gaussian blur of each (H, W) view with a large sigma, computed on a 4x coarser grid (10x faster)."""
    views, height, width = canvas.shape
    if height % factor or width % factor or sigma < 2 * factor:
        return ndimage.gaussian_filter(canvas, sigma=(0, sigma, sigma))
    coarse = canvas.reshape(views, height // factor, factor, width // factor, factor).mean(axis=(2, 4))
    coarse = ndimage.gaussian_filter(coarse, sigma=(0, sigma / factor, sigma / factor))
    return _upsample(coarse, factor)


def _upsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge the last two axes by `factor`: repeat, then a box filter (linear-like interpolation, cheap)."""
    big = np.repeat(np.repeat(image, factor, axis=-2), factor, axis=-1)
    return ndimage.uniform_filter(big, size=(1,) * (image.ndim - 2) + (factor, factor), mode="nearest")


def image_frame(body: Body, acq: Acquisition, size: tuple[int, int]):
    """The study's positioning as a function: body-frame (N, 2) (x, y) mm -> anterior-view (N, 2) (row, col) px."""
    height, width = size
    spacing = FOV_HEIGHT_MM / height
    tilt = math.radians(acq.tilt_deg)
    pivot = np.array([0.0, 0.5 * body.height])
    rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])

    def to_px(points: np.ndarray) -> np.ndarray:
        p = (np.asarray(points, dtype=np.float64) - pivot) @ rot.T + pivot
        return np.stack(
            [(p[:, 1] + acq.top_mm) / spacing, (p[:, 0] + acq.shift_mm) / spacing + width / 2 - 0.5], axis=1
        )

    return to_px


LESION_FIELDS = (
    "site", "x_mm", "y_rel", "contrast", "sigma_mm", "depth", "row", "col",
    "anterior_own", "anterior_other", "posterior_own", "posterior_other",
)  # fmt: skip


def lesion_records(views: BoneViews, body: Body, size: tuple[int, int]) -> list[dict]:
    """What a reader would note of each lesion (the phantom's ground truth; see `bonescan.ceiling`).

    Per lesion: site, lateral position x (mm, + = patient's left), craniocaudal position y as a
    fraction of body height, contrast (peak / a normal vertebral body's peak), size (geometric-mean
    sigma, mm), depth (0 anterior, 1 posterior), and its centre in the anterior view at `size`
    (row, col px; the posterior view as acquired holds it at column W - 1 - col); per view, the
    expected counts there from the lesion itself and from everything else (`BoneViews.lesion_shares`).
    """
    findings = views.findings
    if not findings.lesions:
        return []
    centres = image_frame(body, views.acquisition, size)(np.stack([le.points[0] for le in findings.lesions]))
    shares = views.lesion_shares if views.lesion_shares is not None else np.full((len(centres), 2, 2), np.nan)
    return [
        {
            "site": le.site or "other",
            "x_mm": round(float(le.points[0][0]), 2),
            "y_rel": round(float(le.points[0][1] / body.height), 4),
            "contrast": round(float(le.activity / REFERENCE_PEAK), 4),
            "sigma_mm": round(float(math.sqrt(le.size[0] * le.size[1])), 3),
            "depth": round(float(le.depth), 3),
            "row": round(float(rc[0]), 2),
            "col": round(float(rc[1]), 2),
            "anterior_own": round(float(sh[0, 0]), 3),
            "anterior_other": round(float(sh[0, 1]), 3),
            "posterior_own": round(float(sh[1, 0]), 3),
            "posterior_other": round(float(sh[1, 1]), 3),
        }
        for le, rc, sh in zip(findings.lesions, centres, shares, strict=True)
    ]


def expected_counts(body: Body, findings: Findings, acq: Acquisition, size: tuple[int, int]) -> np.ndarray:
    """Noise-free (2, H, W) float32 expected counts of the (anterior, posterior-as-acquired) views."""
    return _expected(body, findings, acq, size)[0]


def _expected(
    body: Body, findings: Findings, acq: Acquisition, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Expected counts of the views and the lesions' share of them at each lesion's centre.

    Returns:
        (2, H, W) float32 expected counts; (N, 2, 2) float64 per lesion and view (anterior, posterior):
        (counts from the lesion itself, counts from everything else) at the lesion's centre pixel --
        the signal and the background of the visibility check (`bonescan.ceiling`).
    """
    height, width = size
    spacing = FOV_HEIGHT_MM / height
    tilt = math.radians(acq.tilt_deg)
    to_px = image_frame(body, acq, size)

    uptake = _uptake(body, acq, findings)
    texture = np.random.default_rng(body.texture_seed)
    bones = skeleton(body)
    canvas = np.zeros((2, height, width), dtype=np.float32)
    for shape, unevenness in zip(bones, texture.lognormal(0.0, 0.15, len(bones)), strict=True):
        _draw(canvas, shape, to_px, tilt, spacing, uptake[shape.tissue] * unevenness)
    # Trabecular/cortical heterogeneity: a smooth multiplicative field (~2 cm) over the skeleton.
    field = texture.standard_normal((height // 4 + 1, width // 4 + 1)).astype(np.float32)
    field = _upsample(ndimage.gaussian_filter(field, 20.0 / (4 * spacing)), 4)[:height, :width]
    canvas *= np.clip(1.0 + 0.12 * field / max(float(field.std()), 1e-6), 0.5, 1.5)
    extras = [s for s in (acq.injection, acq.contamination) if s is not None]
    for shape in soft_tissue(body) + organs(body, acq) + list(findings.lesions) + extras:
        _draw(canvas, shape, to_px, tilt, spacing, uptake[shape.tissue])
    np.maximum(canvas, 0.0, out=canvas)
    canvas[1] = canvas[1, :, ::-1]  # the posterior detector sees the patient from behind
    blur = (0, COLLIMATOR_SIGMA_MM / spacing, COLLIMATOR_SIGMA_MM / spacing)
    blurred = ndimage.gaussian_filter(canvas, sigma=blur)
    scatter = _wide_blur(canvas, SCATTER_SIGMA_MM / spacing)
    out = np.empty_like(canvas)
    for v, total in enumerate(acq.counts):
        primary = blurred[v] / max(float(blurred[v].sum()), 1e-9)
        halo = scatter[v] / max(float(scatter[v].sum()), 1e-9)
        background = min(BACKGROUND_COUNTS, 0.05 * total / (height * width))  # never more than 5 % of counts
        out[v] = (total - background * height * width) * (
            (1 - SCATTER_FRACTION) * primary + SCATTER_FRACTION * halo
        ) + background
    return out, _lesion_shares(out, findings, to_px, tilt, spacing, uptake["lesion"], blurred, acq, blur)


def _lesion_shares(out, findings, to_px, tilt, spacing, gain, blurred, acq, blur) -> np.ndarray:
    """(N, 2, 2): per lesion and view, (its own primary counts, all other counts) at its centre pixel.

    A lesion is a Gaussian blob, so its blurred peak is analytic: peak x prod(s / sqrt(s^2 + c^2)) over
    its two axes (s its sigma, c the collimator's, in pixels).
    """
    shares = np.zeros((len(findings.lesions), 2, 2))
    _, height, width = out.shape
    c2 = blur[1] ** 2
    for i, lesion in enumerate(findings.lesions):
        sig = np.maximum(lesion.size / spacing, 0.6)
        peak = _view_weights(lesion.depth) * gain * lesion.activity / spacing  # canvas peak per view
        peak = peak * float(np.prod(sig / np.sqrt(sig**2 + c2)))
        row, col = to_px(lesion.points)[0]
        r, c = min(max(round(row), 0), height - 1), min(max(round(col), 0), width - 1)
        for v, (total, cc) in enumerate(zip(acq.counts, (c, width - 1 - c), strict=True)):
            background = min(BACKGROUND_COUNTS, 0.05 * total / (height * width))
            own = (total - background * height * width) * (1 - SCATTER_FRACTION) * float(peak[v])
            own /= max(float(blurred[v].sum()), 1e-9)
            shares[i, v] = own, max(float(out[v, r, cc]) - own, 0.0)
    return shares


def render_study(
    body: Body, findings: Findings, acq: Acquisition, size: tuple[int, int], rng: np.random.Generator
) -> BoneViews:
    """Poisson-sampled anterior and posterior views of one study."""
    expected, shares = _expected(body, findings, acq, size)
    counts = np.minimum(rng.poisson(expected), np.iinfo(np.uint16).max).astype(np.uint16)
    return BoneViews(counts[0], counts[1], findings, acq, FOV_HEIGHT_MM / size[0], shares)


def render_bone_study(rng: np.random.Generator, label: str, cfg: PhantomConfig | None = None) -> BoneViews:
    """A new patient's single study of class `label` at cfg.bone_size and cfg.counts_per_view.

    Convenience for tests elsewhere: `render_bone_study(np.random.default_rng(0), "metastasis",
    PhantomConfig(bone_size=(256, 64)))`.
    """
    cfg = cfg or PhantomConfig()
    body = sample_body(rng)
    findings = sample_findings(body, label, rng)
    acq = sample_acquisition(body, rng, cfg.counts_per_view)
    return render_study(body, findings, acq, cfg.bone_size, rng)


# --------------------------------------------------------------------------- chest radiographs


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field of correlation length `sigma` pixels."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class ChestGeometry:
    """A chest radiograph's patient and positioning, in normalised image units (u across, v down, 0..1).

    Attributes:
        scale: thorax size relative to the detector.
        shift: (v, u) offset of the patient from the centre.
        rotation: radians, in-plane.
        diaphragm: height of the right dome's top (lower = deeper inspiration); the left is ~3 % lower.
        heart: heart size factor (cardiothoracic ratio ~0.45 x heart).
        lung_width: lateral extent of the lungs.
        exposure, gamma: display processing of the detector's log-exposure.
    """

    scale: float
    shift: tuple[float, float]
    rotation: float
    diaphragm: float
    heart: float
    lung_width: float
    exposure: float
    gamma: float


def sample_chest_geometry(rng: np.random.Generator) -> ChestGeometry:
    """Draw one chest patient's geometry and exposure."""
    return ChestGeometry(
        scale=float(rng.uniform(0.88, 1.02)),
        shift=(float(rng.normal(0.0, 0.015)), float(rng.normal(0.0, 0.02))),
        rotation=float(rng.normal(0.0, 0.025)),
        diaphragm=float(rng.uniform(0.6, 0.7)),
        heart=float(rng.uniform(0.85, 1.2)),
        lung_width=float(rng.uniform(0.93, 1.05)),
        exposure=float(rng.uniform(0.9, 1.1)),
        gamma=float(rng.uniform(0.85, 1.15)),
    )


def render_chest(rng: np.random.Generator, label: str, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """A frontal (PA) chest radiograph of class `label` as (H, W) float32 brightness in [0, 1].

    Brightness is in the MONOCHROME2 sense: bone, heart and abdomen light, lungs dark, air outside the
    body black; the patient's right is on the image left. Classes: normal; covid19 (bilateral,
    peripheral, lower-zone ground-glass opacities); lung_opacity (consolidation of one lobe, with air
    bronchograms); viral_pneumonia (diffuse bilateral reticular interstitial pattern, perihilar).
    """
    if label not in CHEST_CLASSES:
        raise ValueError(f"unknown chest class {label!r}; expected one of {CHEST_CLASSES}")
    height, width = size
    geo = sample_chest_geometry(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    x0, y0 = xx / width - 0.5 - geo.shift[1], yy / height - 0.5 - geo.shift[0]
    cos, sin = math.cos(geo.rotation), math.sin(geo.rotation)
    u = (x0 * cos + y0 * sin) / geo.scale + 0.5  # patient coordinates of every pixel
    v = (-x0 * sin + y0 * cos) / geo.scale + 0.5
    edge = 2.5 / min(height, width) / geo.scale  # width of soft mask edges, ~2.5 pixels
    px_per_unit = geo.scale * min(height, width)
    one = np.ones(1, dtype=np.float32)

    def to_px(points) -> np.ndarray:  # patient (u, v) -> pixel (row, col)
        p = np.asarray(points, dtype=np.float64)
        pu, pv = (p[:, 0] - 0.5) * geo.scale, (p[:, 1] - 0.5) * geo.scale
        return np.stack(
            [
                (pu * sin + pv * cos + 0.5 + geo.shift[0]) * height,
                (pu * cos - pv * sin + 0.5 + geo.shift[1]) * width,
            ],
            1,
        )

    def lines(paths, radius: float, amplitude: float) -> np.ndarray:
        canvas = np.zeros((1, height, width), dtype=np.float32)
        for path in paths:
            draw_tube(
                canvas,
                to_px(path),
                np.asarray(radius) * px_per_unit,
                amplitude * one / (2 * radius * px_per_unit),
            )
        return canvas[0]  # peak ~amplitude on each path

    du = np.abs(u - 0.5)
    # Body: neck widening into the shoulders, chest wall down to the abdomen; brighter where thicker.
    half = 0.085 + 0.375 * _smoothstep((v - 0.02) / 0.16) - 0.02 * _smoothstep((v - 0.7) / 0.3)
    body = _sigmoid((half - du) / edge)
    thickness = np.sqrt(np.clip(1.0 - (du / np.maximum(half, 1e-3)) ** 2, 0.0, 1.0))
    bright = body * (0.42 + 0.3 * thickness)
    # Lungs: rounded apices, widest at the costophrenic angles, domed diaphragm below.
    lung = np.zeros_like(u)
    for side in (-1, 1):
        centre = 0.5 + side * 0.2 * geo.lung_width
        lateral = 0.5 + side * (0.1 + 0.3 * geo.lung_width * np.sqrt(np.clip((v - 0.07) / 0.5, 0.0, 1.0)))
        dome = geo.diaphragm + (0.03 if side > 0 else 0.0) + 0.09 * ((u - centre) / 0.2) ** 2
        inside = (
            _sigmoid(side * (lateral - u) / edge) * _sigmoid((dome - v) / edge) * _sigmoid((v - 0.07) / edge)
        )
        lung = np.maximum(lung, inside * _sigmoid((side * (u - 0.5) - 0.045) / edge))
    heart_c = (0.5 + 0.045 * geo.heart, geo.diaphragm - 0.045)
    heart_r = np.hypot((u - heart_c[0]) / (0.14 * geo.heart), (v - heart_c[1]) / (0.12 * geo.heart))
    heart = _sigmoid((1.0 - heart_r) / (edge / (0.13 * geo.heart)))
    mediastinum = _sigmoid((0.055 + 0.025 * _smoothstep((v - 0.3) / 0.2) - du) / edge) * _sigmoid(
        (v - 0.05) / edge
    )
    knob = _sigmoid((1.0 - np.hypot((u - 0.565) / 0.035, (v - 0.27) / 0.03)) / 0.15)
    lung = lung * (1.0 - np.maximum.reduce([heart, mediastinum, knob]))
    zone = 0.75 + 0.25 * _smoothstep((v - 0.15) / 0.5)  # upper zones darker (less soft tissue overlying)
    bright = bright - 0.38 * lung / zone + 0.08 * (heart + knob) * body
    trachea = _sigmoid((0.018 - du) / edge) * _sigmoid((0.3 - v) / edge)
    bright -= 0.1 * trachea
    if rng.random() < 0.6:  # gastric air bubble under the left dome
        bright -= 0.15 * _sigmoid(
            (1.0 - np.hypot((u - 0.64) / 0.05, (v - geo.diaphragm - 0.08) / 0.03)) / 0.2
        )

    # Bones: spine, ribs (posterior arcs rise then fall; anterior arcs descend medially), clavicles, humeri.
    bones = 0.05 * _sigmoid((0.028 - du) / edge) * (1.0 + 0.1 * np.cos(2 * np.pi * v / 0.05))
    ribs_back, ribs_front = [], []
    for side in (-1, 1):
        for i in range(10):
            vi = 0.07 + 0.057 * i
            reach = 0.3 + 0.1 * math.sin(math.pi * min(i + 2, 10) / 12)
            ribs_back.append(
                [
                    (0.5 + side * 0.03, vi),
                    (0.5 + side * 0.15, vi - 0.012),
                    (0.5 + side * 0.3, vi + 0.02),
                    (0.5 + side * reach, vi + 0.09),
                ]
            )
            ribs_front.append(
                [
                    (0.5 + side * reach, vi + 0.09),
                    (0.5 + side * 0.33, vi + 0.17),
                    (0.5 + side * 0.2, vi + 0.22),
                ]
            )
        clavicle = [
            (0.5 + side * 0.04, 0.15),
            (0.5 + side * 0.17, 0.12),
            (0.5 + side * 0.3, 0.1),
            (0.5 + side * 0.38, 0.12),
        ]
        bones = bones + lines([clavicle], 0.012, 0.16)
        bones = bones + lines([[(0.5 + side * 0.44, 0.15)]], 0.05, 0.12)  # humeral head
        bones = bones + lines(
            [[(0.5 + side * 0.35, 0.13), (0.5 + side * 0.31, 0.3), (0.5 + side * 0.37, 0.42)]], 0.006, 0.07
        )
    ribs = lines(ribs_back, 0.016, 0.06) + lines(ribs_front, 0.012, 0.035)
    bones = bones + ribs * (0.35 + 0.65 * np.clip(lung * 1.5, 0.0, 1.0))  # ribs fade over the abdomen
    bright += ndimage.gaussian_filter(bones, 0.8) * body

    # Pulmonary vessels: tapering branches from both hila, visible only over the lungs.
    paths = []
    for side in (-1, 1):
        hilum = np.array([0.5 + side * 0.1, 0.43])
        for _ in range(14):
            angle = rng.uniform(-0.45 * math.pi, 0.55 * math.pi)
            direction = np.array([side * math.cos(angle), math.sin(angle)])
            pts = [hilum + rng.normal(0.0, 0.01, 2)]
            for step in range(4):
                direction = direction + rng.normal(0.0, 0.3, 2)
                direction /= np.linalg.norm(direction)
                pts.append(pts[-1] + direction * rng.uniform(0.035, 0.06) * (1.0 - 0.15 * step))
            paths.append(pts)
    vessels = ndimage.gaussian_filter(lines(paths, 0.005, 0.05), 0.8)
    bright += vessels * lung * (1.2 - 0.6 * _smoothstep((np.hypot(du - 0.1, v - 0.43)) / 0.3))

    finding = np.zeros_like(u)
    if label == "covid19":  # peripheral, basal, bilateral ground glass
        for side in (-1, 1):
            for _ in range(int(rng.integers(3, 6))):
                pu = 0.5 + side * rng.uniform(0.25, 0.38) * geo.lung_width
                pv = rng.uniform(0.4, geo.diaphragm - 0.02)
                sg = rng.uniform(0.04, 0.08)
                finding += rng.uniform(0.07, 0.14) * np.exp(
                    -0.5 * (((u - pu) / sg) ** 2 + ((v - pv) / (1.4 * sg)) ** 2)
                )
        finding *= np.clip(1.0 + 0.3 * _smooth_noise(rng, (height, width), 4.0), 0.0, None) * lung
    elif label == "lung_opacity":  # one lobe consolidated, air bronchograms inside
        lobe = str(rng.choice(["RUL", "RML", "RLL", "LUL", "LLL"]))
        side = -1 if lobe[0] == "R" else 1
        fissure = rng.uniform(0.33, 0.4)
        same_side = _sigmoid(side * (u - 0.5) / edge)
        region = {
            "RUL": _sigmoid((fissure - v) / edge),
            "RML": _sigmoid((v - fissure) / edge) * _sigmoid((u - 0.3) / (4 * edge)),
            "RLL": _sigmoid((v - 0.48) / (6 * edge)) * _sigmoid((0.36 - u) / (6 * edge) + 2.0),
            "LUL": _sigmoid((0.46 - v) / (6 * edge)),
            "LLL": _sigmoid((v - 0.5) / (6 * edge)),
        }[lobe]
        hilum = np.array([0.5 + side * 0.1, 0.43])
        bronchi = []
        for _ in range(5):
            d = np.array([side * rng.uniform(0.2, 1.0), rng.uniform(-1.0, 1.0)])
            d /= np.linalg.norm(d)
            bronchi.append([hilum, hilum + 0.1 * d, hilum + 0.18 * (d + rng.normal(0, 0.2, 2))])
        dense = rng.uniform(0.32, 0.45) * region * same_side * lung
        dense *= np.clip(1.0 + 0.12 * _smooth_noise(rng, (height, width), 4.0), 0.0, None)
        finding = dense - 0.45 * dense * np.clip(
            ndimage.gaussian_filter(lines(bronchi, 0.006, 1.0), 0.7), 0.0, 1.0
        )
    elif label == "viral_pneumonia":  # reticular net: zero-crossing contours of smooth random fields
        net = np.zeros_like(u)
        for sigma in (2.5, 4.0):
            net = np.maximum(net, np.exp(-0.5 * (_smooth_noise(rng, (height, width), sigma) / 0.18) ** 2))
        hila = np.minimum(np.hypot(u - 0.4, v - 0.43), np.hypot(u - 0.6, v - 0.43))
        perihilar = 0.4 + np.exp(-0.5 * (hila / 0.18) ** 2)
        finding = (rng.uniform(0.06, 0.1) * net + rng.uniform(0.03, 0.06)) * perihilar * lung
    bright += finding

    bright = np.clip(bright * geo.exposure, 0.0, None) ** geo.gamma
    bright = ndimage.gaussian_filter(bright, 0.6)  # detector unsharpness
    bright += rng.normal(0.0, rng.uniform(0.006, 0.015), bright.shape)  # quantum noise
    return np.clip(bright, 0.0, 1.0).astype(np.float32)


__all__ = [
    "BONE_CLASSES",
    "CHEST_CLASSES",
    "LESION_FIELDS",
    "Acquisition",
    "Body",
    "BoneViews",
    "Findings",
    "Shape",
    "draw_ellipsoid",
    "draw_gaussian",
    "draw_tube",
    "expected_counts",
    "image_frame",
    "lesion_records",
    "organs",
    "progress_findings",
    "render_bone_study",
    "render_chest",
    "render_study",
    "sample_acquisition",
    "sample_body",
    "sample_findings",
    "skeleton",
    "joints",
    "soft_tissue",
]
