"""UNet segmentation: MONAI ``FlexibleUNet`` over a registry encoder with a weights source."""
from __future__ import annotations

import os

from monai.networks.nets import FlexibleUNet

from .encoders import arch_spec, flexunet_name
from .factory import load_weights
from .freeze import apply_freeze


def create_segmenter(arch: str, weights: str = "scratch", in_channels: int = 1, out_channels: int = 2,
                     freeze: str = "none", decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
                     home: str | os.PathLike | None = None) -> FlexibleUNet:
    """``FlexibleUNet(backbone="medxfer-<arch>")`` with the encoder's weights loaded strictly.

    The input's spatial sizes must be multiples of 32; a 3D encoder makes a 3D UNet. The network carries the encoder's
    ``weights_record``, ``preprocessing`` and ``freeze_summary``.
    """
    net = FlexibleUNet(in_channels=in_channels, out_channels=out_channels, backbone=flexunet_name(arch),
                       pretrained=False, decoder_channels=decoder_channels,
                       spatial_dims=arch_spec(arch).spatial_dims)
    load_weights(net.encoder, weights, home)
    for attr in ("weights_record", "preprocessing", "stem_adaptation"):
        setattr(net, attr, getattr(net.encoder, attr))
    net.freeze_summary = apply_freeze(net.encoder, freeze)
    return net
