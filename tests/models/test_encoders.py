"""Encoder registry: feature-map contract, FlexibleUNet with every encoder × channels × source."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from medxfer.models import (ARCHS, build_encoder, create_classifier, create_encoder, create_segmenter, flexunet_name,
                            import_weights, save_checkpoint)
from medxfer.models.preprocessing import SCRATCH

from .conftest import log_checkpoint_run

SOURCES = ("scratch", "NAME", "file", "run")
ARCHS_2D = [name for name, spec in ARCHS.items() if spec.spatial_dims == 2]  # 3D: test_encoders3d.py
# the UNet encoders: classification-only archs (AlexNet: no stride-2 map) are tested in test_classic_encoders.py
SEGMENTING_2D = [name for name in ARCHS_2D if not ARCHS[name].classification_only]


@pytest.mark.parametrize("arch", SEGMENTING_2D)
def test_encoder_returns_five_maps_at_strides_2_to_32(arch):
    """The encoder as FlexibleUNet builds it (the Keras-layout Inceptions pad for it: padding="same";
    their classifier keeps Keras's valid paddings and needs inputs of at least 75x75)."""
    backbone = FLEXUNET_BACKBONE.register_dict[flexunet_name(arch)]
    encoder = backbone["type"](**{**backbone["parameter"], "in_channels": 3}).eval()
    with torch.no_grad():
        features = encoder(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[2:]) for f in features] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]
    assert tuple(f.shape[1] for f in features) == encoder.feature_channels
    assert flexunet_name(arch) in FLEXUNET_BACKBONE.register_dict


class _WeightSources(dict):
    """Per arch, made when first asked for (a deselected slow arch costs nothing): a medxfer checkpoint file
    (distinct random weights), the same file imported under a NAME, and logged to an MLflow run — the four
    sources a segmenter can start from."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root, self.home, self.uri = root, root / "home", f"sqlite:///{root / 'mlflow.db'}"

    def __missing__(self, arch: str) -> dict:
        torch.manual_seed(100 + SEGMENTING_2D.index(arch))
        encoder = build_encoder(arch)
        ckpt = save_checkpoint(self.root / arch / "medxfer_checkpoint.pt", encoder, SCRATCH)
        import_weights(ckpt, "selfpre", arch, home=self.home)
        self[arch] = {"state": encoder.state_dict(), "file": ckpt, "run": log_checkpoint_run(self.uri, ckpt, self.root)}
        return self[arch]


@pytest.fixture(scope="module")
def weight_sources(tmp_path_factory) -> _WeightSources:
    return _WeightSources(tmp_path_factory.mktemp("sources"))


# Over ~20 M encoder parameters (the Inceptions) a FlexibleUNet step takes tens of seconds on 2 CPU cores: one
# source runs by default, the whole matrix with -m slow.
_HEAVY = {"inception_v3", "inception_resnet_v2"}
_UNET_CASES = [pytest.param(arch, channels, source, marks=[pytest.mark.slow] if arch in _HEAVY and
                            (source, channels) != ("NAME", 1) else [])
               for arch in SEGMENTING_2D for channels in (1, 3) for source in SOURCES]


@pytest.mark.parametrize("arch, in_channels, source", _UNET_CASES)
def test_flexible_unet_trains_with_every_encoder_channels_and_source(arch, in_channels, source, weight_sources,
                                                                     monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", weight_sources.uri)
    info = weight_sources[arch]
    weights = {"scratch": "scratch", "NAME": "selfpre", "file": f"file:{info['file']}",
               "run": f"run:{info['run']}"}[source]
    net = create_segmenter(arch, weights, in_channels=in_channels, out_channels=3, home=weight_sources.home)
    if source != "scratch":  # the encoder holds the source's weights (stem adapted for 1 channel)
        deep = [k for k in info["state"] if k.endswith("weight") and info["state"][k].ndim == 4][-1]
        assert torch.equal(net.encoder.state_dict()[deep], info["state"][deep])
        assert net.stem_adaptation.startswith("rgb-summed" if in_channels == 1 else "as trained")
    net.train()
    x = torch.randn(2, in_channels, 64, 64)
    y = net(x)
    assert y.shape == (2, 3, 64, 64)
    y.square().mean().backward()
    grads = [p.grad for p in net.encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:3]) and float(grads[0].abs().sum()) > 0


def test_classifier_pools_the_deepest_map():
    clf = create_classifier("densenet121", "scratch", num_classes=4, in_channels=1, dropout=0.2).eval()
    assert clf.head.in_features == ARCHS["densenet121"].feature_channels[-1]
    with torch.no_grad():
        assert clf(torch.randn(3, 1, 64, 64)).shape == (3, 4)
        assert clf.features(torch.randn(3, 1, 64, 64)).shape == (3, 1024)


def test_encoders_never_download():
    with pytest.raises(ValueError, match="never downloads"):
        ARCHS["resnet18"].builder(arch="resnet18", pretrained=True)
    enc = create_encoder("resnet18")
    assert enc.weights_record.name == "scratch" and enc.preprocessing.mode == "scratch"


@pytest.mark.parametrize("arch", ARCHS_2D)
def test_arch_spec_facts_match_the_network(arch):
    """The facts the importer and the stem adaptation read from the spec name real parts of the network."""
    import re

    from medxfer.models.weights.keras_h5 import KERAS_LAYER_MAPS

    spec = ARCHS[arch]
    state = build_encoder(arch).state_dict()
    assert spec.title and spec.family and state[spec.stem_weight].ndim == 4
    stem_bias = spec.stem_weight.rsplit(".", 1)[0] + ".bias"
    assert (f"{spec.stem_norm}.running_mean" in state) if spec.stem_norm else (stem_bias in state)
    assert (stem_bias in state) == spec.conv_bias
    assert not any(re.match(spec.head_pattern, k) for k in state) if spec.head_pattern else True
    modules = {k.split(".")[0] for k in state}
    assert all(module in modules for _, module in spec.radimagenet_children)
    if spec.twin:  # same key names, another network
        twin = ARCHS[spec.twin]
        assert twin.twin == arch and twin.layout != spec.layout and twin.conv_bias != spec.conv_bias
    if spec.keras_application:
        assert spec.keras_application in KERAS_LAYER_MAPS and spec.keras_bn_eps and spec.keras_preprocessing
        weights = {k for k in state if not k.endswith("num_batches_tracked")}
        keras_keys = {k for prefix, _ in KERAS_LAYER_MAPS[spec.keras_application]().values() for k in weights
                      if k.startswith(prefix + ".")}
        assert keras_keys == weights
