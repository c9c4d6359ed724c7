"""Segmentation networks: MONAI ``FlexibleUNet`` over a registry encoder with a weights source, and
MONAI's plain 3D ``UNet`` / ``SegResNet`` as scratch baselines (the nets a transfer study compares against).

>>> net = create_segmenter("resnet18_3d", weights="scratch", out_channels=3)   # 3D UNet, 2 classes + background
>>> base = create_segmenter("unet_3d", out_channels=3)                         # MONAI UNet, from scratch
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from monai.networks.nets import FlexibleUNet, SegResNet, UNet
from torch import nn

from .encoders import arch_spec, flexunet_name
from .factory import load_weights
from .freeze import FreezeSummary, apply_freeze
from .weights.errors import WeightsError
from .weights.record import scratch_record


@dataclass(frozen=True)
class PlainSpec:
    """A MONAI segmentation network used whole, as a scratch baseline (no registry encoder)."""

    name: str
    title: str
    build: Callable[[int, int], nn.Module]  # (in_channels, out_channels) -> network
    spatial_dims: int = 3


PLAIN_SEGMENTERS: dict[str, PlainSpec] = {spec.name: spec for spec in (
    PlainSpec("unet_3d", "MONAI UNet 3D (channels 16-32-64-128-256, strides 2, 2 residual units, instance norm)",
              lambda i, o: UNet(spatial_dims=3, in_channels=i, out_channels=o, channels=(16, 32, 64, 128, 256),
                                strides=(2, 2, 2, 2), num_res_units=2, norm="instance")),
    PlainSpec("segresnet_3d", "MONAI SegResNet 3D (16 initial filters, blocks 1-2-2-4 down, 1-1-1 up)",
              lambda i, o: SegResNet(spatial_dims=3, in_channels=i, out_channels=o, init_filters=16)),
)}


class PlainNetwork(nn.Module):
    """The whole plain network in the encoder slot: it carries what an encoder made by
    :func:`~medxfer.models.create_encoder` carries (``arch``, ``in_channels``, ``weights_record``,
    ``preprocessing``, ``stem_adaptation``), so checkpoints, MLflow params and ``run:`` reloads treat
    both kinds alike. Its checkpoint's ``encoder`` state is the whole network (there is no head)."""

    def __init__(self, name: str, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.arch, self.in_channels = name, int(in_channels)
        self.net = PLAIN_SEGMENTERS[name].build(in_channels, out_channels)
        self.weights_record = scratch_record(name)
        self.preprocessing = self.weights_record.preprocessing_record.for_channels(self.in_channels)
        self.stem_adaptation = "none: random initialisation"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PlainSegmenter(nn.Module):
    """A MONAI 3D ``UNet`` / ``SegResNet`` from scratch with the segmenter interface of
    :class:`~monai.networks.nets.FlexibleUNet` as :func:`create_segmenter` returns it."""

    def __init__(self, name: str, in_channels: int = 1, out_channels: int = 2) -> None:
        super().__init__()
        self.encoder = PlainNetwork(name, in_channels, out_channels)
        self.spatial_dims = PLAIN_SEGMENTERS[name].spatial_dims
        self.weights_record, self.preprocessing = self.encoder.weights_record, self.encoder.preprocessing
        self.stem_adaptation = self.encoder.stem_adaptation
        self.freeze_summary = FreezeSummary("none", (), ("network",), 0, sum(p.numel() for p in self.parameters()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def segmenter_dims(arch: str) -> int:
    """2 or 3: the input a segmenter named ``arch`` takes (registry encoder or plain baseline)."""
    return PLAIN_SEGMENTERS[arch].spatial_dims if arch in PLAIN_SEGMENTERS else arch_spec(arch).spatial_dims


def create_segmenter(arch: str, weights: str = "scratch", in_channels: int = 1, out_channels: int = 2,
                     freeze: str = "none", decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
                     home: str | os.PathLike | None = None) -> nn.Module:
    """``FlexibleUNet(backbone="medxfer-<arch>")`` with the encoder's weights loaded strictly; for a
    plain baseline name (:data:`PLAIN_SEGMENTERS`: ``unet_3d``, ``segresnet_3d``) that MONAI network,
    from scratch only (it has no separable encoder to pretrain or freeze).

    The input's spatial sizes must be multiples of 32 (FlexibleUNet); a 3D encoder makes a 3D UNet.
    ``out_channels`` is the number of classes with background. The network carries the encoder's
    ``weights_record``, ``preprocessing`` and ``freeze_summary``.
    """
    if arch in PLAIN_SEGMENTERS:
        if weights != "scratch" or freeze != "none":
            raise WeightsError(f"{arch} is a plain MONAI baseline trained from scratch: weights must be scratch and "
                               f"freeze none (got weights {weights!r}, freeze {freeze!r}); pretrained sources go "
                               "with a registry encoder (e.g. resnet18_3d)")
        return PlainSegmenter(arch, in_channels, out_channels)
    spec = arch_spec(arch)
    if spec.classification_only:
        raise ValueError(f"{arch} is classification-only: {spec.classification_only}")
    net = FlexibleUNet(in_channels=in_channels, out_channels=out_channels, backbone=flexunet_name(arch),
                       pretrained=False, decoder_channels=decoder_channels,
                       spatial_dims=spec.spatial_dims)
    load_weights(net.encoder, weights, home)
    for attr in ("weights_record", "preprocessing", "stem_adaptation"):
        setattr(net, attr, getattr(net.encoder, attr))
    net.freeze_summary = apply_freeze(net.encoder, freeze)
    return net
