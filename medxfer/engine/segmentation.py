"""Segmentation pieces the bundle config wires together: Dice / HD95,
overlays, test evaluation with a per-case CSV (for paired Wilcoxon tests), and checkpoints.

Masks come from the manifest's mask column (PNG or NIfTI, nonzero = foreground) in the same
pixel grid as the cached image. HD95 is reported in pixels of the network input and, when the
manifest records the pixel spacing, in millimetres (the resize keeps the aspect ratio, so one
scale factor converts). A case with one empty mask (a missed lesion, a false positive on an
empty truth) has no HD95: the mean is over the others and ``test_hd95_undefined_cases`` counts
them (Dice, which is 0 there, carries the penalty).

Volumes (``slices`` set, or ``input: 2.5d``; see :mod:`.slices`): the network is 2D and sees slice
samples; a sample's mask is slice ``k`` of its volume's mask (the centre of a 2.5D slab). Results are
per **volume**: the predicted slices of a test volume are stacked back (at the network's in-plane
grid) and scored against its stacked mask slices. ``test_dice`` is the mean over test volumes of
that 3D Dice; HD95 is the 3D 95th-percentile Hausdorff distance over the stacked slices: ``hd95_mm``
with the network grid's voxel size (the volume's in-plane spacing scaled by the resize, its slice
spacing times the step between the picked slices), ``hd95_px`` the same distance in network pixels
(without a recorded spacing: on the index grid, one slice step counting as one pixel).
``per_case.csv`` has one row per volume, plus ``slices`` (the slices scored) and ``slice_dice``
(their mean 2D Dice). ``test_slice_dice`` is the mean 2D Dice over all test slices (a slice empty in
both masks counts 1, as a 2D item does) and ``per_slice.csv`` lists them. The volume is what
``slices`` picks (``all``: the whole volume; ``every:K`` / ``range:LO-HI``: those slices only). The
validation Dice that chooses the checkpoint is the same per-volume 3D Dice (:class:`VolumeDice`); 2D
cohorts keep MONAI's ``MeanDice`` (mean of per-image Dice, images with an empty mask ignored).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric

from ..core.files import atomic_write, atomic_writer, safe_json
from ..core.hashing import sha256_file
from ..models import save_checkpoint, weights_params
from ..tracking.layout import (CHECKPOINT_ARTIFACT, METRICS_ARTIFACT, PER_CASE_ARTIFACT, PER_SLICE_ARTIFACT,
                               RUN_CONFIG_ARTIFACT)
from ..transforms.masks import check_mask_grid
from ..transforms.pipelines import segmentation_transforms
from ..transforms.pipelines3d import resolve_spacing, segmentation_transforms_3d
from .batches import batch_values
from .data import Cohort
from .distributed import gather_objects
from .mlflow_run import load_best_checkpoint, log_outcome, software_params
from .segmentation3d import case_columns, evaluate_volumes, hd95, summarize_volumes


def foreground_dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Foreground Dice of two binary masks of any shape; 1 when both are empty."""
    p, t = pred.bool(), truth.bool()
    total = p.sum().item() + t.sum().item()
    return 1.0 if total == 0 else 2.0 * (p & t).sum().item() / total


def dice_and_hd95(pred: torch.Tensor, truth: torch.Tensor,
                  spacing: Sequence[float] | None = None) -> tuple[float, float]:
    """Foreground Dice and 95th-percentile Hausdorff distance of two binary masks, 2D ``(H, W)`` or 3D
    ``(X, Y, S)``; HD95 in pixels / voxels, or in the units of ``spacing`` (one value per axis).

    Both empty: Dice 1, HD95 0. One empty: Dice 0, HD95 NaN (undefined).
    """
    p, t = pred.bool(), truth.bool()
    if not p.any() and not t.any():
        return 1.0, 0.0
    dice = foreground_dice(p, t)
    if not p.any() or not t.any():
        return dice, math.nan
    return dice, hd95(p, t, spacing)


class VolumeDice(Metric):
    """Validation Dice per volume: the foreground Dice of all of an item's samples together (the 3D
    Dice over its stacked slices; a 2D item's own Dice), averaged over items. An item empty in both
    prediction and truth scores 1.

    Reads the samples' ``item_id`` from ``engine.state.batch`` and one-hot ``(pred, label)`` (MONAI's
    post-processing: channel 1 is the foreground) from the output, batched or one sample at a time."""

    def reset(self) -> None:
        self._sums: dict[str, list[int]] = {}
        self._queue: list[str] = []

    def iteration_completed(self, engine) -> None:
        self._queue = [str(i) for i in batch_values(engine.state.batch, "item_id")]
        super().iteration_completed(engine)

    def update(self, output) -> None:
        pred, label = output
        pred, label = torch.as_tensor(pred), torch.as_tensor(label)
        if pred.ndim == 3:  # one decollated sample (C, H, W)
            pred, label = pred[None], label[None]
        if len(self._queue) < pred.shape[0]:
            raise ValueError(f"VolumeDice: {pred.shape[0]} predictions for {len(self._queue)} item ids")
        ids, self._queue = self._queue[:pred.shape[0]], self._queue[pred.shape[0]:]
        p, t = pred[:, 1] > 0.5, label[:, 1] > 0.5
        inter = (p & t).flatten(1).sum(1).tolist()
        total = (p.flatten(1).sum(1) + t.flatten(1).sum(1)).tolist()
        for item_id, i, n in zip(ids, inter, total):
            sums = self._sums.setdefault(item_id, [0, 0])
            sums[0] += int(i)
            sums[1] += int(n)

    def compute(self) -> float:
        """Mean per-item Dice of the whole validation set (under DDP the sums of all ranks, item by item);
        -inf without any item (never "best")."""
        sums: dict[str, list[int]] = {}
        for shard in gather_objects(self._sums):  # every rank computes: every rank gets the same value
            for item_id, (inter, total) in shard.items():
                both = sums.setdefault(item_id, [0, 0])
                both[0] += inter
                both[1] += total
        if not sums:
            return -math.inf
        return float(np.mean([2.0 * i / n if n else 1.0 for i, n in sums.values()]))


def validation_dice(per_volume: bool):
    """The bundle's key validation metric: :class:`VolumeDice` for slice samples of volumes (the
    checkpoint is chosen on the per-volume Dice the test reports), MONAI's ``MeanDice`` otherwise."""
    from monai.handlers import MeanDice, from_engine

    transform = from_engine(["pred", "label"])
    return VolumeDice(output_transform=transform) if per_volume else \
        MeanDice(include_background=False, output_transform=transform)


def check_masks(cohort: Cohort) -> None:
    """Before training: every volume's mask volume has the volume's grid (headers only), so a bad
    mask in any fold stops the run at the start with one line naming the item (and how many others
    are bad), not when its fold is first read."""
    bad: list[str] = []
    for role in ("train", "val", "test"):
        for item in cohort.items(role):
            if int(item.get("slice", -1)) < 0 and not cohort.volumetric:
                continue  # a 2D item: its mask is checked against the loaded image
            try:
                check_mask_grid(item["item_id"], item["label"], item["image_path"])
            except ValueError as exc:
                bad.append(str(exc))
    if bad:
        more = f"; {len(bad) - 1} more item(s) with a mask on another grid" if len(bad) > 1 else ""
        raise ValueError(bad[0] + more)


def mm_per_pixel(item: dict, image_size: int) -> float | None:
    """Millimetres per network pixel after resize-with-pad (isotropic pixel spacing assumed)."""
    spacing = item.get("spacing") or []
    shape = item.get("shape") or []
    if not spacing or not shape or not math.isfinite(float(spacing[0])):
        return None
    return float(spacing[0]) * max(shape[:2]) / image_size


def plot_overlays(path: Path, images: list[np.ndarray], truths: list[np.ndarray], preds: list[np.ndarray],
                  titles: list[str]) -> Path:
    """A row of test images with the true (green) and predicted (red) contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(images), 1)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), dpi=90, squeeze=False)
    for ax, img, t, p, title in zip(axes[0], images, truths, preds, titles):
        ax.imshow(img.T, cmap="gray")  # x-first arrays: transpose to rows × columns
        if t.any():
            ax.contour(t.T, levels=[0.5], colors="lime", linewidths=1)
        if p.any():
            ax.contour(p.T, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def volume_spacing(item: dict, image_size: int, step: int = 1) -> tuple[float, float, float] | None:
    """Millimetres per voxel of a volume's stacked network-grid slices: its in-plane spacing scaled
    by the resize-with-pad (the longest side becomes ``image_size``), its slice spacing times ``step``
    (the distance between the picked slices). ``None`` when the manifest records no spacing."""
    import nibabel as nib

    spacing = item.get("spacing") or []
    if not spacing or not all(math.isfinite(float(v)) for v in spacing):
        return None
    header = nib.load(item["image_path"]).header  # the header only: the cached volume's voxel size
    zooms, shape = header.get_zooms(), header.get_data_shape()
    if len(zooms) < 3 or len(shape) < 3:
        return None
    scale = max(int(shape[0]), int(shape[1])) / image_size
    return float(zooms[0]) * scale, float(zooms[1]) * scale, float(zooms[2]) * step


@dataclass
class Evaluation:
    """Test results: ``cases`` one row per item (volume or 2D image), ``slices`` one per slice sample
    (empty without volumes), ``overlays`` a few (image, truth, pred, title) for :func:`plot_overlays`."""

    cases: list[dict] = field(default_factory=list)
    slices: list[dict] = field(default_factory=list)
    overlays: list[tuple] = field(default_factory=list)


class _Volume:
    """The predicted and true slices of one volume, stacked as they arrive (ascending slice index)."""

    def __init__(self, item: dict):
        self.item = item
        self.ks: list[int] = []
        self.preds: list[torch.Tensor] = []
        self.truths: list[torch.Tensor] = []
        self.dice: list[float] = []  # each slice's own 2D Dice
        self.hd: list[float] = []  # and its own 2D HD95 in pixels
        self.best: tuple[int, np.ndarray, np.ndarray, np.ndarray, int] | None = None  # overlay candidate

    def add(self, k: int, image: np.ndarray, truth: torch.Tensor, pred: torch.Tensor, dice: float,
            hd: float) -> None:
        self.ks.append(k)
        self.dice.append(dice)
        self.hd.append(hd)
        self.preds.append(pred)
        self.truths.append(truth)
        area = int(truth.sum()) * 2 + int(pred.sum())  # the slice with the most lesion shows best
        if self.best is None or area > self.best[0]:
            self.best = (area, image, truth.numpy(), pred.numpy(), k)

    def score(self, image_size: int) -> tuple[dict, tuple | None]:
        """The volume's per-case row (3D Dice / HD95 over its stacked slices) and its overlay. A cine's
        frames are moments, not places: its Dice is over all frames together, its HD95 the mean of its
        frames' own 2D HD95 (a distance across frames would count time as millimetres)."""
        order = np.argsort(self.ks)
        ks = [self.ks[i] for i in order]
        pred = torch.stack([self.preds[i] for i in order], dim=-1)
        truth = torch.stack([self.truths[i] for i in order], dim=-1)
        steps = set(np.diff(ks).tolist())
        regular = len(steps) <= 1  # all / every:K / range / center: evenly spaced slices
        step = int(steps.pop()) if len(steps) == 1 else 1
        spacing = None if self.item.get("kind") == "cine" else volume_spacing(self.item, image_size, step)
        if self.item.get("kind") == "cine":
            dice = foreground_dice(pred, truth)
            defined = [h for h in self.hd if math.isfinite(h)]
            hd_px = float(np.mean(defined)) if defined else math.nan
            scale = mm_per_pixel(self.item, image_size)
            hd_mm = hd_px * scale if scale is not None and math.isfinite(hd_px) else math.nan
        elif spacing is None:  # no recorded spacing: the index grid (a slice step counts as one pixel)
            dice, hd_px = dice_and_hd95(pred, truth, (1.0, 1.0, float(step)))
            hd_mm = math.nan
        else:  # one HD95 in mm; in pixels with the in-plane pixel size as the unit
            dice, hd_mm = dice_and_hd95(pred, truth, spacing)
            hd_px = hd_mm / ((spacing[0] + spacing[1]) / 2)
        if not regular and self.item.get("kind") != "cine":  # uneven slices: no single slice spacing, no distance
            hd_px = hd_mm = math.nan
        row = {"item_id": self.item["item_id"], "fold": self.item["fold"], "dice": dice,
               "hd95_px": hd_px, "hd95_mm": hd_mm, "slices": len(ks),
               "slice_dice": float(np.mean(self.dice))}
        overlay = None
        if self.best is not None:
            _, image, t, p, k = self.best
            overlay = (image, t, p, f"{self.item['item_id'][:8]} z{k} Dice {dice:.2f}")
        return row, overlay


@torch.no_grad()
def evaluate_items(network: torch.nn.Module, items: list[dict], transform, device, image_size: int,
                   batch_size: int = 8, overlays: int = 4) -> Evaluation:
    """Per-case Dice / HD95 for ``items``: a 2D item is its own case; the slice samples of a volume
    (consecutive, as :func:`.data.load_cohort` lists them) are stacked into one case scored in 3D,
    and each slice also gets its own 2D Dice / HD95 row. A volume's slices are held (as boolean
    masks at the network size) only until its last one is scored."""
    from monai.data import DataLoader, Dataset

    network.eval()
    result = Evaluation()
    loader = DataLoader(Dataset(items, transform), batch_size=batch_size, shuffle=False)
    volume: _Volume | None = None
    finished: set[str] = set()

    def flush() -> None:
        nonlocal volume
        if volume is not None:
            row, overlay = volume.score(image_size)
            result.cases.append(row)
            if overlay is not None and len(result.overlays) < overlays:
                result.overlays.append(overlay)
            finished.add(row["item_id"])
            volume = None

    k = 0
    for batch in loader:
        logits = network(batch["image"].to(device))
        pred = logits.argmax(1).cpu().bool()
        for j in range(pred.shape[0]):
            item = items[k]
            k += 1
            truth = batch["label"][j, 0] > 0.5
            dice, hd = dice_and_hd95(pred[j], truth)
            z = int(item.get("slice", -1))
            if z < 0:  # a whole 2D item
                flush()
                scale = mm_per_pixel(item, image_size)
                result.cases.append({"item_id": item["item_id"], "fold": item["fold"], "dice": dice, "hd95_px": hd,
                                     "hd95_mm": hd * scale if scale is not None and math.isfinite(hd) else math.nan,
                                     "slices": 1, "slice_dice": dice})
                if len(result.overlays) < overlays:
                    result.overlays.append((batch["image"][j, 0].numpy(), truth.numpy(), pred[j].numpy(),
                                            f"{item['item_id'][:8]} Dice {dice:.2f}"))
                continue
            result.slices.append({"item_id": item["item_id"], "fold": item["fold"], "slice": z, "dice": dice,
                                  "hd95_px": hd})
            if volume is None or volume.item["item_id"] != item["item_id"]:
                flush()
                if item["item_id"] in finished:
                    raise ValueError(f"item {item['item_id']}: its slice samples are not consecutive")
                volume = _Volume(item)
            image = batch["image"][j]
            volume.add(z, image[image.shape[0] // 2].numpy(), truth, pred[j], dice, hd)  # the slab's centre channel
    flush()
    return result


def summarize(rows: list[dict], prefix: str = "test_", slices: list[dict] | None = None) -> dict[str, float]:
    """Mean Dice and HD95 over cases (HD95 over cases where it is defined); with ``slices`` (slice
    samples of volumes) also the mean per-slice Dice, ``<prefix>slice_dice``."""
    def mean(key, values=None):
        values = [r[key] for r in (rows if values is None else values) if math.isfinite(r[key])]
        return float(np.mean(values)) if values else math.nan

    undefined = sum(1 for r in rows if not math.isfinite(r["hd95_px"]))
    out = {f"{prefix}dice": mean("dice"), f"{prefix}hd95": mean("hd95_px"), f"{prefix}hd95_mm": mean("hd95_mm"),
           f"{prefix}hd95_undefined_cases": float(undefined)}
    if slices:
        out[f"{prefix}slice_dice"] = mean("dice", slices)
    return out


def run_params(config: dict[str, Any], cohort: Cohort, network, manifest: str | Path) -> dict[str, str]:
    """Params of a segmentation run: grid keys, data summary (no paths), weights and preprocessing.

    With slice samples of volumes: ``input``, ``slices``, sample counts and ``data.results_per``."""
    params = {k: str(config[k]) for k in config}
    params.update({"data.manifest_sha256": sha256_file(manifest),
                   **{f"data.n_{k}": str(v) for k, v in cohort.counts().items()}})
    if cohort.sliced:
        params.update({"input": cohort.input, "slices": str(cohort.slices),
                       **{f"data.n_{k}_samples": str(v) for k, v in cohort.sample_counts().items()},
                       "data.results_per": "volume (3D Dice and HD95 over its stacked slice samples; "
                                           "test_slice_dice: mean per-slice Dice)"})
    if cohort.volumetric:
        params.update({"input": "3d", "data.classes": ",".join(cohort.classes),
                       "data.results_per": "volume (sliding-window prediction of the whole volume; Dice and HD95 "
                                           "per class, test_dice their mean)"})
    params.update(weights_params(network.encoder))
    params.update(network.freeze_summary.params())
    params.update(software_params())  # the versions the report's methods name
    return params


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with atomic_writer(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def finalize(network: torch.nn.Module, cohort: Cohort, run_config: dict[str, Any], tracker, output_dir: str | Path,
             device, batch_size: int = 8, config_files: Sequence[str] = (), evaluator=None,
             selection: str | None = None) -> dict[str, float]:
    """Best checkpoint (validation Dice) → per-case test Dice/HD95 CSV, overlays, checkpoint, MLflow.

    With slice samples of volumes a case is a volume (3D scores) and ``per_slice.csv`` lists each
    test slice's own Dice / HD95."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = network.module if hasattr(network, "module") else network
    if selection is None:
        selection = load_best_checkpoint(model, out, evaluator,
                                         "validation Dice per volume" if cohort.sliced else "validation Dice")
    if cohort.volumetric:  # whole volumes by sliding windows, scored per class
        roi, spacing = run_config["roi_size"], resolve_spacing(run_config.get("spacing"), model.preprocessing)
        transform = segmentation_transforms_3d(roi, int(run_config["in_channels"]), model.preprocessing, augment=False,
                                               num_classes=cohort.num_classes, spacing=spacing)
        evaluation = evaluate_volumes(model, cohort.test, transform, device, cohort.classes, roi, spacing,
                                      amp=bool(run_config.get("amp")))
        metrics = summarize_volumes(evaluation.cases, cohort.classes)
        artifacts = [_write_csv(out / PER_CASE_ARTIFACT, case_columns(cohort.classes), evaluation.cases)]
    else:
        size = int(run_config["image_size"])
        transform = segmentation_transforms(size, int(run_config["in_channels"]), model.preprocessing, augment=False)
        evaluation = evaluate_items(model, cohort.test, transform, device, size, batch_size)
        metrics = summarize(evaluation.cases, slices=evaluation.slices if cohort.sliced else None)
        columns = ["item_id", "fold", "dice", "hd95_px", "hd95_mm"] + (["slices", "slice_dice"] if cohort.sliced
                                                                       else [])
        artifacts = [_write_csv(out / PER_CASE_ARTIFACT, columns, evaluation.cases)]
        if cohort.sliced:
            artifacts.append(_write_csv(out / PER_SLICE_ARTIFACT, ["item_id", "fold", "slice", "dice", "hd95_px"],
                                        evaluation.slices))
    overlays = plot_overlays(out / "overlays.png", *[list(x) for x in zip(*evaluation.overlays)]) \
        if evaluation.overlays else None
    head = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    checkpoint = save_checkpoint(out / CHECKPOINT_ARTIFACT, model.encoder, head=head,
                                 provenance={"task": "segmentation", "run_name": getattr(tracker, "name", ""),
                                             "fold": cohort.fold, "classes": cohort.classes})
    summary = {"metrics": metrics, "model_selection": selection, "counts": cohort.counts(), "config": run_config,
               "classes": cohort.classes}
    if cohort.sliced:
        summary["sample_counts"] = cohort.sample_counts()
    atomic_write(out / METRICS_ARTIFACT, safe_json(summary, indent=2, default=str) + "\n")
    atomic_write(out / RUN_CONFIG_ARTIFACT, safe_json(run_config, indent=2, default=str) + "\n")
    log_outcome(tracker, metrics, {"model_selection": selection},
                [*artifacts, overlays, out / METRICS_ARTIFACT, out / RUN_CONFIG_ARTIFACT], checkpoint, config_files)
    return metrics
