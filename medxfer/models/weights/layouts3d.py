"""3D weight files → encoder state dicts (formats ``medicalnet`` and ``swinunetr-ssl``).

Both published files are training checkpoints of ``nn.DataParallel`` models: a dict whose
``state_dict`` has ``module.``-prefixed keys (:func:`~.loading.plain_state_dict` unwraps both).

- ``medicalnet`` — MedicalNet ``resnet_{10,18,34,50}.pth`` (Tencent/MedicalNet: ``model.py``
  reads ``pretrain['state_dict']`` into a DataParallel net). Keys are MONAI's 3D ResNet keys as
  they are (``conv1``, ``bn1``, ``layerN.i.conv1``, ``downsample.0`` conv / ``downsample.1`` BN for
  shortcut B): MONAI's own loader strips ``module.`` and loads strictly. A ``conv_seg.*``
  (MedicalNet segmentation decoder) or ``fc.*`` head is left out and recorded.
- ``swinunetr-ssl`` — ``model_swinvit.pt`` (SwinUNETR self-supervised Swin-ViT). Keys as MONAI's
  ``SwinUNETR.load_from`` reads them: ``module.patch_embed.proj.*``,
  ``module.layersN.0.blocks.B.{norm1,attn.*,norm2,mlp.fc1,mlp.fc2}.*`` and
  ``module.layersN.0.downsample.{reduction,norm}.*``; ``mlp.fc1``/``mlp.fc2`` become MONAI's
  ``mlp.linear1``/``mlp.linear2`` (as ``load_from`` copies them) and every key goes under
  ``swinViT.``. Keys already under ``swinViT.`` (SSLHead) or ``swin_vit.`` are accepted, and
  SSLHead's rotation / contrastive / reconstruction heads are left out and recorded.

Anything else stays in the state dict, so the strict load that ends every conversion refuses it.
"""
from __future__ import annotations

import re

import torch

from .. import encoders3d  # noqa: F401 - registers the 3D archs in the one registry
from ..encoders import arch_spec
from ..preprocessing import MEDICALNET, SCRATCH, SWIN_SSL, Preprocessing

State = dict[str, torch.Tensor]

FORMATS_3D = ("medicalnet", "swinunetr-ssl")
LAYOUTS = {
    "medicalnet": "MedicalNet checkpoint: {'state_dict': DataParallel 'module.*' keys of a 3D ResNet}",
    "swinunetr-ssl": "SwinUNETR SSL checkpoint: {'state_dict': 'module.patch_embed.*', 'module.layersN.0.*'}",
}
# the heads each layout may carry: those its archs' records name (one place: encoders3d's ArchSpecs)
_MEDICALNET_HEAD = re.compile(arch_spec("resnet18_3d").head_pattern)
_SWIN_HEAD = re.compile(arch_spec("swinvit_3d").head_pattern)
_SWIN_PREFIX = re.compile(r"^(swinViT|swin_vit)\.")
_SWIN_MLP = re.compile(r"\.mlp\.fc([12])\.")
_REASONS = {
    "medicalnet": ("MedicalNet (datasets/brains18.py): 1 channel, z-score over the non-zero voxels; target spacing "
                   "and input size unverified"),
    "swinunetr-ssl": ("SwinUNETR/Pretrain/main.py defaults: 1 channel, CT HU clipped to [-1000, 1000] and scaled "
                      "to [0, 1], spacing 1.5x1.5x2.0 mm, 96^3 ROI (the run behind model_swinvit.pt: unverified)"),
}
_PRESETS = {"medicalnet": MEDICALNET, "swinunetr-ssl": SWIN_SSL}


def detect_layout_3d(state: State) -> str | None:
    """``swinunetr-ssl`` or ``medicalnet`` when an unwrapped state dict has that layout, else None."""
    bare = {_SWIN_PREFIX.sub("", k) for k in state}
    if "patch_embed.proj.weight" in bare and any(k.startswith("layers1.0.blocks.") for k in bare):
        return "swinunetr-ssl"
    stem = state.get("conv1.weight")
    if stem is not None and stem.ndim == 5 and any(k.startswith("layer1.") for k in state):
        return "medicalnet"
    return None


def from_medicalnet(state: State) -> tuple[State, list[str]]:
    """MedicalNet keys (``module.`` already stripped) → 3D ResNet keys; returns (state, skipped head keys)."""
    skipped = [k for k in state if _MEDICALNET_HEAD.match(k)]
    return {k: v for k, v in state.items() if k not in skipped}, skipped


def from_swinunetr_ssl(state: State) -> tuple[State, list[str]]:
    """``model_swinvit.pt`` keys (``module.`` already stripped) → ``swinvit_3d`` keys; returns (state, skipped)."""
    out, skipped = {}, []
    for key, value in state.items():
        bare = _SWIN_PREFIX.sub("", key)
        if _SWIN_HEAD.match(bare):
            skipped.append(key)
            continue
        out["swinViT." + _SWIN_MLP.sub(r".mlp.linear\1.", bare)] = value
    return out, skipped


def convert_3d(fmt: str, state: State) -> tuple[State, list[str]]:
    """Convert an unwrapped state dict of a 3D ``fmt`` file; returns (state, skipped head keys)."""
    return from_medicalnet(state) if fmt == "medicalnet" else from_swinunetr_ssl(state)


def default_preprocessing_3d(fmt: str, arch: str) -> tuple[Preprocessing, str] | None:
    """The preprocessing a 3D file expects and why; None when ``fmt``/``arch`` is not a 3D case."""
    if fmt in _PRESETS:
        return _PRESETS[fmt], _REASONS[fmt]
    if arch_spec(arch).spatial_dims == 3 and fmt == "torchvision":
        return SCRATCH.for_channels(1), ("a plain 3D state dict documents no preprocessing: inputs scaled to "
                                         "[-1, 1] assumed (unverified; override with --preprocessing)")
    return None


def layout_provenance(fmt: str, arch: str) -> dict[str, str]:
    """What the record says about a 3D file: its layout and the published file(s) of that layout for ``arch``."""
    spec = arch_spec(arch)
    out = {"source_layout": LAYOUTS[fmt]}
    if spec.published_weights:
        out["published_file"] = spec.published_weights
    return out
