"""Segmentation pieces the bundle config wires together: Dice / HD95,
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import atomic_write, atomic_writer
from ..core.hashing import sha256_file
from ..models import save_checkpoint, weights_params
from ..tracking.layout import CHECKPOINT_ARTIFACT, METRICS_ARTIFACT, PER_CASE_ARTIFACT, RUN_CONFIG_ARTIFACT
from ..transforms.pipelines import segmentation_transforms
from .data import Cohort
from .mlflow_run import load_best_checkpoint, log_outcome


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
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = network.module if hasattr(network, "module") else network
    if selection is None:
        selection = load_best_checkpoint(model, out, evaluator, "validation Dice")
    size = int(run_config["image_size"])
    transform = segmentation_transforms(size, int(run_config["in_channels"]), model.preprocessing, augment=False)
    rows, samples = evaluate_items(model, cohort.test, transform, device, size, batch_size)
    metrics = summarize(rows)
    per_case = out / PER_CASE_ARTIFACT
    with atomic_writer(per_case, "w", newline="") as f:
        w = csv.DictWriter(f, ["item_id", "fold", "dice", "hd95_px", "hd95_mm"])
        w.writeheader()
        w.writerows(rows)
    overlays = plot_overlays(out / "overlays.png", *[list(x) for x in zip(*samples)]) if samples else None
    head = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    checkpoint = save_checkpoint(out / CHECKPOINT_ARTIFACT, model.encoder, head=head,
                                 provenance={"task": "segmentation", "run_name": getattr(tracker, "name", ""),
                                             "fold": cohort.fold})
    atomic_write(out / METRICS_ARTIFACT, json.dumps({"metrics": metrics, "model_selection": selection,
                                                     "counts": cohort.counts(), "config": run_config},
                                                    indent=2, default=str) + "\n")
    atomic_write(out / RUN_CONFIG_ARTIFACT, json.dumps(run_config, indent=2, default=str) + "\n")
    log_outcome(tracker, metrics, {"model_selection": selection},
                [per_case, overlays, out / METRICS_ARTIFACT, out / RUN_CONFIG_ARTIFACT], checkpoint, config_files)
    return metrics
