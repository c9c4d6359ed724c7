"""AlexNet and VGG16 (torchvision layout): key compatibility with torchvision's files, import, stem
adaptation, freeze blocks, segmentation (VGG16) or its refusal (AlexNet), one classification run.

The torchvision state dicts here are written from torchvision's definitions (``models/alexnet.py``,
``models/vgg.py`` with ``cfgs["D"]``), not from medxfer's modules, and the reference forward uses
``torch.nn.functional`` on those tensors.
"""
from __future__ import annotations

import hashlib

import mlflow
import pytest
import torch
import torch.nn.functional as F

from medxfer.engine import BundleError, train_bundle
from medxfer.models import (ARCHS, WeightsError, apply_freeze, build_encoder, create_classifier, create_encoder,
                            create_segmenter, import_weights, weights_params)
from medxfer.models.preprocessing import IMAGENET
from medxfer.study.checks import encoder_problem
from medxfer.study.spec import SpecError, parse_spec
from tests.study.conftest import write_manifest

from .numerics import rel_err

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# torchvision AlexNet: features index -> (out, in, kernel, stride, padding); max-pools (3, 2) at 2, 5, 12
ALEXNET_CONVS = {0: (64, 3, 11, 4, 2), 3: (192, 64, 5, 1, 2), 6: (384, 192, 3, 1, 1), 8: (256, 384, 3, 1, 1),
                 10: (256, 256, 3, 1, 1)}
ALEXNET_POOLS_AFTER = (0, 3, 10)  # the conv (with its ReLU) each (3, 2) max-pool follows
ALEXNET_HEAD = {1: (4096, 256 * 6 * 6), 4: (4096, 4096), 6: (1000, 4096)}  # Dropout at 0, 3
# torchvision VGG16 (cfg D): 3×3 convs, padding 1; (2, 2) max-pools at 4, 9, 16, 23, 30
VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
               14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}
VGG16_POOLS_AFTER = (2, 7, 14, 21, 28)
VGG16_HEAD = {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}  # Dropout at 2, 5

SEGMENTATION_REFUSAL = ("alexnet is classification-only: its first convolution has stride 4, so it has no stride-2 "
                        "feature map for a UNet decoder; use vgg16 or resnet18")


def torchvision_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under torchvision's ``alexnet`` / ``vgg16`` key names and shapes, head included.

    The head's weight matrices are broadcast views of one value (stride 0): exact shapes (VGG16's
    first is 4096 × 25088) for a few bytes on disk; the importer drops them unread."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    convs = ALEXNET_CONVS if arch == "alexnet" else {i: (o, c, 3, 1, 1) for i, (o, c) in VGG16_CONVS.items()}
    for index, (out, cin, k, _, _) in convs.items():
        state[f"features.{index}.weight"] = torch.randn(out, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(out, generator=g) * 0.1
    for index, (out, cin) in (ALEXNET_HEAD if arch == "alexnet" else VGG16_HEAD).items():
        state[f"classifier.{index}.weight"] = torch.randn(1, 1, generator=g).expand(out, cin)
        state[f"classifier.{index}.bias"] = torch.zeros(out)
    return state


def reference_features(state: dict[str, torch.Tensor], x: torch.Tensor, arch: str) -> torch.Tensor:
    """torchvision's ``model.features(x)``: convolutions with bias, ReLU, max-pools."""
    if arch == "alexnet":
        convs, pools, pool = ALEXNET_CONVS, ALEXNET_POOLS_AFTER, (3, 2)
    else:
        convs, pools, pool = {i: (o, c, 3, 1, 1) for i, (o, c) in VGG16_CONVS.items()}, VGG16_POOLS_AFTER, (2, 2)
    for index, (_, _, _, stride, padding) in convs.items():
        x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"],
                            stride=stride, padding=padding))
        if index in pools:
            x = F.max_pool2d(x, *pool)
    return x


def _head_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.startswith("classifier.")]


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_encoder_keys_and_shapes_are_torchvision_features(arch):
    reference = torchvision_state_dict(arch)
    own = build_encoder(arch).state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == {
        k: tuple(v.shape) for k, v in reference.items() if not k.startswith("classifier.")}


@pytest.mark.parametrize("arch, size", [("alexnet", 96), ("vgg16", 64)])
def test_imported_torchvision_file_gives_torchvision_features(home, tmp_path, monkeypatch, arch, size):
    state = torchvision_state_dict(arch, seed=3)
    path = tmp_path / f"{arch}-torchvision.pth"
    torch.save(state, path)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw.get("weights_only")) or real_load(*a, **kw))
    record = import_weights(path, "imagenet", arch)
    assert loads and all(flag is True for flag in loads)
    assert record.format == "torchvision" and record.preprocessing_record == IMAGENET
    assert record.provenance["skipped_head"] == _head_keys(state)
    assert record.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    clf = create_classifier(arch, "imagenet", num_classes=2, in_channels=3).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference_features(state, x, arch).mean(dim=(2, 3))
        assert float((clf.features(x) - expected).abs().max()) < 1e-4 * float(expected.abs().max())
        logits = expected @ clf.head.weight.T + clf.head.bias
        assert float((clf(x) - logits).abs().max()) < 1e-4 * float(logits.abs().max())


@pytest.mark.parametrize("file_arch, arch", [("vgg16", "alexnet"), ("alexnet", "vgg16")])
def test_a_file_of_the_other_classic_network_is_refused_naming_it(home, tmp_path, file_arch, arch):
    path = tmp_path / f"{file_arch}.pth"
    torch.save(torchvision_state_dict(file_arch), path)
    with pytest.raises(WeightsError, match=rf"does not fit .* {arch}: .*shape mismatches.* — the file fits "
                                           rf"{file_arch}: use --arch {file_arch}$"):
        import_weights(path, "imagenet", arch)


def test_one_channel_alexnet_stem_matches_the_rgb_network_on_gray(home, tmp_path):
    torch.save(torchvision_state_dict("alexnet", seed=5), tmp_path / "alexnet.pth")
    import_weights(tmp_path / "alexnet.pth", "imagenet", "alexnet")
    rgb = create_encoder("alexnet", "imagenet", in_channels=3).eval()
    gray = create_encoder("alexnet", "imagenet", in_channels=1).eval()
    assert gray.stem_adaptation.endswith("folded into features.0.bias")  # no BatchNorm: the conv bias takes it
    assert weights_params(gray)["weights.stem"] == "rgb-summed"
    g = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(3))
    x1, x3 = gray.preprocessing.apply(g, 1, channel_dim=1), rgb.preprocessing.apply(g, 3, channel_dim=1)
    with torch.no_grad():
        s1, s3 = gray.features[0](x1), rgb.features[0](x3)
        inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # away from the zero padding (2 px, stride 4)
        assert rel_err(s1[inner], s3[inner]) < 1e-5


def test_freeze_blocks_are_the_convolutions_stem_first():
    alexnet = build_encoder("alexnet")
    assert [name for name, _ in alexnet.blocks()] == ["stem", "features.3", "features.6", "features.8", "features.10"]
    summary = apply_freeze(alexnet, "top:2")
    assert summary.trainable_blocks == ("features.8", "features.10")
    assert summary.trainable_parameters == (256 * 384 * 9 + 256) + (256 * 256 * 9 + 256)
    vgg = build_encoder("vgg16")
    assert [name for name, _ in vgg.blocks()] == ["stem"] + [f"features.{i}" for i in list(VGG16_CONVS)[1:]]


def test_vgg16_gives_five_maps_at_strides_2_to_32_and_segments():
    encoder = build_encoder("vgg16").eval()
    with torch.no_grad():
        features = encoder(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 64 // s, 96 // s) for c, s in zip((64, 128, 256, 512, 512), (2, 4, 8, 16, 32))]
    net = create_segmenter("vgg16", in_channels=1, out_channels=2).train()
    y = net(torch.randn(2, 1, 64, 64))
    assert y.shape == (2, 2, 64, 64)
    y.square().mean().backward()
    assert float(net.encoder.features[0].weight.grad.abs().sum()) > 0


def test_alexnet_input_below_63_pixels_is_a_clear_error():
    encoder = build_encoder("alexnet")
    with torch.no_grad():
        assert encoder(torch.zeros(1, 3, 63, 63))[-1].shape == (1, 256, 1, 1)
        with pytest.raises(ValueError, match=r"alexnet input of spatial size \(62, 80\): each side at least 63"):
            encoder(torch.zeros(1, 3, 62, 80))


def test_alexnet_segmentation_is_refused_by_the_spec_and_the_bundle_before_training(tmp_path):
    assert ARCHS["alexnet"].classification_only and not ARCHS["vgg16"].classification_only
    assert encoder_problem("alexnet", "classification") is None
    assert encoder_problem("alexnet", "segmentation") == SEGMENTATION_REFUSAL
    assert "alexnet" not in encoder_problem("resnet81", "segmentation")  # not offered as a segmentation encoder

    manifest = write_manifest(tmp_path, {"mask": lambda i: f"masks/i{i}.nii"})
    spec = {"name": "seg", "bundle": "segmentation", "data": {"manifest": str(manifest), "label": "mask"},
            "grid": {"encoder": ["vgg16", "alexnet"], "weights": ["scratch"]}, "train": {"epochs": 1}}
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert str(caught.value) == f"grid.encoder[1]: {SEGMENTATION_REFUSAL}"
    # the bundle refuses it before it reads anything (the manifest does not even exist)
    with pytest.raises(BundleError) as refused:
        train_bundle("segmentation", manifest=str(tmp_path / "absent.csv"), encoder="alexnet")
    assert str(refused.value) == SEGMENTATION_REFUSAL
    # and the library call says the same instead of MONAI's "invalid model_name"
    with pytest.raises(ValueError, match="^alexnet is classification-only: its first convolution has stride 4"):
        create_segmenter("alexnet")


def test_classification_bundle_trains_imported_alexnet_on_gray_images(dental_cohort, mlflow_store, home, tmp_path):
    torch.save(torchvision_state_dict("alexnet", seed=2), tmp_path / "alexnet-owt.pth")
    import_weights(tmp_path / "alexnet-owt.pth", "imagenet", "alexnet")
    result = train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary",
                          encoder="alexnet", weights="imagenet", epochs=1, image_size=64, batch_size=4,
                          modalities=["PX"])
    assert result.run_name.startswith("classification/alexnet/imagenet/")
    assert 0.0 <= result.metrics["test_auc"] <= 1.0
    params = mlflow.MlflowClient(mlflow_store).get_run(result.run_id).data.params
    assert params["encoder"] == "alexnet" and params["weights.stem"] == "rgb-summed"
    assert params["preprocessing.mode"] == "imagenet"
