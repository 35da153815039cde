"""Grad-CAM heat maps (Selvaraju et al. 2017) over a classifier's named layers, overlays and a case grid.

Uses the `grad-cam` library (pytorch_grad_cam). Every bonescan classifier names its target layers
in `gradcam_layers()`; the multi-scale model names one per trunk (densenet, vgg, resnext), so the
overlays show where each branch looks. A map is computed for the class the model predicts, which is
the question a reader of a report asks ("why did it say metastasis?").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

__all__ = ["GalleryItem", "gradcam_maps", "overlay", "overlay_name", "save_case_grid", "save_overlays"]

log = logging.getLogger(__name__)


def gradcam_maps(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[int],
    layers: Mapping[str, nn.Module] | None = None,
) -> dict[str, np.ndarray]:
    """Grad-CAM of each target layer for a batch.

    Args:
        model: classifier returning logits (B, K); put in eval mode by the caller.
        images: (B, C, H, W) model inputs, on the model's device.
        targets: class index to explain for each image (e.g. the predicted class).
        layers: name -> layer; default `model.gradcam_layers()`.

    Returns:
        name -> (B, H, W) float32 maps in [0, 1] at input resolution (each map min-max scaled).
    """
    if len(targets) != len(images):
        raise ValueError(f"{len(targets)} targets for {len(images)} images")
    layers = dict(layers if layers is not None else model.gradcam_layers())
    out: dict[str, np.ndarray] = {}
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    for name, layer in layers.items():
        with GradCAM(model=model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images, targets=cam_targets)  # (B, H, W)
        out[name] = np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)
    return out


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.6) -> np.ndarray:
    """A grayscale image (H, W) in [0, 1] under a jet-coloured map (H, W) -> (H, W, 3) float32 in [0, 1]."""
    rgb = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=image_weight).astype(np.float32) / 255.0


@dataclass(frozen=True)
class GalleryItem:
    """One case of the grid: an image, its caption and one Grad-CAM map per layer.

    Attributes:
        key: file-name stem (a pseudonymous image id).
        image: (H, W) float32 in [0, 1] (first input channel).
        caption: short, e.g. "true metastasis\npred healthy 0.71" (shown above the input panel).
        maps: layer name -> (H, W) float32 in [0, 1].
    """

    key: str
    image: np.ndarray
    caption: str
    maps: Mapping[str, np.ndarray]


def overlay_name(key: str, layer: str) -> str:
    """File name of one item's overlay for one layer: `<key>_<layer>.png` (dots in layer names as dashes)."""
    return f"{key}_{layer.replace('.', '-')}.png"


def save_overlays(items: Sequence[GalleryItem], out_dir: str | Path) -> list[Path]:
    """Write one `<key>_<layer>.png` RGB overlay per item and layer; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in items:
        for layer, cam in item.maps.items():
            path = out_dir / overlay_name(item.key, layer)
            Image.fromarray(np.round(overlay(item.image, cam) * 255).astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def save_case_grid(
    cells: Mapping[tuple[str, str], Sequence[GalleryItem]],
    rows: Sequence[str],
    columns: Sequence[str],
    path: str | Path,
    title: str = "Grad-CAM",
) -> Path:
    """A grid PNG: one block per (row, column), e.g. (correct / wrong, true class), its items side by side.

    Each item is drawn as the overlay of its first layer (the per-layer overlays are files of their own);
    an empty block says so. Wide rather than tall: classes across, outcomes down.
    """
    items = [item for group in cells.values() for item in group]
    if not items:
        raise ValueError("no images for the Grad-CAM grid")
    per_cell = max(len(group) for group in cells.values())
    layer = next(iter(items[0].maps))
    h, w = items[0].image.shape
    panel_w = 1.3
    panel_h = panel_w * h / w
    fig = Figure(figsize=(panel_w * per_cell * len(columns) + 0.8, (panel_h + 0.6) * len(rows) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), per_cell * len(columns), squeeze=False)
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            group = list(cells.get((row, column), ()))
            for k in range(per_cell):
                ax = axes[r][c * per_cell + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if k < len(group):
                    ax.imshow(np.clip(overlay(group[k].image, group[k].maps[layer]), 0.0, 1.0), interpolation="nearest")
                    ax.set_title(group[k].caption, fontsize=5)
                else:
                    ax.set_axis_off()
                    if k == 0:
                        ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=7, color="grey",
                                transform=ax.transAxes)  # fmt: skip
    fig.suptitle(f"{title} ({layer})", fontsize=9)
    fig.tight_layout(rect=(0.04, 0.0, 1.0, 0.92))
    for c, column in enumerate(columns):  # headers and row names placed on the laid-out grid
        box = axes[0][c * per_cell].get_position()
        fig.text(box.x0, 0.925, column, fontsize=8, weight="bold", va="bottom")
    for r, row in enumerate(rows):
        box = axes[r][0].get_position()
        fig.text(0.012, (box.y0 + box.y1) / 2, row, fontsize=8, weight="bold", rotation=90, va="center")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    log.info("Grad-CAM grid of %d image(s), %d x %d blocks -> %s", len(items), len(rows), len(columns), path)
    return path
