"""Grad-CAM lesion localization scores: does a classifier look where the finding is?

RadImageNet (Mei et al., 2022) backs its transfer-learning results with an interpretability
check: Grad-CAM heat maps of the fine-tuned classifiers overlap the annotated lesions. This
module scores that overlap for any medxfer classifier and any cohort whose items carry a lesion
mask (``item["mask"]``: a PNG / NIfTI in the cached image's pixel grid, nonzero = lesion;
:func:`medxfer.engine.load_cohort` with ``localization=True`` adds it from the manifest's mask
column).

Method
------
Grad-CAM (Selvaraju et al., 2017; :class:`monai.visualize.GradCAM`) weights the channels of the
encoder's **deepest feature map** (stride 32, the map the classifier pools) by the spatial mean
of the gradient of the explained class logit, sums them, keeps the positive part and upsamples
it bilinearly to the network input. Each map is then divided by its maximum, so it lies in
[0, 1] (an all-zero map stays zero: no evidence for the class anywhere). With a
global-average-pool + linear head, as in :class:`~medxfer.models.classifier.Classifier`, this is
exactly CAM (Zhou et al., 2016) of the explained class.

Resolution: the deepest map has one cell per 32 × 32 input pixels, upsampled with MONAI's
convention (cell i centred on pixel 32 i + 15.5). Where a cell's evidence really comes from
depends on the padding *and on the learned weights* (the geometric receptive-field centre is
32 i for the ResNets, 32 i + 14 for DenseNet121, 32 i + 31 for MobileNet v1 / EfficientNet-B0,
but trained networks were seen on either side of it), so a Grad-CAM peak is located to within
about half a cell (16 px): compare localization scores at one input size.

The layer is not looked up by name: a throw-away wrapper routes the encoder's returned deepest
map through an identity "tap" module and MONAI's GradCAM hooks that tap. This is exact for
every registered encoder, including DenseNet121, whose deepest map is a *functional* ReLU after
``norm5`` (no module outputs it, see :func:`target_layer`). Nothing is left on the model: the
tap's hooks die with the wrapper, the encoder hook is removed, parameters are switched to
``requires_grad=False`` for the pass (the gradient flows from an input that requires grad, so a
frozen encoder gives a map too and no parameter ``.grad`` is written) and then restored, as are
the train/eval modes of every submodule. Maps are computed in eval mode.

Explained class: for a binary task (two logits) the positive class, index 1 (the finding, e.g.
malignant) for every case; for a single-logit head that logit; for more classes the case's true
label. The explained score is the class logit, except for a two-logit head, where it is the
class's log-odds ``logit[c] - logit[1 - c]``: a softmax sees only that difference (the
decision is unchanged by adding anything to both logits, the class-1 logit's own map is not),
so a network may signal the finding by *lowering* the other logit. The log-odds map is the
class-1 map of the equivalent one-logit model.

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
from typing import Any, Sequence

import numpy as np
import torch
from monai.transforms import Compose, MapTransform, ToTensord
from monai.visualize import GradCAM
from monai.visualize.class_activation_maps import ModelWithHooks
from torch import nn

TAP = "tap"  # name of the identity module that carries the deepest map in the Grad-CAM wrapper


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


# ----------------------------------------------------------------------------- Grad-CAM

def target_layer(model: nn.Module) -> str:
    """Name (in ``model.named_modules()``) of the module whose output *is* the encoder's deepest
    feature map, e.g. ``encoder.layer4`` (ResNets), ``encoder._blocks.6`` (EfficientNet-B0),
    ``encoder.layers.12`` (MobileNet v1): the layer to give ``monai.visualize`` CAM tools on the
    bare classifier.

    Found by one small forward pass with hooks on every encoder module (removed afterwards):
    the outermost module that returns the very tensor the encoder returns last. Raises
    :class:`LookupError` when no module does, i.e. the encoder computes its last map with a
    functional op after its last module (DenseNet121: ReLU after ``norm5``); :func:`gradcam_maps`
    does not need a name and is exact there too.
    """
    encoder = model.encoder
    param = next(model.parameters())
    outputs: list[tuple[str, Any]] = []
    handles = [module.register_forward_hook(lambda m, i, o, name=name: outputs.append((name, o)))
               for name, module in encoder.named_modules() if name]
    try:
        with _restored(model), torch.no_grad():
            model.eval()
            deepest = encoder(torch.zeros(1, int(encoder.in_channels), 64, 64, device=param.device,
                                          dtype=param.dtype))[-1]
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, out in outputs if out is deepest]
    if not names:
        raise LookupError(f"{type(encoder).__name__} ({getattr(encoder, 'arch', '?')}): no module outputs the "
                          "deepest feature map (a functional op follows the last module); gradcam_maps taps the "
                          "encoder's output instead")
    return f"encoder.{names[-1]}"  # hooks fire inner → outer: the last is the outermost


class _restored:
    """Context manager: restore every submodule's train/eval mode and every parameter's
    ``requires_grad`` on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> "_restored":
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.grads = [(p, p.requires_grad) for p in self.model.parameters()]
        return self

    def __exit__(self, *exc) -> None:
        for module, mode in self.modes:
            module.training = mode
        for p, flag in self.grads:
            p.requires_grad_(flag)


class _Tapped(nn.Module):
    """``model`` with its encoder's deepest map routed through an identity module (``tap``) that
    MONAI's GradCAM can hook; the hooks live on the tap and go away with the wrapper."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tap = nn.Identity()

    def _route(self, module: nn.Module, inputs: Any, output: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [*output[:-1], self.tap(output[-1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        handle = self.model.encoder.register_forward_hook(self._route)
        try:
            return self.model(x)
        finally:
            handle.remove()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """No-op: ModelWithHooks calls it, and during Grad-CAM no parameter gets a gradient, so
        the model's own ``.grad`` (e.g. mid-training) must stay as it is."""


class _PerCaseHooks(ModelWithHooks):
    """MONAI's ModelWithHooks with one class index per case (MONAI's ``logits[:, idx]`` would be
    B × B) and, for a two-logit head, the log-odds of the class as the explained score."""

    def class_score(self, logits: torch.Tensor, class_idx: int | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(class_idx, device=logits.device).long().reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(logits.shape[0])
        score = logits.gather(1, idx[:, None])[:, 0]
        if logits.shape[1] == 2:  # softmax sees only the difference: logit[c] - logit[1 - c]
            score = score - logits.gather(1, (1 - idx)[:, None])[:, 0]
        return score


def _unit_max(cam: torch.Tensor) -> torch.Tensor:
    """Divide each map by its maximum (maps are >= 0 after Grad-CAM's ReLU); zero maps stay zero."""
    peak = cam.flatten(1).amax(1).reshape(-1, *[1] * (cam.ndim - 1))
    return torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam)).clamp(0, 1)


def gradcam_maps(model: nn.Module, images: torch.Tensor, class_index: int | torch.Tensor) -> torch.Tensor:
    """Grad-CAM of ``class_index`` (one int, or one per image) for a batch of network inputs;
    for a two-logit head the explained score is the log-odds ``logit[c] - logit[1 - c]``.

    ``images`` (B, C, H, W) are already normalised for the model (on the model's device).
    Returns (B, H, W) maps in [0, 1] at the input resolution, detached, on the images' device.
    The model is evaluated in eval mode; its modes, ``requires_grad`` flags and parameter
    gradients are as before afterwards and no hook is left on it (frozen encoders work).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    idx = torch.as_tensor(class_index).long().reshape(-1)
    if idx.numel() not in (1, images.shape[0]):
        raise ValueError(f"class_index: one value or one per image ({images.shape[0]}), got {idx.numel()}")
    wrapper = _Tapped(model)
    hooks = _PerCaseHooks(wrapper, TAP, register_forward=True, register_backward=True)
    cam = GradCAM(nn_module=hooks, target_layers=TAP, postprocessing=_unit_max)  # MONAI's bilinear upsampler
    with _restored(model), torch.enable_grad():
        model.eval()
        wrapper.eval()  # ModelWithHooks puts the wrapper back into this mode afterwards
        for p in model.parameters():
            p.requires_grad_(False)  # gradients flow from the input only: no .grad on parameters
        x = images.detach().requires_grad_(True)
        maps = cam(x, class_idx=idx.to(images.device))
    return maps[:, 0].detach()


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


def _explained_class(num_classes: int, label: int) -> int:
    if num_classes == 2:
        return 1
    if num_classes == 1:
        return 0
    if not 0 <= int(label) < num_classes:
        raise ValueError(f"a {num_classes}-class head explains each case's true class: label {label} is not one")
    return int(label)


# ----------------------------------------------------------------------------- cohorts

class MirrorLikePresetd(MapTransform):
    """Mirror masks of right-breast mammograms exactly as :class:`ModalityPresetd` mirrors their
    images (MG, laterality ``R``, axis 1 = image column), so mask and image stay aligned."""

    def __init__(self, keys, mirror_right_mg: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mirror_right_mg = mirror_right_mg

    def __call__(self, data):
        d = dict(data)
        if self.mirror_right_mg and str(d.get("modality", "")).upper() == "MG" and d.get("laterality") == "R":
            for key in self.key_iterator(d):
                d[key] = torch.flip(d[key], dims=(1,))
        return d


def localization_transforms(image_size: int, in_channels: int, preprocessing) -> Compose:
    """Image as the classifier sees it (``deterministic_transforms`` + weights normalisation)
    and the ``mask`` key loaded, mirrored and resized (nearest) with it."""
    from ..engine.segmentation import LoadMaskd
    from ..transforms import WeightsNormalized
    from ..transforms.presets import LoadItemd, ModalityPresetd, ResizeWithPadd

    preset = ModalityPresetd("image")
    return Compose([LoadItemd("image", in_channels=in_channels), LoadMaskd("mask"), preset,
                    MirrorLikePresetd("mask", mirror_right_mg=preset.mirror_right_mg),
                    ResizeWithPadd(["image", "mask"], image_size, ["area", "nearest"]),
                    WeightsNormalized("image", preprocessing, in_channels),
                    ToTensord(["image", "mask"], track_meta=False)])


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
    from monai.data import Dataset

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
        classes = torch.tensor([_explained_class(num_classes, y) for y in labels])
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
    with open(path, "w", newline="") as f:
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
