"""3D encoders in the one registry: five maps at strides 2…32, FlexibleUNet(spatial_dims=3), freeze blocks."""
from __future__ import annotations

import re

import pytest
import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from medxfer.models import ARCHS, apply_freeze, build_encoder, create_classifier, create_segmenter, flexunet_name
from medxfer.models.encoders3d import archs_3d

ARCHS_3D = ["resnet10_3d", "resnet18_3d", "resnet34_3d", "resnet50_3d", "densenet121_3d", "swinvit_3d"]
CHANNELS = {"resnet10_3d": (64, 64, 128, 256, 512), "resnet18_3d": (64, 64, 128, 256, 512),
            "resnet34_3d": (64, 64, 128, 256, 512), "resnet50_3d": (64, 256, 512, 1024, 2048),
            "densenet121_3d": (64, 256, 512, 1024, 1024), "swinvit_3d": (48, 96, 192, 384, 768)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _needs(arch: str) -> None:
    if arch == "swinvit_3d":
        pytest.importorskip("einops", reason="MONAI's SwinUNETR needs einops")


def test_the_3d_archs_are_in_the_one_registry():
    assert archs_3d() == ARCHS_3D
    for arch in ARCHS_3D:
        spec = ARCHS[arch]
        assert spec.spatial_dims == 3 and spec.in_channels == 1 and "multiple of 32" in spec.input_rule
        assert spec.feature_channels == CHANNELS[arch] and spec.family and spec.title
        assert flexunet_name(arch) in FLEXUNET_BACKBONE.register_dict
    assert all(ARCHS[a].spatial_dims == 2 for a in ARCHS if a not in ARCHS_3D)


@pytest.mark.parametrize("arch", ARCHS_3D)
def test_3d_encoder_returns_five_maps_at_strides_2_to_32(arch):
    _needs(arch)
    encoder = build_encoder(arch).eval()
    assert encoder.in_channels == 1
    with torch.no_grad():
        features = encoder(torch.randn(1, 1, 32, 64, 32))
    assert [tuple(f.shape[2:]) for f in features] == [(32 // s, 64 // s, 32 // s) for s in (2, 4, 8, 16, 32)]
    assert tuple(f.shape[1] for f in features) == CHANNELS[arch] == encoder.feature_channels
    pooled = torch.flatten(torch.nn.AdaptiveAvgPool3d(1)(features[-1]), 1)  # what a classifier head takes
    assert pooled.shape == (1, CHANNELS[arch][-1])


@pytest.mark.parametrize("arch", ARCHS_3D)
def test_arch_spec_facts_name_real_parts_of_the_3d_network(arch):
    _needs(arch)
    spec = ARCHS[arch]
    state = build_encoder(arch).state_dict()
    assert state[spec.stem_weight].ndim == 5 and state[spec.stem_weight].shape[1] == 1
    stem_bias = spec.stem_weight.rsplit(".", 1)[0] + ".bias"
    assert (f"{spec.stem_norm}.running_mean" in state) if spec.stem_norm else (stem_bias in state)
    assert not any(re.match(spec.head_pattern, k) for k in state)
    assert spec.layout in ("medicalnet", "monai", "swin-ssl")
    assert (spec.published_weights != "") == (spec.layout != "monai")


def test_input_sizes_that_are_not_multiples_of_32_are_a_clear_error():
    with pytest.raises(ValueError, match=r"multiple of 32 .*sizes \[40\]"):
        build_encoder("resnet10_3d")(torch.zeros(1, 1, 32, 40, 32))


def test_3d_encoder_refuses_2d_and_2d_encoder_refuses_3d():
    with pytest.raises(ValueError, match="resnet18_3d is a 3D encoder"):
        ARCHS["resnet18_3d"].builder(arch="resnet18_3d", spatial_dims=2)
    with pytest.raises(ValueError, match="resnet18 is a 2D encoder"):
        ARCHS["resnet18"].builder(arch="resnet18", spatial_dims=3)
    with pytest.raises(ValueError, match="never downloads"):
        ARCHS["resnet10_3d"].builder(arch="resnet10_3d", pretrained=True)


@pytest.mark.parametrize("arch", ["resnet10_3d", "swinvit_3d"])
def test_flexible_unet_3d_with_a_registered_3d_backbone_trains(arch):
    _needs(arch)
    torch.manual_seed(0)
    net = FlexibleUNet(in_channels=1, out_channels=2, backbone=flexunet_name(arch), pretrained=False,
                       spatial_dims=3, decoder_channels=(32, 16, 8, 8, 4))
    assert net.encoder.arch == arch
    x = torch.randn(2, 1, 32, 32, 32)  # batch 2: BatchNorm in training needs two values of the 1-voxel map
    y = net(x)
    assert y.shape == (2, 2, 32, 32, 32)
    y.square().mean().backward()
    grads = [p.grad for p in net.encoder.parameters()]
    assert all(g is not None for g in grads) and float(grads[0].abs().sum()) > 0


@pytest.mark.parametrize("arch", ARCHS_3D)
def test_freeze_blocks_cover_the_3d_encoder(arch):
    _needs(arch)
    encoder = build_encoder(arch)
    blocks = encoder.blocks()
    assert blocks[0][0] == "stem"
    summary = apply_freeze(encoder, "top:2")
    assert summary.trainable_parameters > 0 and summary.frozen_parameters > 0
    frozen = apply_freeze(encoder, "all")
    assert frozen.trainable_parameters == 0
    assert frozen.frozen_parameters == sum(p.numel() for p in encoder.parameters())


def test_the_library_builds_a_3d_classifier_and_a_3d_unet_from_a_3d_encoder():
    """``create_classifier`` pools the deepest 3D map; ``create_segmenter`` makes a 3D FlexibleUNet whose
    output has the input's grid."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32, 32)
    clf = create_classifier("resnet10_3d", num_classes=3)  # in_channels: the arch's own (1)
    assert clf.encoder.in_channels == 1 and tuple(clf(x).shape) == (2, 3)
    assert tuple(clf.features(x).shape) == (2, ARCHS["resnet10_3d"].feature_channels[-1])
    unet = create_segmenter("resnet10_3d", in_channels=1, out_channels=2, decoder_channels=(32, 16, 8, 8, 4))
    assert tuple(unet(x).shape) == (2, 2, 32, 32, 32)
