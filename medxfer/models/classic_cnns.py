"""AlexNet and VGG16 in the torchvision layout, in the one encoder registry (:data:`.encoders.ARCHS`).

Both are a plain ``nn.Sequential`` named ``features`` (convolution with bias, ReLU, max-pool), built
index for index like torchvision's, so ``alexnet-owt-7be5be79.pth`` and ``vgg16-397923af.pth`` load
strictly once their ``classifier.*`` head is dropped. The classifier pools the deepest map (the
output of the last max-pool, as torchvision's ``features(x)``) and puts a new linear head on it.

- ``vgg16``: the five max-pool outputs, strides 2, 4, 8, 16 and 32, channels 64-128-256-512-512:
  the FlexibleUNet encoder convention, so it also serves segmentation (registered in MONAI's
  ``FLEXUNET_BACKBONE`` as ``medxfer-vgg16``). Each side of the input at least 32 pixels.
- ``alexnet``: classification only. Its first convolution (11×11) has stride 4, so it has no
  stride-2 map for a UNet decoder; the spec and bundle checks refuse it for segmentation
  (:attr:`ArchSpec.classification_only`) and it is not a FlexibleUNet backbone. Its five maps are
  the ReLU outputs of its first four convolutions and the last max-pool (strides 4, 8, 16, 16, 32;
  channels 64-192-384-256-256). Each side of the input at least 63 pixels (three 3×3 stride-2 pools
  after the stride-4 convolution).
"""
from __future__ import annotations

import torch
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from .encoders import ARCHS, ArchSpec, Blocks, Encoder

# (out_channels, kernel, stride, padding) per convolution, "M" a max-pool: torchvision's AlexNet features
_ALEXNET = ((64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), "M")
_ALEXNET_POOL = (3, 2)  # kernel, stride
_ALEXNET_TAPS = (1, 4, 7, 11, 12)  # feature indices whose outputs are the five maps (ReLUs 0-3, last pool)
_ALEXNET_MIN_SIZE = 63

# torchvision's ``cfgs["D"]``: 3×3 convolutions (padding 1) and 2×2 stride-2 max-pools
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG_MIN_SIZE = 32


def _features(config: tuple, in_channels: int, kernel: int = 3, pool: tuple[int, int] = (2, 2)) -> nn.Sequential:
    """torchvision's ``make_layers`` without BatchNorm: conv, ReLU … and max-pools, same indices.

    A config entry is an int (3×3 conv, padding 1), a tuple (channels, kernel, stride, padding) or "M"."""
    layers: list[nn.Module] = []
    channels = in_channels
    for entry in config:
        if entry == "M":
            layers.append(nn.MaxPool2d(*pool))
            continue
        out, k, stride, padding = entry if isinstance(entry, tuple) else (entry, kernel, 1, kernel // 2)
        # not in-place (torchvision's is): the ReLU outputs are feature maps the later layers must not overwrite
        layers += [nn.Conv2d(channels, out, k, stride=stride, padding=padding), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers)


class ClassicCNN(Encoder):
    """A torchvision ``features`` stack; subclasses say which indices are the five feature maps."""

    taps: tuple[int, ...]
    min_size: int

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"{self.arch} input of spatial size {tuple(x.shape[-2:])}: "
                             f"{ARCHS[self.arch].input_rule} (resize the images, e.g. image_size: 224)")
        features = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                features.append(x)
        return features

    def blocks(self) -> Blocks:
        """Each convolution with its ReLU, the first one named ``stem``."""
        out: Blocks = []
        for index, layer in enumerate(self.features):
            if isinstance(layer, nn.Conv2d):
                out.append(("stem" if not out else f"features.{index}", [layer, self.features[index + 1]]))
        return out


class AlexNetEncoder(ClassicCNN):
    """torchvision ``alexnet`` features (keys ``features.{0,3,6,8,10}.{weight,bias}``); classification only."""

    backbone_names = ["alexnet"]
    taps = _ALEXNET_TAPS
    min_size = _ALEXNET_MIN_SIZE

    def __init__(self, arch: str = "alexnet", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        self.features = _features(_ALEXNET, in_channels, pool=_ALEXNET_POOL)
        self.feature_channels = ARCHS[arch].feature_channels


class VGG16Encoder(ClassicCNN):
    """torchvision ``vgg16`` features (13 convolutions, keys ``features.N.{weight,bias}``), maps at the pools."""

    backbone_names = ["vgg16"]
    min_size = _VGG_MIN_SIZE

    def __init__(self, arch: str = "vgg16", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        self.features = _features(_VGG16, in_channels)
        self.taps = tuple(i for i, layer in enumerate(self.features) if isinstance(layer, nn.MaxPool2d))
        self.feature_channels = ARCHS[arch].feature_channels
        for module in self.features:  # torchvision's VGG initialisation (13 plain convolutions from scratch)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)


_TORCHVISION_PLAIN = {"layout": "torchvision", "stem_weight": "features.0.weight", "stem_norm": None,
                      "conv_bias": True, "head_pattern": r"^classifier\."}
SPECS_CLASSIC = (
    ArchSpec("alexnet", AlexNetEncoder, feature_channels=(64, 192, 384, 256, 256),
             description="AlexNet, torchvision layout (alexnet-owt-7be5be79.pth); classification only",
             title="AlexNet", family="alexnet", input_rule=f"each side at least {_ALEXNET_MIN_SIZE} pixels",
             classification_only="its first convolution has stride 4, so it has no stride-2 feature map for a "
                                 "UNet decoder; use vgg16 or resnet18",
             **_TORCHVISION_PLAIN),
    ArchSpec("vgg16", VGG16Encoder, feature_channels=(64, 128, 256, 512, 512),
             description="VGG16, torchvision layout (vgg16-397923af.pth)", title="VGG16", family="vgg",
             input_rule=f"each side at least {_VGG_MIN_SIZE} pixels", **_TORCHVISION_PLAIN),
)

for _spec in SPECS_CLASSIC:
    ARCHS[_spec.name] = _spec
FLEXUNET_BACKBONE.register_class(VGG16Encoder)  # not AlexNet: no stride-2 map for the decoder
