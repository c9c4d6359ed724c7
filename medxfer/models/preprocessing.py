"""Input preprocessing bound to a weights source (what the pretrained network expects).

A :class:`Preprocessing` record travels with every weights record, is applied by the MONAI
transform :class:`medxfer.transforms.WeightsNormalized`, and is logged to MLflow as params.

Input convention: images arrive scaled to [0, 1] by the modality preset (CT window, MR
normalisation, X-ray VOI …). The record then says how to turn that into what the network saw
in pretraining:

- ``imagenet`` (torchvision): RGB, ``(x - mean) / std`` with the ImageNet statistics.
- ``caffe`` (Keras ``preprocess_input`` for ResNet50/VGG and the RadImageNet Keras releases):
  on 0-255, RGB→BGR, subtract the BGR means ``[103.939, 116.779, 123.68]``, then × 1/255 — the
  order RadImageNet's training scripts apply (Keras ``ImageDataGenerator`` runs
  ``preprocessing_function`` before ``rescale``).
- ``tf`` (Keras MobileNet, Inception, EfficientNet-V2 …): ``x * 2 - 1`` → [-1, 1].
- ``torch-densenet`` (Keras DenseNet ``preprocess_input``): ImageNet mean/std, RGB — same as
  ``imagenet``.

3D weights add what their pretraining fixed about the volume (optional fields, absent from the
stored record when unset): ``spacing`` (target voxel spacing, mm), ``roi_size`` (pretraining
patch) and ``intensity`` (how raw voxels became the network's input scale):

- ``medicalnet`` (MedicalNet 3D ResNets, 1 channel): ``intensity="nonzero-zscore"``, the z-score
  with the mean and std of the non-zero voxels (MedicalNet ``datasets/brains18.py``
  ``__itensity_normalize_one_volume__``), applied by :meth:`Preprocessing.apply` per volume.
- ``swin-ssl`` (SwinUNETR self-supervised Swin-ViT, 1 channel): ``intensity="hu-window:-1000:1000"``,
  CT HU clipped to [-1000, 1000] and scaled to [0, 1] — the CT modality preset's job, after which
  the affine is the identity; spacing (1.5, 1.5, 2.0) mm and ROI 96³ (the defaults of
  research-contributions ``SwinUNETR/Pretrain/main.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Preprocessing:
    """How an image in [0, 1] becomes the network input.

    ``x' = ((x * scale)[channel_order] - mean) / std * post_scale``, per channel, after gray
    images are turned into ``in_channels`` channels by ``gray_to_rgb``.
    """

    mode: str
    channel_order: str = "RGB"  # "RGB" or "BGR": order of the network's input channels
    scale: float = 1.0  # multiply [0, 1] input by this first (255 for caffe)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # in network channel order, after scaling
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    post_scale: float = 1.0  # multiply at the end (1/255 for RadImageNet's caffe order)
    input_size: int | None = None  # the pretraining input size, when known
    gray_to_rgb: str = "repeat"  # 1-channel images into a 3-channel stem: "repeat" the gray channel
    note: str = ""
    # 3D weights (omitted from to_dict when unset, so 2D records are unchanged):
    spacing: tuple[float, ...] | None = None  # target voxel spacing in mm the weights were pretrained at
    roi_size: tuple[int, ...] | None = None  # pretraining patch size (voxels)
    intensity: str = ""  # "" (the modality preset's [0, 1]), "nonzero-zscore" or "hu-window:LOW:HIGH"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); the optional 3D fields only when set."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if k not in _OPTIONAL_FIELDS or v not in (None, "")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a record from a newer medxfer)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**values)

    def for_channels(self, in_channels: int) -> "Preprocessing":
        """The record for an ``in_channels``-channel stem.

        For a 1-channel stem made by summing RGB filters the per-channel statistics collapse to
        their means (the summed stem sees the gray value once instead of three times).
        """
        if in_channels == len(self.mean):
            return self
        if len(self.mean) == 1:  # a gray-trained network fed repeated gray channels
            return dataclasses.replace(self, mean=self.mean * in_channels, std=self.std * in_channels,
                                       channel_order="RGB", gray_to_rgb="repeat")
        if in_channels != 1:
            raise ValueError(f"preprocessing for {len(self.mean)} channels cannot serve {in_channels}")
        mean = (sum(self.mean) / len(self.mean),)
        std = (sum(self.std) / len(self.std),)
        return dataclasses.replace(self, mean=mean, std=std, channel_order="GRAY", gray_to_rgb="summed-stem")

    def params(self, prefix: str = "preprocessing") -> dict[str, str]:
        """Flat ``{name: value}`` for MLflow params."""
        return {f"{prefix}.{k}": str(v) for k, v in self.to_dict().items() if k != "note"}

    def apply(self, image: torch.Tensor, in_channels: int | None = None, channel_dim: int = 0) -> torch.Tensor:
        """Apply to an image with values in [0, 1]: channel-first (C, H, W) by default, or a batch
        with ``channel_dim=1``.

        ``in_channels`` is the network's stem width; a 1-channel image is repeated to 3 channels
        for a 3-channel stem (``gray_to_rgb="repeat"``).
        """
        x = torch.as_tensor(image).float()
        if not 0 <= channel_dim < x.ndim - 1:
            raise ValueError(f"channel_dim {channel_dim} does not fit an array of shape {tuple(x.shape)}")
        cdim = channel_dim
        channels = x.shape[cdim]
        target = in_channels if in_channels is not None else channels
        if channels == 1 and target == 3:
            x = x.repeat_interleave(3, dim=cdim)
        elif channels == 3 and target == 1:
            raise ValueError("a 3-channel image cannot feed a 1-channel stem; "
                             "convert it to gray in the modality preset")
        elif channels != target:
            raise ValueError(f"image has {channels} channels, the network takes {target}")
        record = self.for_channels(target)
        x = x * record.scale
        if record.channel_order == "BGR":
            x = x.flip(cdim)
        shape = [1] * x.ndim
        shape[cdim] = target
        mean = torch.tensor(record.mean, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.tensor(record.std, dtype=x.dtype, device=x.device).reshape(shape)
        if record.intensity == "nonzero-zscore":
            x = _nonzero_zscore(x, cdim)
        x = (x - mean) / std
        if record.post_scale != 1.0:
            x = x * record.post_scale
        return x


_OPTIONAL_FIELDS = ("spacing", "roi_size", "intensity")


def _nonzero_zscore(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per image and channel: ``(x - mean) / std`` over the non-zero voxels (MedicalNet's rule);
    an image without non-zero voxels is left as it is."""
    flat = x.reshape(*x.shape[:channel_dim + 1], -1)  # one statistic per (batch…, channel)
    mask = flat != 0
    count = mask.sum(-1, keepdim=True)
    mean = (flat * mask).sum(-1, keepdim=True) / count.clamp_min(1)
    std = ((((flat - mean) * mask) ** 2).sum(-1, keepdim=True) / count.clamp_min(1)).sqrt()  # numpy's std (ddof 0)
    out = torch.where(count > 0, (flat - mean) / std.clamp_min(1e-8), flat)
    return out.reshape(x.shape)


IMAGENET = Preprocessing(mode="imagenet", mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224,
                         note="torchvision ImageNet: RGB, (x - mean) / std on [0, 1]")
CAFFE = Preprocessing(mode="caffe", channel_order="BGR", scale=255.0, mean=CAFFE_BGR_MEAN, post_scale=1.0 / 255.0,
                      input_size=224,
                      note="RadImageNet Keras: 0-255, RGB->BGR, minus BGR ImageNet means, then x 1/255")
CAFFE_KERAS = Preprocessing(mode="caffe-keras", channel_order="BGR", scale=255.0, mean=CAFFE_BGR_MEAN, input_size=224,
                            note="Keras applications ResNet50 ImageNet: 0-255, RGB->BGR, minus BGR means (no rescale)")
TF = Preprocessing(mode="tf", scale=2.0, mean=(1.0, 1.0, 1.0), input_size=224,
                   note="Keras tf mode: inputs scaled to [-1, 1]")
SCRATCH = Preprocessing(mode="scratch", scale=2.0, mean=(1.0, 1.0, 1.0),
                        note="no pretraining: inputs scaled to [-1, 1]")
MEDICALNET = Preprocessing(mode="medicalnet", channel_order="GRAY", mean=(0.0,), std=(1.0,), intensity="nonzero-zscore",
                           note="MedicalNet 3D ResNet: 1 channel, z-score over the non-zero voxels (spacing and "
                                "input size: unverified, MedicalNet resized volumes to a fixed shape)")
SWIN_SSL = Preprocessing(mode="swin-ssl", channel_order="GRAY", mean=(0.0,), std=(1.0,), input_size=96,
                         spacing=(1.5, 1.5, 2.0), roi_size=(96, 96, 96), intensity="hu-window:-1000:1000",
                         note="SwinUNETR SSL Swin-ViT: 1 channel, CT HU clipped to [-1000, 1000] scaled to [0, 1], "
                              "1.5x1.5x2.0 mm, 96^3 ROI (SwinUNETR/Pretrain/main.py defaults)")

PRESETS: dict[str, Preprocessing] = {p.mode: p for p in (IMAGENET, CAFFE, CAFFE_KERAS, TF, SCRATCH, MEDICALNET,
                                                             SWIN_SSL)}


def preset(name: str) -> Preprocessing:
    """A named preset (``imagenet``, ``caffe``, ``caffe-keras``, ``tf``, ``scratch``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preprocessing {name!r}; known: {', '.join(sorted(PRESETS))}") from None
