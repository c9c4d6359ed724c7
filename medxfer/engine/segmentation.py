"""Segmentation pieces the bundle config wires together: image + mask transforms, Dice / HD95,
overlays, test evaluation with a per-case CSV (for paired Wilcoxon tests), and checkpoints.

Masks come from the manifest's mask column (PNG or NIfTI, nonzero = foreground) in the same
pixel grid as the cached image. HD95 is reported in pixels of the network input and, when the
manifest records the pixel spacing, in millimetres (the resize keeps the aspect ratio, so one
scale factor converts). A case with one empty mask (a missed lesion, a false positive on an
empty truth) has no HD95: the mean is over the others and ``test_hd95_undefined_cases`` counts
them (Dice, which is 0 there, carries the penalty).
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage, MapTransform, ToTensord

from ..models.preprocessing import Preprocessing
from ..transforms import WeightsNormalized
from ..models.weights import sha256_file
from .classification import augmentations
from .data import Cohort
from .mlflow_run import load_best_checkpoint, log_outcome



class LoadMaskd(MapTransform):
    """Load a mask (PNG/NIfTI) as a (1, W, H) float {0, 1} MetaTensor in the image's x-first order."""

    def __init__(self, keys: KeysCollection = "label", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(image_only=True, dtype=np.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            m = torch.as_tensor(self.loader(d[key]))
            if m.ndim == 3:  # RGB(A) mask image: any colour channel set (alpha ignored)
                m = m[..., :3].amax(-1)
            mask = (m > 0).float()[None]
            image = d.get("image")
            if image is not None and tuple(image.shape[1:]) != tuple(mask.shape[1:]):
                raise ValueError(f"item {d.get('item_id')}: mask {tuple(mask.shape[1:])} does not match image "
                                 f"{tuple(image.shape[1:])} ({d[key]})")
            d[key] = MetaTensor(mask)
        return d


def segmentation_transforms(image_size: int, in_channels: int, preprocessing: Preprocessing | dict,
                            augment: bool) -> Compose:
    """Image and mask: load, preset, resize-with-pad (mask nearest), augmentation, normalisation."""
    if image_size % 32:
        raise ValueError(f"image_size {image_size}: the UNet needs a multiple of 32")
    from ..transforms.presets import LoadItemd, ModalityPresetd, ResizeWithPadd

    # no mirroring of right mammograms here: masks and predicted NIfTI masks stay on the image grid
    steps = [LoadItemd("image", in_channels=in_channels), LoadMaskd("label"),
             ModalityPresetd("image", mirror_right_mg=False),
             ResizeWithPadd(["image", "label"], image_size, ["area", "nearest"])]
    if augment:
        steps += augmentations(("image", "label"), modes=("bilinear", "nearest"), image_size=image_size)
    steps += [WeightsNormalized("image", preprocessing, in_channels), ToTensord(["image", "label"], track_meta=False)]
    return Compose(steps)


def dice_and_hd95(pred: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Foreground Dice and 95th-percentile Hausdorff distance (pixels) of two (H, W) binary masks.

    Both empty: Dice 1, HD95 0. One empty: Dice 0, HD95 NaN (undefined).
    """
    from monai.metrics import compute_hausdorff_distance

    p, t = pred.bool(), truth.bool()
    inter, total = (p & t).sum().item(), p.sum().item() + t.sum().item()
    if total == 0:
        return 1.0, 0.0
    dice = 2.0 * inter / total
    if p.sum() == 0 or t.sum() == 0:
        return dice, math.nan
    onehot = lambda m: torch.stack([~m, m]).float()[None]  # noqa: E731
    hd = compute_hausdorff_distance(onehot(p), onehot(t), include_background=False, percentile=95)
    return dice, float(hd.reshape(-1)[0])


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


@torch.no_grad()
def evaluate_items(network: torch.nn.Module, items: list[dict], transform, device, image_size: int,
                   batch_size: int = 8) -> tuple[list[dict], list[tuple]]:
    """Per-case Dice / HD95 for ``items``; also returns a few (image, truth, pred, title) for overlays."""
    from monai.data import DataLoader, Dataset

    network.eval()
    rows, samples = [], []
    loader = DataLoader(Dataset(items, transform), batch_size=batch_size, shuffle=False)
    k = 0
    for batch in loader:
        logits = network(batch["image"].to(device))
        pred = logits.argmax(1).cpu()
        for j in range(pred.shape[0]):
            item = items[k]
            k += 1
            truth = batch["label"][j, 0] > 0.5
            dice, hd = dice_and_hd95(pred[j], truth)
            scale = mm_per_pixel(item, image_size)
            rows.append({"item_id": item["item_id"], "fold": item["fold"], "dice": dice, "hd95_px": hd,
                         "hd95_mm": hd * scale if scale is not None and math.isfinite(hd) else math.nan})
            if len(samples) < 4:
                samples.append((batch["image"][j, 0].numpy(), truth.numpy(), pred[j].numpy().astype(bool),
                                f"{item['item_id'][:8]} Dice {dice:.2f}"))
    return rows, samples


def summarize(rows: list[dict], prefix: str = "test_") -> dict[str, float]:
    """Mean Dice and HD95 (HD95 over cases where it is defined)."""
    def mean(key):
        values = [r[key] for r in rows if math.isfinite(r[key])]
        return float(np.mean(values)) if values else math.nan

    undefined = sum(1 for r in rows if not math.isfinite(r["hd95_px"]))
    return {f"{prefix}dice": mean("dice"), f"{prefix}hd95": mean("hd95_px"), f"{prefix}hd95_mm": mean("hd95_mm"),
            f"{prefix}hd95_undefined_cases": float(undefined)}


def run_params(config: dict[str, Any], cohort: Cohort, network, manifest: str | Path) -> dict[str, str]:
    """Params of a segmentation run: grid keys, data summary (no paths), weights and preprocessing."""
    from ..models import weights_params

    params = {k: str(config[k]) for k in config}
    params.update({"data.manifest_sha256": sha256_file(manifest),
                   **{f"data.n_{k}": str(v) for k, v in cohort.counts().items()}})
    params.update(weights_params(network.encoder))
    params["freeze.trainable_parameters"] = str(network.freeze_summary.trainable_parameters)
    return params


def finalize(network: torch.nn.Module, cohort: Cohort, run_config: dict[str, Any], tracker, output_dir: str | Path,
             device, batch_size: int = 8, config_files: Sequence[str] = (), evaluator=None,
             selection: str | None = None) -> dict[str, float]:
    """Best checkpoint (validation Dice) → per-case test Dice/HD95 CSV, overlays, checkpoint, MLflow."""
    from ..models.weights import CHECKPOINT_ARTIFACT, save_checkpoint

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = network.module if hasattr(network, "module") else network
    if selection is None:
        selection = load_best_checkpoint(model, out, evaluator, "validation Dice")
    size = int(run_config["image_size"])
    transform = segmentation_transforms(size, int(run_config["in_channels"]), model.preprocessing, augment=False)
    rows, samples = evaluate_items(model, cohort.test, transform, device, size, batch_size)
    metrics = summarize(rows)
    per_case = out / "per_case.csv"
    with open(per_case, "w", newline="") as f:
        w = csv.DictWriter(f, ["item_id", "fold", "dice", "hd95_px", "hd95_mm"])
        w.writeheader()
        w.writerows(rows)
    overlays = plot_overlays(out / "overlays.png", *[list(x) for x in zip(*samples)]) if samples else None
    head = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    checkpoint = save_checkpoint(out / CHECKPOINT_ARTIFACT, model.encoder, head=head,
                                 provenance={"task": "segmentation", "run_name": getattr(tracker, "name", ""),
                                             "fold": cohort.fold})
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "model_selection": selection,
                                                  "counts": cohort.counts(), "config": run_config},
                                                 indent=2, default=str) + "\n")
    (out / "run_config.json").write_text(json.dumps(run_config, indent=2, default=str) + "\n")
    log_outcome(tracker, metrics, {"model_selection": selection},
                [per_case, overlays, out / "metrics.json", out / "run_config.json"], checkpoint, config_files)
    return metrics
