"""Grad-CAM maps of medxfer classifiers: where does a classifier look?

RadImageNet (Mei et al., 2022) backs its transfer-learning results with an interpretability
check: Grad-CAM heat maps of the fine-tuned classifiers overlap the annotated lesions. This
module computes the maps; :mod:`medxfer.explain.localization` scores them against lesion masks.

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
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.visualize import GradCAM
from monai.visualize.class_activation_maps import ModelWithHooks
from torch import nn

TAP = "tap"  # name of the identity module that carries the deepest map in the Grad-CAM wrapper


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
            # 96: an input every 2D classifier takes (Keras-padded Inceptions: at least 75x75)
            deepest = encoder(torch.zeros(1, int(encoder.in_channels), 96, 96, device=param.device,
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


def explained_class(num_classes: int, label: int) -> int:
    """The class a case's map explains: the positive class (1) of a two-logit head, the only logit
    of a one-logit head, else the case's true ``label``."""
    if num_classes == 2:
        return 1
    if num_classes == 1:
        return 0
    if not 0 <= int(label) < num_classes:
        raise ValueError(f"a {num_classes}-class head explains each case's true class: label {label} is not one")
    return int(label)
