"""Keras-layout InceptionV3 and Inception-ResNet-v2 (``inception_v3``, ``inception_resnet_v2``).

``keras.applications.InceptionV3`` / ``InceptionResNetV2`` written in PyTorch (no torchvision or
timm): every convolution is Keras's ``conv2d_bn`` (Conv2D without bias, BatchNormalization with
``scale=False`` and epsilon 1e-3, ReLU), the Inception-ResNet residual convolutions have biases,
"same" average pools exclude the padding from the mean (TensorFlow semantics). Module names follow
torchvision's ``inception_v3`` (``Conv2d_1a_3x3``, ``Mixed_5b.branch1x1`` …) and timm's
``inception_resnet_v2`` (``conv2d_1a``, ``repeat.0.branch1.1`` …); the Keras layer each module
holds is the layer map of :mod:`.weights.keras_h5`. RadImageNet's ``RadImageNet-InceptionV3_notop.h5``
and ``RadImageNet-IRV2_notop.h5`` import here with RadImageNet's input (caffe mode, then × 1/255: what its
training scripts feed all four networks); Keras's own ImageNet Inception files take "tf" mode ([-1, 1]):
import them with ``--preprocessing tf``.

Two paddings, the same weights
------------------------------
Keras runs the stride-2 3×3 convolutions and max-pools, and two stride-1 3×3 convolutions of
the stem, with ``padding="valid"``: a 299×299 input ends at 8×8, a 224×224 one at 5×5, and
nothing smaller than 75×75 fits. That is what the weights were trained with, so:

- ``padding="keras"`` (the default: :func:`~medxfer.models.create_encoder`, the classifier) computes
  exactly what Keras computes. The five maps are Keras's own (the stem's 64- and 192-channel
  outputs, then the ends of the three Inception stages), at strides of about 2, 4, 8, 16 and 32
  less the valid borders; the input must be at least 75×75.
- ``padding="same"`` (what MONAI's ``FlexibleUNet`` builds, via :meth:`get_encoder_parameters`,
  hence :func:`~medxfer.models.create_segmenter`) gives every one of those "valid" 3×3 layers one
  pixel of padding on each side — segmentation_models_pytorch's fix for its Inception-ResNet-v2
  and Inception-v4 encoders — so each stride-2 layer halves an even input and the five maps are
  at exactly strides 2, 4, 8, 16 and 32 (input sizes multiples of 32, as FlexibleUNet needs).

Padding changes no weight shape: one state dict loads into both. The UNet encoder with Keras
weights is therefore a slightly different function from the Keras network (borders kept, the
sampling grid shifted by a pixel) — the price of exact strides in a network that is fine-tuned
anyway — while the classifier keeps Keras's exact computation.

``blocks()`` (the units of ``freeze: top:K``): the five stem convolutions (``stem`` is the first),
then Keras's ``mixed0`` … ``mixed10`` (InceptionV3) or ``mixed_5b``, each ``block35_i``,
``mixed_6a``, each ``block17_i``, ``mixed_7a``, each ``block8_i`` and ``conv_7b`` (Inception-ResNet-v2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from .encoders import ARCHS, KERAS_BN_MOMENTUM, KERAS_DEFAULT_BN_EPS, ArchSpec, Blocks, Encoder

PADDINGS = ("keras", "same")
KERAS_MIN_INPUT = 75  # keras.applications' smallest input for both networks (valid paddings)


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")


class ScalelessBatchNorm(nn.BatchNorm2d):
    """Keras ``BatchNormalization(scale=False)`` (epsilon 1e-3): beta trains, gamma is the constant 1.

    Gamma is a buffer named ``weight``: the state-dict keys are a BatchNorm's (Keras files, medxfer
    checkpoints and other BatchNorm code see the usual four), and the trainable parameters are
    Keras's trainable weights, so no optimizer moves a scale the network never had. Known limitation:
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` cannot convert it (it copies ``weight`` as a
    parameter); medxfer's multi-GPU configs wrap the network in DDP without that conversion."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=KERAS_DEFAULT_BN_EPS, momentum=KERAS_BN_MOMENTUM)
        del self.weight
        self.register_buffer("weight", torch.ones(channels))


class ConvBN(nn.Module):
    """Keras ``conv2d_bn``: Conv2D without bias, :class:`ScalelessBatchNorm`, ReLU unless ``relu`` is False."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = ScalelessBatchNorm(out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


def _same(in_channels: int, out_channels: int, kernel: int | tuple[int, int]) -> ConvBN:
    """A stride-1 Keras ``padding="same"`` conv2d_bn (odd kernels: symmetric padding)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return ConvBN(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))


class _Paddings:
    """The padding of Keras's "valid" 3×3 layers in one of :data:`PADDINGS`."""

    def __init__(self, padding: str) -> None:
        _check_padding(padding)
        self.pad = 0 if padding == "keras" else 1

    def conv(self, in_channels: int, out_channels: int, stride: int = 1) -> ConvBN:
        """A Keras ``padding="valid"`` 3×3 conv2d_bn."""
        return ConvBN(in_channels, out_channels, 3, stride=stride, padding=self.pad)

    def maxpool(self) -> nn.MaxPool2d:
        """Keras ``MaxPooling2D(3, strides=2)`` (valid); padded with -inf in "same" mode."""
        return nn.MaxPool2d(3, stride=2, padding=self.pad)


def _avgpool() -> nn.AvgPool2d:
    """Keras ``AveragePooling2D(3, strides=1, padding="same")``: the padding is not averaged in."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class _KerasPaddingEncoder(Encoder):
    """What the two networks share: the padding mode, its input check, the FlexibleUNet mode."""

    def __init__(self, arch: str, in_channels: int, spatial_dims: int, pretrained: bool, padding: str) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        _check_padding(padding)
        self.padding = padding
        self.feature_channels = ARCHS[arch].feature_channels

    def check_input(self, x: torch.Tensor) -> None:
        """Keras's own limit in Keras padding: a clear error instead of an empty map deep inside."""
        if self.padding == "keras" and min(x.shape[-2:]) < KERAS_MIN_INPUT:
            raise ValueError(f"{self.arch} with Keras padding (the classifier) takes inputs of at least "
                             f"{KERAS_MIN_INPUT}x{KERAS_MIN_INPUT}, as keras.applications does; got "
                             f"{tuple(x.shape[-2:])} (the UNet encoder, padding='same', takes smaller ones)")

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        """FlexibleUNet builds the encoder with ``padding="same"``: maps at exactly strides 2 … 32."""
        return [dict(params, padding="same") for params in super().get_encoder_parameters()]


# ----------------------------------------------------------------------------- InceptionV3

class InceptionA(nn.Module):
    """Keras ``mixed0`` … ``mixed2`` (35×35 grid at 299 input)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        # attribute order is Keras's creation order (the order its auto-named layers are numbered in)
        self.branch1x1 = _same(in_channels, 64, 1)
        self.branch5x5_1 = _same(in_channels, 48, 1)
        self.branch5x5_2 = _same(48, 64, 5)
        self.branch3x3dbl_1 = _same(in_channels, 64, 1)
        self.branch3x3dbl_2 = _same(64, 96, 3)
        self.branch3x3dbl_3 = _same(96, 96, 3)
        self.avgpool = _avgpool()
        self.branch_pool = _same(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(self.avgpool(x))], 1)


class InceptionB(nn.Module):
    """Keras ``mixed3``: the stride-2 reduction to the 17×17 grid."""

    def __init__(self, in_channels: int, pads: _Paddings) -> None:
        super().__init__()
        self.branch3x3 = pads.conv(in_channels, 384, stride=2)
        self.branch3x3dbl_1 = _same(in_channels, 64, 1)
        self.branch3x3dbl_2 = _same(64, 96, 3)
        self.branch3x3dbl_3 = pads.conv(96, 96, stride=2)
        self.maxpool = pads.maxpool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.maxpool(x)], 1)


class InceptionC(nn.Module):
    """Keras ``mixed4`` … ``mixed7`` (factorised 7×7 convolutions)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _same(in_channels, 192, 1)
        self.branch7x7_1 = _same(in_channels, c7, 1)
        self.branch7x7_2 = _same(c7, c7, (1, 7))
        self.branch7x7_3 = _same(c7, 192, (7, 1))
        self.branch7x7dbl_1 = _same(in_channels, c7, 1)
        self.branch7x7dbl_2 = _same(c7, c7, (7, 1))
        self.branch7x7dbl_3 = _same(c7, c7, (1, 7))
        self.branch7x7dbl_4 = _same(c7, c7, (7, 1))
        self.branch7x7dbl_5 = _same(c7, 192, (1, 7))
        self.avgpool = _avgpool()
        self.branch_pool = _same(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = conv(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(self.avgpool(x))], 1)


class InceptionD(nn.Module):
    """Keras ``mixed8``: the stride-2 reduction to the 8×8 grid."""

    def __init__(self, in_channels: int, pads: _Paddings) -> None:
        super().__init__()
        self.branch3x3_1 = _same(in_channels, 192, 1)
        self.branch3x3_2 = pads.conv(192, 320, stride=2)
        self.branch7x7x3_1 = _same(in_channels, 192, 1)
        self.branch7x7x3_2 = _same(192, 192, (1, 7))
        self.branch7x7x3_3 = _same(192, 192, (7, 1))
        self.branch7x7x3_4 = pads.conv(192, 192, stride=2)
        self.maxpool = pads.maxpool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, self.maxpool(x)], 1)


class InceptionE(nn.Module):
    """Keras ``mixed9``, ``mixed10`` (expanded filter banks)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = _same(in_channels, 320, 1)
        self.branch3x3_1 = _same(in_channels, 384, 1)
        self.branch3x3_2a = _same(384, 384, (1, 3))
        self.branch3x3_2b = _same(384, 384, (3, 1))
        self.branch3x3dbl_1 = _same(in_channels, 448, 1)
        self.branch3x3dbl_2 = _same(448, 384, 3)
        self.branch3x3dbl_3a = _same(384, 384, (1, 3))
        self.branch3x3dbl_3b = _same(384, 384, (3, 1))
        self.avgpool = _avgpool()
        self.branch_pool = _same(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3), self.branch_pool(self.avgpool(x))], 1)


_V3_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
_V3_MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
             "Mixed_7a", "Mixed_7b", "Mixed_7c")  # Keras mixed0 … mixed10


class KerasInceptionV3(_KerasPaddingEncoder):
    """``keras.applications.InceptionV3`` (torchvision module names, no auxiliary head).

    Maps: ``Conv2d_2b_3x3`` (64), ``Conv2d_4a_3x3`` (192), ``Mixed_5d`` (288), ``Mixed_6e`` (768),
    ``Mixed_7c`` (2048) — the inputs of the stride-2 layers and the last block.
    """

    backbone_names = ["inception_v3"]

    def __init__(self, arch: str = "inception_v3", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False, padding: str = "keras") -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained, padding)
        pads = _Paddings(padding)
        self.Conv2d_1a_3x3 = pads.conv(in_channels, 32, stride=2)
        self.Conv2d_2a_3x3 = pads.conv(32, 32)
        self.Conv2d_2b_3x3 = _same(32, 64, 3)
        self.maxpool1 = pads.maxpool()
        self.Conv2d_3b_1x1 = _same(64, 80, 1)
        self.Conv2d_4a_3x3 = pads.conv(80, 192)
        self.maxpool2 = pads.maxpool()
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288, pads)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768, pads)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        features = [x]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x)))
        features.append(x)
        x = self.maxpool2(x)
        for name in _V3_MIXED:
            x = getattr(self, name)(x)
            if name in ("Mixed_5d", "Mixed_6e", "Mixed_7c"):
                features.append(x)
        return features

    def blocks(self) -> Blocks:
        names = ("stem",) + _V3_STEM[1:]
        out: Blocks = [(name, [getattr(self, module)]) for name, module in zip(names, _V3_STEM)]
        return out + [(name, [getattr(self, name)]) for name in _V3_MIXED]


# ----------------------------------------------------------------------------- Inception-ResNet-v2

class Mixed5b(nn.Module):
    """Keras ``mixed_5b`` (320 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _same(192, 96, 1)
        self.branch1 = nn.Sequential(_same(192, 48, 1), _same(48, 64, 5))
        self.branch2 = nn.Sequential(_same(192, 64, 1), _same(64, 96, 3), _same(96, 96, 3))
        self.branch3 = nn.Sequential(_avgpool(), _same(192, 64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class ResidualInception(nn.Module):
    """Keras ``inception_resnet_block``: ``act(x + scale * conv2d(concat(branches)))``, ``conv2d``
    a 1×1 convolution with bias and no BatchNorm (Keras ``<block>_conv``)."""

    def __init__(self, channels: int, branches: list[nn.Module], mixed_channels: int, scale: float,
                 relu: bool = True) -> None:
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)
        self.num_branches = len(branches)
        self.conv2d = nn.Conv2d(mixed_channels, channels, 1, bias=True)
        self.scale, self.relu = scale, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], 1)
        x = x + self.conv2d(mixed) * self.scale
        return F.relu(x) if self.relu else x


def block35() -> ResidualInception:
    """Keras ``block35_i`` (Inception-ResNet-A, 320 channels, scale 0.17)."""
    return ResidualInception(320, [_same(320, 32, 1), nn.Sequential(_same(320, 32, 1), _same(32, 32, 3)),
                                   nn.Sequential(_same(320, 32, 1), _same(32, 48, 3), _same(48, 64, 3))],
                             128, scale=0.17)


def block17() -> ResidualInception:
    """Keras ``block17_i`` (Inception-ResNet-B, 1088 channels, scale 0.1)."""
    return ResidualInception(1088, [_same(1088, 192, 1),
                                    nn.Sequential(_same(1088, 128, 1), _same(128, 160, (1, 7)),
                                                  _same(160, 192, (7, 1)))], 384, scale=0.1)


def block8(scale: float = 0.2, relu: bool = True) -> ResidualInception:
    """Keras ``block8_i`` (Inception-ResNet-C, 2080 channels; the last: scale 1, no activation)."""
    return ResidualInception(2080, [_same(2080, 192, 1),
                                    nn.Sequential(_same(2080, 192, 1), _same(192, 224, (1, 3)),
                                                  _same(224, 256, (3, 1)))], 448, scale=scale, relu=relu)


class Mixed6a(nn.Module):
    """Keras ``mixed_6a``: the stride-2 reduction to 1088 channels."""

    def __init__(self, pads: _Paddings) -> None:
        super().__init__()
        self.branch0 = pads.conv(320, 384, stride=2)
        self.branch1 = nn.Sequential(_same(320, 256, 1), _same(256, 256, 3), pads.conv(256, 384, stride=2))
        self.branch2 = pads.maxpool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Mixed7a(nn.Module):
    """Keras ``mixed_7a``: the stride-2 reduction to 2080 channels."""

    def __init__(self, pads: _Paddings) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(_same(1088, 256, 1), pads.conv(256, 384, stride=2))
        self.branch1 = nn.Sequential(_same(1088, 256, 1), pads.conv(256, 288, stride=2))
        self.branch2 = nn.Sequential(_same(1088, 256, 1), _same(256, 288, 3), pads.conv(288, 320, stride=2))
        self.branch3 = pads.maxpool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


_IRV2_STEM = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a")


class KerasInceptionResNetV2(_KerasPaddingEncoder):
    """``keras.applications.InceptionResNetV2`` (timm module names, no classifier).

    Maps: ``conv2d_2b`` (64), ``conv2d_4a`` (192), ``repeat`` (320), ``repeat_1`` (1088),
    ``conv2d_7b`` (1536) — segmentation_models_pytorch's taps of this network.
    """

    backbone_names = ["inception_resnet_v2"]

    def __init__(self, arch: str = "inception_resnet_v2", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False, padding: str = "keras") -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained, padding)
        pads = _Paddings(padding)
        self.conv2d_1a = pads.conv(in_channels, 32, stride=2)
        self.conv2d_2a = pads.conv(32, 32)
        self.conv2d_2b = _same(32, 64, 3)
        self.maxpool_3a = pads.maxpool()
        self.conv2d_3b = _same(64, 80, 1)
        self.conv2d_4a = pads.conv(80, 192)
        self.maxpool_5a = pads.maxpool()
        self.mixed_5b = Mixed5b()
        self.repeat = nn.Sequential(*(block35() for _ in range(10)))
        self.mixed_6a = Mixed6a(pads)
        self.repeat_1 = nn.Sequential(*(block17() for _ in range(20)))
        self.mixed_7a = Mixed7a(pads)
        self.repeat_2 = nn.Sequential(*(block8() for _ in range(9)))
        self.block8 = block8(scale=1.0, relu=False)
        self.conv2d_7b = _same(2080, 1536, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        features = [x]
        x = self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x)))
        features.append(x)
        x = self.repeat(self.mixed_5b(self.maxpool_5a(x)))
        features.append(x)
        x = self.repeat_1(self.mixed_6a(x))
        features.append(x)
        x = self.conv2d_7b(self.block8(self.repeat_2(self.mixed_7a(x))))
        features.append(x)
        return features

    def blocks(self) -> Blocks:
        names = ("stem",) + _IRV2_STEM[1:]
        out: Blocks = [(name, [getattr(self, module)]) for name, module in zip(names, _IRV2_STEM)]
        out.append(("mixed_5b", [self.mixed_5b]))
        out.extend((f"repeat.{i}", [block]) for i, block in enumerate(self.repeat))
        out.append(("mixed_6a", [self.mixed_6a]))
        out.extend((f"repeat_1.{i}", [block]) for i, block in enumerate(self.repeat_1))
        out.append(("mixed_7a", [self.mixed_7a]))
        out.extend((f"repeat_2.{i}", [block]) for i, block in enumerate(self.repeat_2))
        return out + [("block8", [self.block8]), ("conv2d_7b", [self.conv2d_7b])]


# ----------------------------------------------------------------------------- registry

_KERAS_INCEPTION = {"layout": "keras", "family": "inception", "keras_bn_eps": KERAS_DEFAULT_BN_EPS,
                    # RadImageNet's scripts feed all four networks caffe-mode input x 1/255 (breast_train.py);
                    # Keras's own ImageNet Inception files expect tf mode ([-1, 1])
                    "keras_preprocessing": "caffe", "keras_imagenet_preprocessing": "tf",
                    "input_rule": f"classifier (Keras padding): at least {KERAS_MIN_INPUT}x{KERAS_MIN_INPUT}; "
                                  "UNet: multiples of 32"}
SPECS_INCEPTION = (
    ArchSpec("inception_v3", KerasInceptionV3, feature_channels=(64, 192, 288, 768, 2048),
             description="InceptionV3, Keras layout (keras.applications .h5: RadImageNet-InceptionV3_notop.h5)",
             title="InceptionV3", stem_weight="Conv2d_1a_3x3.conv.weight", stem_norm="Conv2d_1a_3x3.bn",
             keras_application="InceptionV3", **_KERAS_INCEPTION),
    ArchSpec("inception_resnet_v2", KerasInceptionResNetV2, feature_channels=(64, 192, 320, 1088, 1536),
             description="Inception-ResNet-v2, Keras layout (keras.applications .h5: RadImageNet-IRV2_notop.h5)",
             title="InceptionResNetV2", stem_weight="conv2d_1a.conv.weight", stem_norm="conv2d_1a.bn",
             keras_application="InceptionResNetV2", **_KERAS_INCEPTION),
)

for _spec in SPECS_INCEPTION:
    ARCHS[_spec.name] = _spec
for _cls in (KerasInceptionV3, KerasInceptionResNetV2):
    FLEXUNET_BACKBONE.register_class(_cls)
