"""Encoder registry: 2D networks whose ``forward`` returns five feature maps, deepest last.

The one registry :data:`ARCHS` also holds the 3D encoders of :mod:`.encoders3d` (``ArchSpec.spatial_dims``
is 3; they register themselves when ``medxfer.models`` is imported).

Every encoder gives feature maps at strides 2, 4, 8, 16 and 32 (the FlexibleUNet encoder
convention), so one module serves the classifier (pool the last map) and the UNet decoder
(all five, registered in MONAI's ``FLEXUNET_BACKBONE`` as ``medxfer-<arch>``).

Two layouts of "ResNet50" exist and they are different networks:

- ``resnet50`` — torchvision layout (v1.5): stride in the 3×3 conv, no conv biases, BatchNorm
  eps 1e-5. ImageNet ``resnet50-*.pth`` and RadImageNet's PyTorch release load here.
- ``resnet50_keras`` — Keras ``applications.ResNet50`` (v1): stride in the first 1×1 conv,
  conv biases, BatchNorm eps 1.001e-5. The RadImageNet Keras release is this network.
  Its state dict has the same key names, so loading one into the other would *run* and
  compute something else; the weights importer refuses it.

ResNet18/34/50, DenseNet121 and EfficientNet-B0…B4 are built from ``monai.networks.nets``
(their submodules are adopted so state-dict keys match the torchvision/MONAI layouts). The
Keras-layout ResNet50 and MobileNet v1 are written here because MONAI has no network with
their topology (v1 stride placement, TF "same" padding, ReLU6, BN eps 1e-3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import DenseNet121
from monai.networks.nets.efficientnet import EfficientNetBNFeatures, EfficientNetEncoder
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from monai.networks.nets.resnet import ResNet, get_inplanes
from torch import nn

Blocks = list[tuple[str, list[nn.Module]]]

KERAS_BN_EPS = 1.001e-5  # keras.applications ResNet/DenseNet
KERAS_DEFAULT_BN_EPS = 1e-3  # keras BatchNormalization default (MobileNet, EfficientNet)
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 is PyTorch momentum 0.01
# Momentum used for training, whatever the architecture's origin: PyTorch's default. Keras' 0.99
# (MONAI's EfficientNet, the Keras layouts) suits long ImageNet runs; on a study's small cohort the
# running statistics would stay near their initial values and a scratch network would be evaluated
# with them (constant predictions). Momentum is not a weight: imported weights are unaffected.
TRAIN_BN_MOMENTUM = 0.1


class Encoder(nn.Module, BaseEncoder):
    """Base of every registered encoder.

    Subclasses set ``arch`` and ``feature_channels`` (five ints) and implement :meth:`blocks`;
    what an architecture *is* (stem keys, head keys, Keras facts …) is its :class:`ArchSpec`.
    """

    backbone_names: list[str] = []
    arch: str
    feature_channels: tuple[int, ...]

    def __init__(self, arch: str, in_channels: int = 3, spatial_dims: int = 2, pretrained: bool = False) -> None:
        super().__init__()
        expected = ARCHS[arch].spatial_dims if arch in ARCHS else 2
        if spatial_dims != expected:
            raise ValueError(f"{arch} is a {expected}D encoder (spatial_dims={expected}), "
                             f"got spatial_dims={spatial_dims}")
        if pretrained:
            raise ValueError("medxfer never downloads weights: build the encoder without `pretrained` and pass "
                             "a weights source (medxfer.models.create_segmenter(..., weights=NAME))")
        self.arch = arch
        self.in_channels = in_channels
        self.frozen_blocks: tuple[str, ...] = ()  # module names kept in eval mode (set by apply_freeze)

    @property
    def spec(self) -> "ArchSpec":
        """The registry entry of this encoder's architecture."""
        return arch_spec(self.arch)

    def blocks(self) -> Blocks:
        """Ordered (input → output) named groups of modules: the units of ``freeze: top:K``."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Encoder":
        """Like ``nn.Module.train`` but frozen blocks stay in eval mode: their BatchNorm statistics
        do not move (Keras semantics) and their dropout / drop-connect is off, so a frozen encoder
        is a fixed function. Looked up by module name, so it survives ``SyncBatchNorm`` conversion."""
        super().train(mode)
        if self.frozen_blocks:
            modules = dict(self.named_modules())
            for name in self.frozen_blocks:
                modules[name].eval()
        return self

    def set_bn_momentum(self, momentum: float = TRAIN_BN_MOMENTUM) -> None:
        """Set the running-statistics momentum of every BatchNorm layer."""
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = momentum

    def set_bn_eps(self, eps: float) -> None:
        """Set the epsilon of every BatchNorm layer (weights trained with another eps)."""
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = eps

    # --- MONAI BaseEncoder interface (FlexibleUNet registration) ---
    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"arch": a, "spatial_dims": ARCHS[a].spatial_dims, "in_channels": ARCHS[a].in_channels,
                 "pretrained": False} for a in cls.backbone_names]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [ARCHS[a].feature_channels for a in cls.backbone_names]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(cls.backbone_names)

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return [flexunet_name(a) for a in cls.backbone_names]


# ----------------------------------------------------------------------------- ResNet (torchvision)

_RESNET_LAYOUT = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
                  "resnet50": ("bottleneck", [3, 4, 6, 3])}


class TorchvisionResNet(Encoder):
    """torchvision-layout ResNet built from ``monai.networks.nets.ResNet`` (shortcut B, no
    downsample bias, 7×7 stem, max-pool): state-dict keys are torchvision's minus ``fc``."""

    backbone_names = list(_RESNET_LAYOUT)

    def __init__(self, arch: str = "resnet50", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        block, layers = _RESNET_LAYOUT[arch]
        net = ResNet(block=block, layers=layers, block_inplanes=get_inplanes(), spatial_dims=2,
                     n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B",
                     bias_downsample=False, feed_forward=False)
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_channels = ARCHS[arch].feature_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features

    def blocks(self) -> Blocks:
        out: Blocks = [("stem", [self.conv1, self.bn1])]
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            out.extend((f"layer{i}.{j}", [block]) for j, block in enumerate(layer))
        return out


# ----------------------------------------------------------------------------- ResNet50 (Keras v1)

def _keras_bn(channels: int, eps: float = KERAS_BN_EPS) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=KERAS_BN_MOMENTUM)


class KerasBottleneck(nn.Module):
    """Keras ``residual_block_v1``: stride in the first 1×1 conv, biases on every conv."""

    def __init__(self, in_channels: int, filters: int, stride: int, conv_shortcut: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, filters, 1, stride=stride, bias=True)
        self.bn1 = _keras_bn(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1, bias=True)
        self.bn2 = _keras_bn(filters)
        self.conv3 = nn.Conv2d(filters, 4 * filters, 1, bias=True)
        self.bn3 = _keras_bn(4 * filters)
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, 4 * filters, 1, stride=stride, bias=True),
                                         _keras_bn(4 * filters)) if conv_shortcut else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + shortcut)


class KerasResNet50(Encoder):
    """``keras.applications.ResNet50`` (v1) in PyTorch, with torchvision-style module names."""

    backbone_names = ["resnet50_keras"]

    def __init__(self, arch: str = "resnet50_keras", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=True)  # ZeroPadding2D(3) + valid
        self.bn1 = _keras_bn(64)
        self.act = nn.ReLU()
        # ZeroPadding2D(1) + MaxPooling2D(3, 2): zero and -inf padding agree after the ReLU.
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, in_ch = [], 64
        for filters, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            blocks = [KerasBottleneck(in_ch, filters, stride, conv_shortcut=True)]
            blocks += [KerasBottleneck(4 * filters, filters, 1, conv_shortcut=False) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = 4 * filters
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_channels = ARCHS[arch].feature_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    forward = TorchvisionResNet.forward
    blocks = TorchvisionResNet.blocks


# ----------------------------------------------------------------------------- DenseNet121 (MONAI)

class DenseNetEncoder(Encoder):
    """``monai.networks.nets.DenseNet121`` features (keys ``features.*``, MONAI's ``.layers.`` infix).

    The Keras DenseNet121 has the same topology; its weights load here with BatchNorm eps set
    to Keras's 1.001e-5 (recorded in the weights record as ``arch_options.bn_eps``).
    """

    backbone_names = ["densenet121"]

    def __init__(self, arch: str = "densenet121", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        self.features = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1).features
        self.feature_channels = ARCHS[arch].feature_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.features
        x = f.relu0(f.norm0(f.conv0(x)))
        features = [x]
        x = f.denseblock1(f.pool0(x))
        features.append(x)
        x = f.denseblock2(f.transition1(x))
        features.append(x)
        x = f.denseblock3(f.transition2(x))
        features.append(x)
        x = F.relu(f.norm5(f.denseblock4(f.transition3(x))))
        features.append(x)
        return features

    def blocks(self) -> Blocks:
        f = self.features
        out: Blocks = [("stem", [f.conv0, f.norm0])]
        for b in range(1, 5):
            block = getattr(f, f"denseblock{b}")
            out.extend((f"denseblock{b}.{name}", [layer]) for name, layer in block.named_children())
            if b < 4:
                out.append((f"transition{b}", [getattr(f, f"transition{b}")]))
        out.append(("norm5", [f.norm5]))
        return out


# ----------------------------------------------------------------------------- EfficientNet (MONAI)

class EfficientNetEncoderB(Encoder):
    """MONAI ``EfficientNetBNFeatures`` (B0–B4): keys ``_conv_stem``, ``_bn0``, ``_blocks.N``.

    The deepest map is the last MBConv stage (MONAI's encoder convention, no 1×1 head conv).
    """

    backbone_names = [f"efficientnet-b{i}" for i in range(5)]

    def __init__(self, arch: str = "efficientnet-b0", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        net = EfficientNetBNFeatures(arch, pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=1)
        self._conv_stem_padding, self._conv_stem, self._bn0 = net._conv_stem_padding, net._conv_stem, net._bn0
        self._swish, self._blocks, self.extract_stacks = net._swish, net._blocks, net.extract_stacks
        self.feature_channels = ARCHS[arch].feature_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(x))))
        features = [x] if 0 in self.extract_stacks else []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i + 1 in self.extract_stacks:
                features.append(x)
        return features

    def blocks(self) -> Blocks:
        out: Blocks = [("stem", [self._conv_stem, self._bn0])]
        for i, stage in enumerate(self._blocks):  # MONAI groups MBConv blocks by stage
            out.extend((f"_blocks.{i}.{j}", [block]) for j, block in enumerate(stage))
        return out


# ----------------------------------------------------------------------------- MobileNet v1 (Keras)

class TFSamePad2d(nn.Module):
    """TensorFlow ``padding="same"`` for a strided conv: extra padding goes bottom/right."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)


class DepthwiseSeparable(nn.Module):
    """Keras ``_depthwise_conv_block``: 3×3 depthwise (stride-2 pads bottom/right), 1×1 pointwise, ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1)) if stride == 2 else nn.Identity()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=0 if stride == 2 else 1,
                            groups=in_channels, bias=False)
        self.dw_bn = _keras_bn(in_channels, KERAS_DEFAULT_BN_EPS)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pw_bn = _keras_bn(out_channels, KERAS_DEFAULT_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.dw_bn(self.dw(self.pad(x))))
        return F.relu6(self.pw_bn(self.pw(x)))


_MOBILENET_BLOCKS = ([(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5
                     + [(1024, 2), (1024, 1)])
_MOBILENET_TAPS = (2, 4, 10, 12)  # block indices whose outputs are the stride 4, 8, 16, 32 maps
_MOBILENET_ALPHAS = {"mobilenet_v1_025": 0.25, "mobilenet_v1_050": 0.5, "mobilenet_v1_075": 0.75,
                     "mobilenet_v1_100": 1.0}


class KerasMobileNetV1(Encoder):
    """``keras.applications.MobileNet`` (v1, width multiplier α, depth multiplier 1)."""

    backbone_names = list(_MOBILENET_ALPHAS)

    def __init__(self, arch: str = "mobilenet_v1_100", in_channels: int = 3, spatial_dims: int = 2,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        alpha = _MOBILENET_ALPHAS[arch]
        width = [int(32 * alpha)] + [int(f * alpha) for f, _ in _MOBILENET_BLOCKS]
        self.conv1_pad = TFSamePad2d(3, 2)
        self.conv1 = nn.Conv2d(in_channels, width[0], 3, stride=2, bias=False)
        self.conv1_bn = _keras_bn(width[0], KERAS_DEFAULT_BN_EPS)
        self.layers = nn.ModuleList(DepthwiseSeparable(width[i], width[i + 1], stride)
                                     for i, (_, stride) in enumerate(_MOBILENET_BLOCKS))
        self.feature_channels = ARCHS[arch].feature_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self.conv1_bn(self.conv1(self.conv1_pad(x))))
        features = [x]
        for i, block in enumerate(self.layers):
            x = block(x)
            if i in _MOBILENET_TAPS:
                features.append(x)
        return features

    def blocks(self) -> Blocks:
        return [("stem", [self.conv1, self.conv1_bn])] + [(f"layers.{i}", [b]) for i, b in enumerate(self.layers)]


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class ArchSpec:
    """What an architecture name means, as data (the architecture half of timm's ``pretrained_cfg``:
    first conv, classifier keys …; the weights half is :class:`~medxfer.models.weights.WeightsRecord`).

    The class that builds it, its layout and feature widths, and every fact the weights importer,
    the stem adaptation and the error messages need about it: code reads these fields and never
    tests architecture names.
    """

    name: str
    builder: type[Encoder]
    layout: str  # "torchvision", "keras" or "monai": which weight files can fit it
    feature_channels: tuple[int, ...]
    description: str
    title: str = ""  # the network's common name, e.g. "ResNet50" (messages)
    family: str = ""  # "resnet", "densenet", "efficientnet", "mobilenet": the key-mapping rules of its files
    stem_weight: str = ""  # state-dict key of the first convolution (adapted to 1-channel input)
    stem_norm: str | None = None  # the BatchNorm right after it; None when the stem conv has a bias
    conv_bias: bool = False  # its convolutions have biases (tells the two ResNet50 layouts apart)
    twin: str | None = None  # the same network in the other layout: same key names, another computation
    head_pattern: str | None = None  # regex of classifier-head keys in its torchvision-layout files
    radimagenet_children: tuple[tuple[str, str], ...] = ()  # RadImageNet PyTorch ``backbone.N`` → module
    keras_application: str | None = None  # the keras.applications network with its topology and layer names
    keras_bn_eps: float | None = None  # BatchNormalization epsilon its Keras weights were trained with
    keras_preprocessing: str | None = None  # preset its Keras .h5 files expect unless told otherwise
    # preset of Keras's own ImageNet file for it (keras.applications preprocess_input), when that differs from
    # keras_preprocessing (the RadImageNet release's caffe order): the import message says which flag gives it
    keras_imagenet_preprocessing: str | None = None
    spatial_dims: int = 2  # 2 or 3: the input it takes (3D encoders live in encoders3d.py)
    in_channels: int = 3  # default input channels (1 for the 3D encoders: their published weights are gray)
    input_rule: str = ""  # what input sizes it takes, when restricted (3D: multiples of 32)
    published_weights: str = ""  # the published weights file(s) whose layout fits it (3D: MedicalNet, SwinUNETR SSL)
    # why it cannot serve a UNet decoder (e.g. AlexNet: no stride-2 map), "" when it can: the spec and bundle
    # checks refuse it for segmentation with this reason, before anything is built
    classification_only: str = ""

    def build(self, in_channels: int | None = None) -> Encoder:
        """A randomly initialised encoder (``in_channels`` defaults to the arch's)."""
        return self.builder(arch=self.name, in_channels=self.in_channels if in_channels is None else in_channels,
                            spatial_dims=self.spatial_dims)


def _efficientnet_channels() -> dict[str, tuple[int, ...]]:
    names = EfficientNetEncoder.get_encoder_names()
    return dict(zip(names, EfficientNetEncoder.num_channels_per_output()))


def _mobilenet_channels(alpha: float) -> tuple[int, ...]:
    return tuple(int(c * alpha) for c in (32, 128, 256, 512, 1024))


# torchvision's ResNet children as RadImageNet's PyTorch release numbers them (nn.Sequential(*children()[:k]))
_RADIMAGENET_RESNET = (("0", "conv1"), ("1", "bn1"), ("4", "layer1"), ("5", "layer2"), ("6", "layer3"), ("7", "layer4"))
_RESNET = {"family": "resnet", "stem_weight": "conv1.weight", "stem_norm": "bn1", "head_pattern": r"^fc\.",
           "radimagenet_children": _RADIMAGENET_RESNET}
_MOBILENET = {"family": "mobilenet", "stem_weight": "conv1.weight", "stem_norm": "conv1_bn",
              "keras_application": "MobileNet", "keras_bn_eps": KERAS_DEFAULT_BN_EPS, "keras_preprocessing": "tf"}

ARCHS: dict[str, ArchSpec] = {}
for _spec in (
    ArchSpec("resnet18", TorchvisionResNet, "torchvision", (64, 64, 128, 256, 512), "ResNet18, torchvision layout",
             title="ResNet18", **_RESNET),
    ArchSpec("resnet34", TorchvisionResNet, "torchvision", (64, 64, 128, 256, 512), "ResNet34, torchvision layout",
             title="ResNet34", **_RESNET),
    ArchSpec("resnet50", TorchvisionResNet, "torchvision", (64, 256, 512, 1024, 2048),
             "ResNet50 v1.5, torchvision layout (ImageNet .pth, RadImageNet PyTorch)",
             title="ResNet50", twin="resnet50_keras", **_RESNET),
    ArchSpec("resnet50_keras", KerasResNet50, "keras", (64, 256, 512, 1024, 2048),
             "ResNet50 v1, Keras layout (RadImageNet Keras .h5, Keras ImageNet .h5)",
             title="ResNet50", family="resnet", stem_weight="conv1.weight", stem_norm=None, conv_bias=True,
             twin="resnet50", keras_application="ResNet50", keras_bn_eps=KERAS_BN_EPS, keras_preprocessing="caffe",
             keras_imagenet_preprocessing="caffe-keras"),
    ArchSpec("densenet121", DenseNetEncoder, "torchvision", (64, 256, 512, 1024, 1024),
             "DenseNet121 (MONAI; torchvision .pth, RadImageNet PyTorch and Keras .h5)",
             title="DenseNet121", family="densenet", stem_weight="features.conv0.weight", stem_norm="features.norm0",
             head_pattern=r"^classifier\.", radimagenet_children=(("0", "features"),),
             keras_application="DenseNet121", keras_bn_eps=KERAS_BN_EPS, keras_preprocessing="caffe",
             keras_imagenet_preprocessing="imagenet"),
    *(ArchSpec(name, EfficientNetEncoderB, "monai", ch, f"EfficientNet-{name[-2:].upper()} (MONAI)",
               title=f"EfficientNet-{name[-2:].upper()}", family="efficientnet", stem_weight="_conv_stem.weight",
               stem_norm="_bn0")
      for name, ch in _efficientnet_channels().items() if name in EfficientNetEncoderB.backbone_names),
    *(ArchSpec(name, KerasMobileNetV1, "keras", _mobilenet_channels(alpha), f"MobileNet v1 alpha={alpha}, Keras layout",
               title=f"MobileNet v1 alpha={alpha}", **_MOBILENET)
      for name, alpha in _MOBILENET_ALPHAS.items()),
):
    ARCHS[_spec.name] = _spec

def flexunet_name(arch: str) -> str:
    """The name under which ``arch`` is registered in MONAI's ``FLEXUNET_BACKBONE``."""
    return f"medxfer-{arch}"


for _cls in (TorchvisionResNet, KerasResNet50, DenseNetEncoder, EfficientNetEncoderB, KerasMobileNetV1):
    FLEXUNET_BACKBONE.register_class(_cls)


def arch_spec(arch: str) -> ArchSpec:
    """The registry entry for ``arch``; an unknown name lists the known ones."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown encoder {arch!r}; known: {', '.join(ARCHS)}") from None


def build_encoder(arch: str, in_channels: int | None = None) -> Encoder:
    """A randomly initialised encoder (use :func:`medxfer.models.create_encoder` for weights)."""
    return arch_spec(arch).build(in_channels)
