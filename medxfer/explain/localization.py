"""Grad-CAM lesion localization scores: does a classifier look where the finding is?

Scores any medxfer classifier on any cohort whose items carry a lesion mask (``item["mask"]``: a
PNG / NIfTI in the cached image's pixel grid, nonzero = lesion; :func:`medxfer.engine.load_cohort`
with ``localization=True`` adds it from the manifest's mask column). The maps are
:func:`medxfer.explain.gradcam.gradcam_maps`; the explained class is
:func:`medxfer.explain.gradcam.explained_class`.

Scores
------
Per case, at the network input resolution (after the same resize-with-pad as the image):

- ``hit`` — the pointing game: 1 if the Grad-CAM maximum (``argmax``, first in index order on
  ties) lies inside the mask, else 0;
- ``dice`` / ``iou`` — Dice and IoU of the region ``cam >= threshold * max(cam)`` (default
  threshold 0.5) with the mask.

A map that is zero everywhere scores 0 on all three. Only items with a non-empty mask (after
loading and resizing) are scored; the others are skipped (``loc_cases`` of :func:`summarize`
says how many were scored). Right-breast mammograms (MG, laterality R) are mirrored by the
modality preset before the network sees them; their masks are mirrored the same way.
"""
from __future__ import annotations

import csv
import os
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset
from torch import nn

from ..core.files import atomic_writer
from ..transforms.pipelines import localization_transforms
from .gradcam import explained_class, gradcam_maps

@dataclass
class LocalizationCase:
    """Localization scores of one case (coordinates in network-input pixels, x first)."""

    item_id: str
    fold: int
    label: int
    hit: float
    dice: float
    iou: float
    class_index: int = 1  # the explained class
    peak_x: int = -1  # Grad-CAM argmax (x = image column, y = row); -1 for an all-zero map
    peak_y: int = -1


# ----------------------------------------------------------------------------- scores

def score_map(cam: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float]:
    """``(hit, dice, iou)`` of one map against one mask (same shape; mask nonzero = lesion).

    ``hit``: 1.0 if ``argmax(cam)`` (first in index order on ties) is inside the mask, else 0.0.
    ``dice`` / ``iou``: overlap of ``cam >= threshold * cam.max()`` with the mask. A map without
    a positive value scores (0, 0, 0). An empty mask raises ``ValueError`` (nothing to localize:
    :func:`localize` skips such cases).
    """
    cam, truth = np.asarray(cam, dtype=np.float64), np.asarray(mask) > 0
    if cam.shape != truth.shape:
        raise ValueError(f"cam {cam.shape} and mask {truth.shape} differ in shape")
    if not truth.any():
        raise ValueError("empty mask: localization is undefined")
    top = float(np.nanmax(cam)) if np.isfinite(cam).any() else 0.0
    if not top > 0:
        return 0.0, 0.0, 0.0
    hit = float(truth.flat[int(np.nanargmax(cam))])
    region = cam >= threshold * top
    inter, union = float((region & truth).sum()), float((region | truth).sum())
    return hit, 2.0 * inter / (float(region.sum()) + float(truth.sum())), inter / union


# ----------------------------------------------------------------------------- cohorts

def localize(model: nn.Module, items: list[dict], image_size: int, in_channels: int, device: torch.device | str,
             batch_size: int = 8, threshold: float = 0.5, overlays: int = 8
             ) -> tuple[list[LocalizationCase], list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """Grad-CAM localization scores of ``items`` (dicts with ``image`` and ``mask`` paths).

    Images go through the classifier's deterministic pipeline; masks are resized (nearest) and,
    for right MG, mirrored with them. Only items with a non-empty mask are scored (items without
    ``"mask"`` or with an empty one are skipped). Explained class: the positive class (index 1)
    of a binary head, else the case's true ``label``. Returns the cases in item order and up to
    ``overlays`` ``(item_id, image, cam, mask)`` arrays (x-first) for :func:`plot_overlays`.
    """
    model = model.module if hasattr(model, "module") else model  # DDP
    num_classes = int(model.head.out_features)
    dataset = Dataset([i for i in items if i.get("mask")], localization_transforms(image_size, in_channels,
                                                                                  model.preprocessing))
    cases: list[LocalizationCase] = []
    samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    pending: list[dict] = []

    def flush() -> None:
        images = torch.stack([d["image"] for d in pending]).to(device)
        labels = [int(d.get("label", -1)) for d in pending]
        classes = torch.tensor([explained_class(num_classes, y) for y in labels])
        maps = gradcam_maps(model, images, classes).cpu().numpy()
        for d, cam, y, c in zip(pending, maps, labels, classes.tolist()):
            mask = d["mask"][0].numpy() > 0.5
            hit, dice, iou = score_map(cam, mask, threshold)
            px, py = np.unravel_index(int(np.argmax(cam)), cam.shape) if cam.max() > 0 else (-1, -1)
            cases.append(LocalizationCase(str(d["item_id"]), int(d.get("fold", -1)), y, hit, dice, iou, c,
                                          int(px), int(py)))
            if len(samples) < overlays:
                samples.append((str(d["item_id"]), d["image"].float().mean(0).numpy(), cam, mask))
        pending.clear()

    for k in range(len(dataset)):
        data = dataset[k]
        if not bool((data["mask"] > 0.5).any()):
            continue
        pending.append(data)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return cases, samples


# ----------------------------------------------------------------------------- outputs

def write_localization_csv(path: str | os.PathLike, cases: list[LocalizationCase]) -> Path:
    """Per-case CSV: ``item_id, fold, label, hit, dice, iou`` (then class_index, peak_x, peak_y)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f.name for f in fields(LocalizationCase)])
        w.writerows(astuple(c) for c in cases)
    return path


def plot_overlays(path: str | os.PathLike, samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                  title: str = "") -> Path:
    """A row of cases: the image in gray, the Grad-CAM as a translucent heat map, the mask contour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n = max(len(samples), 1)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.4 if title else 3.2), dpi=90, squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    for ax, (item_id, image, cam, mask) in zip(axes[0], samples):
        ax.imshow(np.asarray(image).T, cmap="gray")  # x-first arrays: transpose to rows × columns
        ax.imshow(np.asarray(cam).T, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
        if np.asarray(mask).any():
            ax.contour(np.asarray(mask, dtype=float).T, levels=[0.5], colors="lime", linewidths=1)
        ax.set_title(str(item_id)[:8], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def summarize(cases: list[LocalizationCase]) -> dict[str, float]:
    """``loc_hit``, ``loc_dice``, ``loc_iou`` (means over scored cases; NaN when none) and ``loc_cases``."""
    def mean(key: str) -> float:
        return float(np.mean([getattr(c, key) for c in cases])) if cases else float("nan")

    return {"loc_hit": mean("hit"), "loc_dice": mean("dice"), "loc_iou": mean("iou"), "loc_cases": float(len(cases))}
