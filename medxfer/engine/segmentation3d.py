"""3D segmentation (``input: 3d``): sliding-window inference, per-volume and per-class Dice / HD95.

The network trains on random patches (:mod:`medxfer.transforms.pipelines3d`) and predicts whole
volumes by sliding windows of the patch size (MONAI ``SlidingWindowInferer``, 25 % overlap, Gaussian
blending), for validation and test alike. Scores are per **volume** and per **class** (segment),
on the grid the network saw (the weights' voxel spacing when they record one, else the volume's own):

- ``dice_<class>``: that class's Dice; 1 when the class is absent from both prediction and truth;
- ``hd95_mm_<class>``: its 95th-percentile Hausdorff distance in mm (NaN when the class is absent from
  one of the two: undefined, Dice carries that penalty; NaN too when absent from both: nothing to measure);
- ``dice``, ``hd95_mm``, ``hd95_px``: their means over the classes (HD95 over the classes where it is
  defined; ``hd95_px`` in voxels of the grid's first axis), the columns the report's paired tests read.

The validation Dice that chooses the checkpoint is the same mean foreground Dice per volume (MONAI
``MeanDice`` without background, on one-hot predictions of the whole volume).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.metrics import compute_hausdorff_distance

from ..transforms.pipelines3d import check_roi_size

SW_OVERLAP = 0.25


def inferer(input: str | None, roi_size: Sequence[int] | None = None, sw_batch_size: int = 4):
    """The validation / test inferer: sliding windows of ``roi_size`` for ``input: 3d`` (Gaussian-weighted
    blending of 25 %-overlapping windows), MONAI's ``SimpleInferer`` for 2D samples."""
    if str(input or "2d").lower() != "3d":
        return SimpleInferer()
    return SlidingWindowInferer(roi_size=check_roi_size(roi_size), sw_batch_size=int(sw_batch_size),
                                overlap=SW_OVERLAP, mode="gaussian")


def class_scores(pred: torch.Tensor, truth: torch.Tensor, num_classes: int,
                 spacing: Sequence[float] | None) -> tuple[list[float], list[float]]:
    """Per foreground class (1 … n−1) of two label volumes ``(X, Y, Z)``: Dice and HD95 (in the units of
    ``spacing``, voxels without it). Absent from both: Dice 1, HD95 NaN (no surface to measure: left out of
    the mean over classes rather than counted as a perfect 0); from one: Dice 0, HD95 NaN (undefined)."""
    dices, hds = [], []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        if not p.any() and not t.any():
            dices.append(1.0)
            hds.append(math.nan)
            continue
        dices.append(2.0 * float((p & t).sum()) / float(p.sum() + t.sum()))
        hds.append(hd95(p, t, spacing) if p.any() and t.any() else math.nan)
    return dices, hds


def hd95(pred: torch.Tensor, truth: torch.Tensor, spacing: Sequence[float] | None = None) -> float:
    """The 95th-percentile Hausdorff distance of two non-empty binary masks (2D or 3D), in the units of
    ``spacing`` (one value per axis), pixels / voxels without it (MONAI ``compute_hausdorff_distance``)."""
    def onehot(m: torch.Tensor) -> torch.Tensor:
        return torch.stack([~m, m]).float()[None]

    distance = compute_hausdorff_distance(onehot(pred.bool()), onehot(truth.bool()), include_background=False,
                                          percentile=95,
                                          spacing=None if spacing is None else [float(v) for v in spacing])
    return float(distance.reshape(-1)[0])


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass
class VolumeEvaluation:
    """Test results of a 3D segmentation run: one row per volume; a few (image, truth, pred, title)
    mid-slices for overlays."""

    cases: list[dict] = field(default_factory=list)
    overlays: list[tuple] = field(default_factory=list)


def case_columns(classes: Sequence[str]) -> list[str]:
    """``per_case.csv`` columns of a 3D run: the means, then each foreground class's Dice and HD95."""
    names = [safe_class_name(c) for c in classes[1:]]
    return (["item_id", "fold", "dice", "hd95_px", "hd95_mm"] + [f"dice_{n}" for n in names]
            + [f"hd95_mm_{n}" for n in names])


def safe_class_name(name: str) -> str:
    """A class name as a column / metric suffix: lower case, letters, digits and ``_``."""
    text = "".join(ch if ch.isalnum() else "_" for ch in str(name).strip().lower()).strip("_")
    return text or "class"


@torch.no_grad()
def evaluate_volumes(network: torch.nn.Module, items: list[dict], transform, device, classes: Sequence[str],
                     roi_size: Sequence[int], spacing: Sequence[float] | None = None, amp: bool = False,
                     overlays: int = 4) -> VolumeEvaluation:
    """Sliding-window prediction of each test volume, scored per class (see the module docstring).
    ``spacing`` is the grid the transform resamples to (None: each volume's own, from the manifest)."""
    network.eval()
    sliding = inferer("3d", roi_size)
    result = VolumeEvaluation()
    names = [safe_class_name(c) for c in classes[1:]]
    for item in items:
        data = transform(item)
        image = torch.as_tensor(data["image"])[None].to(device)
        with torch.autocast(device_type=torch.device(device).type, enabled=bool(amp)):
            logits = sliding(image, network)
        pred = logits.float().argmax(1)[0].cpu()
        truth = torch.as_tensor(data["label"])[0].round().long()
        grid = spacing if spacing is not None else [float(v) for v in item.get("spacing") or []]
        grid = grid if grid and all(math.isfinite(float(v)) for v in grid) else None
        dices, hds = class_scores(pred, truth, len(classes), grid)
        hd_mm = _nanmean(hds) if grid is not None else math.nan
        row = {"item_id": item["item_id"], "fold": item["fold"], "dice": float(np.mean(dices)),
               "hd95_mm": hd_mm,
               "hd95_px": hd_mm / float(grid[0]) if grid is not None and math.isfinite(hd_mm) else _nanmean(hds)}
        row.update({f"dice_{n}": d for n, d in zip(names, dices)})
        row.update({f"hd95_mm_{n}": (h if grid is not None else math.nan) for n, h in zip(names, hds)})
        result.cases.append(row)
        if len(result.overlays) < overlays:
            z = int(torch.argmax((truth > 0).flatten(0, 1).sum(0))) if truth.any() else truth.shape[-1] // 2
            result.overlays.append((image[0, 0, :, :, z].cpu().numpy(), (truth[..., z] > 0).numpy(),
                                    (pred[..., z] > 0).numpy(), f"{item['item_id'][:8]} z{z} Dice {row['dice']:.2f}"))
    return result


def summarize_volumes(rows: list[dict], classes: Sequence[str], prefix: str = "test_") -> dict[str, float]:
    """Means over volumes: ``test_dice``, ``test_hd95``, ``test_hd95_mm``, ``test_hd95_undefined_cases``,
    and per class ``test_dice_<class>`` / ``test_hd95_mm_<class>``."""
    def mean(key):
        return _nanmean([float(r[key]) for r in rows])

    out = {f"{prefix}dice": mean("dice"), f"{prefix}hd95": mean("hd95_px"), f"{prefix}hd95_mm": mean("hd95_mm"),
           f"{prefix}hd95_undefined_cases": float(sum(1 for r in rows if not math.isfinite(r["hd95_px"])))}
    for name in (safe_class_name(c) for c in classes[1:]):
        out[f"{prefix}dice_{name}"] = mean(f"dice_{name}")
        out[f"{prefix}hd95_mm_{name}"] = mean(f"hd95_mm_{name}")
    return out
