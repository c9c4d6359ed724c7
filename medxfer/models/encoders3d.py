"""3D encoders in the one encoder registry: MONAI's 3D ResNets, DenseNet121 and the SwinUNETR Swin-ViT.

Same contract as the 2D encoders (:mod:`.encoders`): ``forward`` returns five feature maps at
strides 2, 4, 8, 16 and 32, deepest last, for the classifier (pool the last map) and for MONAI
``FlexibleUNet(spatial_dims=3)`` (registered in ``FLEXUNET_BACKBONE`` as ``medxfer-<arch>``).
Every spatial size of the input must be a multiple of 32. Default input: 1 channel.

- ``resnet10_3d`` … ``resnet50_3d``: ``monai.networks.nets.ResNet`` with ``spatial_dims=3``, a
  7×7×7 stride-2 stem and MedicalNet's shortcut type and downsample bias per depth (MONAI's
  ``get_medicalnet_pretrained_resnet_args``: shortcut A for 18/34, B without bias for 10/50), so
  MedicalNet checkpoints load strictly. MedicalNet itself ran layer3/layer4 with stride 1 and
  dilation 2/4 (output stride 8); like MONAI's ``ResNetFeatures``, medxfer runs them strided
  (dilation changes no weight shape).
- ``densenet121_3d``: ``monai.networks.nets.DenseNet121(spatial_dims=3)`` features.
- ``swinvit_3d``: the Swin-ViT of ``monai.networks.nets.SwinUNETR`` (feature size 48, depths
  2-2-2-2, heads 3-6-12-24, window 7, patch 2: the self-supervised pretraining configuration);
  its five hidden states (layer-normalised, as SwinUNETR uses them) are the feature maps. State
  dict keys are SwinUNETR's (``swinViT.*``), so its weights move to a SwinUNETR as they are.
"""
from __future__ import annotations

import torch
from monai.networks.nets import DenseNet121
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from monai.networks.nets.resnet import ResNet, get_inplanes, get_medicalnet_pretrained_resnet_args
from monai.networks.nets.swin_unetr import PatchMerging, SwinTransformer
from torch import nn

from .encoders import ARCHS, ArchSpec, Blocks, DenseNetEncoder, Encoder, TorchvisionResNet

INPUT_MULTIPLE = 32  # every spatial size of a 3D encoder's input must be a multiple of this
INPUT_RULE = f"each spatial size a multiple of {INPUT_MULTIPLE} (e.g. 32³, 64³, 96³)"

# arch: (depth, block, layers) — the MedicalNet depths MONAI's ``resnet_params`` lists
_RESNET3D = {"resnet10_3d": (10, "basic", [1, 1, 1, 1]), "resnet18_3d": (18, "basic", [2, 2, 2, 2]),
             "resnet34_3d": (34, "basic", [3, 4, 6, 3]), "resnet50_3d": (50, "bottleneck", [3, 4, 6, 3])}

# The Swin-ViT of SwinUNETR as MONAI's research-contributions SSL pretraining built it (SSLHead):
SWIN_SSL = {"embed_dim": 48, "window_size": (7, 7, 7), "patch_size": (2, 2, 2), "depths": (2, 2, 2, 2),
            "num_heads": (3, 6, 12, 24), "mlp_ratio": 4.0, "qkv_bias": True}


def check_input_size(x: torch.Tensor) -> None:
    """A clear error when a spatial size of ``x`` is not a multiple of :data:`INPUT_MULTIPLE`."""
    bad = [int(s) for s in x.shape[2:] if int(s) % INPUT_MULTIPLE]
    if bad:
        raise ValueError(f"3D encoder input of spatial size {tuple(x.shape[2:])}: {INPUT_RULE} "
                         f"(crop or pad the volume; sizes {bad} are not)")


class ResNet3D(Encoder):
    """MONAI 3D ResNet in MedicalNet's configuration: keys ``conv1``, ``bn1``, ``layerN.i.*``
    (``downsample.0``/``downsample.1`` for shortcut B), MedicalNet's minus ``module.``."""

    backbone_names = list(_RESNET3D)

    def __init__(self, arch: str = "resnet18_3d", in_channels: int = 1, spatial_dims: int = 3,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        depth, block, layers = _RESNET3D[arch]
        bias_downsample, shortcut_type = get_medicalnet_pretrained_resnet_args(depth)
        net = ResNet(block=block, layers=layers, block_inplanes=get_inplanes(), spatial_dims=3,
                     n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, shortcut_type=shortcut_type,
                     bias_downsample=bias_downsample, feed_forward=False)
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_channels = ARCHS[arch].feature_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input_size(x)
        return TorchvisionResNet.forward(self, x)

    blocks = TorchvisionResNet.blocks


class DenseNet3D(Encoder):
    """``monai.networks.nets.DenseNet121(spatial_dims=3)`` features (keys ``features.*``)."""

    backbone_names = ["densenet121_3d"]

    def __init__(self, arch: str = "densenet121_3d", in_channels: int = 1, spatial_dims: int = 3,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        self.features = DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=1).features
        self.feature_channels = ARCHS[arch].feature_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input_size(x)
        return DenseNetEncoder.forward(self, x)

    blocks = DenseNetEncoder.blocks


class SwinViT3D(Encoder):
    """The Swin-ViT encoder of ``monai.networks.nets.SwinUNETR`` (v1, ``downsample="merging"``)."""

    backbone_names = ["swinvit_3d"]

    def __init__(self, arch: str = "swinvit_3d", in_channels: int = 1, spatial_dims: int = 3,
                 pretrained: bool = False) -> None:
        super().__init__(arch, in_channels, spatial_dims, pretrained)
        self.swinViT = SwinTransformer(in_chans=in_channels, norm_layer=nn.LayerNorm, patch_norm=False,
                                       use_checkpoint=False, spatial_dims=3, downsample=PatchMerging, use_v2=False,
                                       **SWIN_SSL)
        self.feature_channels = ARCHS[arch].feature_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input_size(x)
        return self.swinViT(x, True)

    def blocks(self) -> Blocks:
        vit = self.swinViT
        out: Blocks = [("stem", [vit.patch_embed])]
        for i in range(1, 5):
            stage = getattr(vit, f"layers{i}")[0]
            out.extend((f"swinViT.layers{i}.0.blocks.{j}", [block]) for j, block in enumerate(stage.blocks))
            if stage.downsample is not None:
                out.append((f"swinViT.layers{i}.0.downsample", [stage.downsample]))
        return out


_RESNET3D_FACTS = {"family": "resnet", "stem_weight": "conv1.weight", "stem_norm": "bn1",
                   "head_pattern": r"^(fc|conv_seg)\.", "spatial_dims": 3, "in_channels": 1, "input_rule": INPUT_RULE}
SPECS_3D = (
    *(ArchSpec(arch, ResNet3D, "medicalnet",
               (64, 64, 128, 256, 512) if block == "basic" else (64, 256, 512, 1024, 2048),
               f"3D ResNet{depth} (MONAI, MedicalNet configuration; MedicalNet resnet_{depth}.pth)",
               title=f"3D ResNet{depth}", published_weights=f"MedicalNet resnet_{depth}.pth / "
               f"resnet_{depth}_23dataset.pth (github.com/Tencent/MedicalNet)", **_RESNET3D_FACTS)
      for arch, (depth, block, _) in _RESNET3D.items()),
    ArchSpec("densenet121_3d", DenseNet3D, "monai", (64, 256, 512, 1024, 1024),
             "3D DenseNet121 (MONAI; medxfer checkpoints, plain MONAI state dicts)",
             title="3D DenseNet121", family="densenet", stem_weight="features.conv0.weight",
             stem_norm="features.norm0", head_pattern=r"^class_layers\.", spatial_dims=3, in_channels=1,
             input_rule=INPUT_RULE),
    ArchSpec("swinvit_3d", SwinViT3D, "swin-ssl", tuple(SWIN_SSL["embed_dim"] * 2 ** i for i in range(5)),
             "Swin-ViT encoder of SwinUNETR (MONAI; SwinUNETR self-supervised model_swinvit.pt)",
             title="SwinUNETR Swin-ViT", family="swin", stem_weight="swinViT.patch_embed.proj.weight",
             stem_norm=None, conv_bias=True,
             head_pattern=r"^(rotation_pre|rotation_head|contrastive_pre|contrastive_head|conv)\.",
             spatial_dims=3, in_channels=1, input_rule=INPUT_RULE,
             published_weights="model_swinvit.pt, SwinUNETR self-supervised Swin-ViT "
                               "(github.com/Project-MONAI/research-contributions, SwinUNETR/Pretrain)"),
)

for _spec in SPECS_3D:
    ARCHS[_spec.name] = _spec
for _cls in (ResNet3D, DenseNet3D, SwinViT3D):
    FLEXUNET_BACKBONE.register_class(_cls)


def archs_3d() -> list[str]:
    """The registered 3D encoder names."""
    return [name for name, spec in ARCHS.items() if spec.spatial_dims == 3]
