"""Strict loading and stem adaptation."""
from __future__ import annotations

import pytest
import torch

from medxfer.models import (WeightsError, adapt_stem, create_classifier, create_encoder, import_weights, load_strict,
                            weights_params)
from medxfer.models.preprocessing import CAFFE, IMAGENET

from .numerics import rel_err
from .torchvision_reference import densenet121_state_dict, resnet_state_dict


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_one_channel_stem_from_rgb_weights_matches_the_rgb_network_on_gray(home, tmp_path, arch):
    state = resnet_state_dict(18, seed=7) if arch == "resnet18" else densenet121_state_dict(seed=7)
    torch.save(state, tmp_path / "w.pth")
    import_weights(tmp_path / "w.pth", "imagenet", arch)
    rgb = create_encoder(arch, "imagenet", in_channels=3).eval()
    gray = create_encoder(arch, "imagenet", in_channels=1).eval()
    assert gray.stem_adaptation.startswith("rgb-summed")
    params = weights_params(gray)
    assert params["weights.stem"] == "rgb-summed" and params["weights.in_channels"] == "1"
    assert params["preprocessing.channel_order"] == "GRAY"
    assert float(params["preprocessing.mean"].strip("[]()").rstrip(",")) == pytest.approx(sum(IMAGENET.mean) / 3)
    g = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(3))
    x1, x3 = gray.preprocessing.apply(g, 1, channel_dim=1), rgb.preprocessing.apply(g, 3, channel_dim=1)
    assert x3.shape[1] == 3 and x1.shape[1] == 1
    stem = {"resnet18": lambda e, x: e.bn1(e.conv1(x)),
            "densenet121": lambda e, x: e.features.norm0(e.features.conv0(x))}[arch]
    with torch.no_grad():
        s1, s3 = stem(gray, x1), stem(rgb, x3)
        inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # away from the zero padding
        assert rel_err(s1[inner], s3[inner]) < 1e-5
        assert rel_err(gray(x1)[-1], rgb(x3)[-1]) < 0.05  # only the border differs


def test_adapt_stem_is_a_plain_sum_when_channels_share_their_std():
    state = {"conv1.weight": torch.randn(8, 3, 3, 3), "conv1.bias": torch.zeros(8)}
    out, note = adapt_stem(state, "conv1.weight", 1, CAFFE, stem_norm=None)
    assert torch.allclose(out["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    mean = torch.tensor(CAFFE.mean)
    expected = CAFFE.post_scale * (state["conv1.weight"] * (mean.mean() - mean).reshape(1, 3, 1, 1)).sum((1, 2, 3))
    assert torch.allclose(out["conv1.bias"], expected) and "folded into conv1.bias" in note


def test_strict_loading_lists_keys_and_skips_only_named_head():
    clf = create_classifier("resnet18", "scratch", num_classes=3)
    other = create_classifier("resnet18", "scratch", num_classes=5)
    with pytest.raises(WeightsError) as err:
        load_strict(clf, other.state_dict())
    assert "head.weight (5, 512) vs (3, 512)" in str(err.value)
    kept = load_strict(clf, other.state_dict(), skip=["head"])
    assert kept == ["head.weight", "head.bias"]
    assert torch.equal(clf.encoder.conv1.weight, other.encoder.conv1.weight)
    partial = {k: v for k, v in other.state_dict().items() if not k.startswith("encoder.layer4")}
    with pytest.raises(WeightsError, match=r"missing keys \(\d+\): encoder\.layer4\.0\.conv1\.weight"):
        load_strict(clf, partial, skip=["head"])
    extra = dict(other.state_dict(), **{"encoder.fc.weight": torch.zeros(2, 2)})
    with pytest.raises(WeightsError, match="unexpected keys .*encoder.fc.weight"):
        load_strict(clf, extra, skip=["head"])

