"""Weights sources: torchvision / RadImageNet-PyTorch / medxfer imports, strict loading, errors."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from medxfer.models import (CHECKPOINT_ARTIFACT, WeightsError, adapt_stem, build_encoder, create_classifier,
                            create_encoder, import_weights, list_weights, load_strict, save_checkpoint, weights_params)
from medxfer.models.preprocessing import CAFFE, IMAGENET, SCRATCH

from .conftest import log_checkpoint_run
from .torchvision_reference import (densenet121_forward, densenet121_state_dict, resnet_forward,
                                    resnet_state_dict)


def _x(seed=0, size=64, channels=3):
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_checkpoint_reproduces_reference_forward(home, tmp_path, depth):
    state = resnet_state_dict(depth, seed=depth)
    path = tmp_path / f"resnet{depth}-0123abcd.pth"
    torch.save(state, path)
    record = import_weights(path, "imagenet", f"resnet{depth}")
    assert record.format == "torchvision"
    assert record.preprocessing["mode"] == "imagenet"
    assert record.provenance["skipped_head"] == ["fc.weight", "fc.bias"]
    encoder = create_encoder(f"resnet{depth}", "imagenet").eval()
    x = _x()
    with torch.no_grad():
        assert _rel_err(encoder(x)[-1], resnet_forward(state, x, depth)) < 1e-5


@pytest.mark.parametrize("old_keys", [False, True], ids=["new-keys", "old-keys"])
def test_torchvision_densenet_checkpoint_reproduces_reference_forward(home, tmp_path, old_keys):
    state = densenet121_state_dict(seed=3, old_keys=old_keys)
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(state, path)
    import_weights(path, "imagenet", "densenet121")
    encoder = create_encoder("densenet121", "imagenet").eval()
    x = _x(1)
    with torch.no_grad():
        assert _rel_err(encoder(x)[-1], densenet121_forward(state, x)) < 1e-5


@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
def test_radimagenet_pytorch_checkpoint_imports(home, tmp_path, arch):
    """RadImageNet's PyTorch release: ``backbone = nn.Sequential(*torchvision_model.children()[:k])``."""
    if arch == "resnet50":
        tv = resnet_state_dict(50, seed=5)
        index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
        state = {f"backbone.{index[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in tv.items()
                 if not k.startswith("fc.")}
        reference = lambda x: resnet_forward(tv, x, 50)  # noqa: E731
    else:
        tv = densenet121_state_dict(seed=6)
        state = {f"backbone.0.{k[len('features.'):]}": v for k, v in tv.items() if k.startswith("features.")}
        reference = lambda x: densenet121_forward(tv, x)  # noqa: E731
    path = tmp_path / f"RadImageNet-{arch}.pt"
    torch.save(state, path)
    record = import_weights(path, "radimagenet", arch)
    assert record.format == "radimagenet-pt"
    encoder = create_encoder(arch, "radimagenet").eval()
    x = _x(2)
    with torch.no_grad():
        assert _rel_err(encoder(x)[-1], reference(x)) < 1e-5


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
        assert _rel_err(s1[inner], s3[inner]) < 1e-5
        assert _rel_err(gray(x1)[-1], rgb(x3)[-1]) < 0.05  # only the border differs


def test_adapt_stem_is_a_plain_sum_when_channels_share_their_std():
    state = {"conv1.weight": torch.randn(8, 3, 3, 3), "conv1.bias": torch.zeros(8)}
    out, note = adapt_stem(state, "conv1.weight", 1, CAFFE, stem_norm=None)
    assert torch.allclose(out["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    mean = torch.tensor(CAFFE.mean)
    expected = CAFFE.post_scale * (state["conv1.weight"] * (mean.mean() - mean).reshape(1, 3, 1, 1)).sum((1, 2, 3))
    assert torch.allclose(out["conv1.bias"], expected) and "folded into conv1.bias" in note


def test_medxfer_checkpoint_round_trip_and_gray_checkpoint_into_rgb(home, tmp_path):
    source = create_encoder("resnet18", "scratch", in_channels=1)
    path = save_checkpoint(tmp_path / "self.pt", source, SCRATCH.for_channels(1), provenance={"task": "pretext"})
    record = import_weights(path, "selfpre", "resnet18")
    assert record.format == "medxfer" and record.provenance["task"] == "pretext"
    again = create_encoder("resnet18", "selfpre", in_channels=1)
    for k, v in source.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    rgb = create_encoder("resnet18", "selfpre", in_channels=3).eval()
    assert rgb.stem_adaptation.startswith("gray-repeated")
    g = _x(4, channels=1)
    with torch.no_grad():
        assert _rel_err(rgb(g.repeat(1, 3, 1, 1))[-1], source.eval()(g)[-1]) < 1e-5


def test_file_source_converts_on_the_fly(home, tmp_path):
    state = resnet_state_dict(18, seed=8)
    torch.save(state, tmp_path / "r18.pth")
    encoder = create_encoder("resnet18", f"file:{tmp_path / 'r18.pth'}").eval()
    assert encoder.weights_record.name == "file:r18.pth"
    assert str(tmp_path) not in json.dumps(encoder.weights_record.to_dict())  # base name only
    x = _x()
    with torch.no_grad():
        assert _rel_err(encoder(x)[-1], resnet_forward(state, x, 18)) < 1e-5
    assert list_weights() == []  # file: sources are not stored


def test_run_source_loads_the_checkpoint_of_an_mlflow_run(home, tmp_path, mlflow_store):
    trained = create_encoder("resnet18", "scratch")
    ckpt = save_checkpoint(tmp_path / "ckpt" / "medxfer_checkpoint.pt", trained,
                           provenance={"experiment": "medxfer/pretext"})
    assert CHECKPOINT_ARTIFACT.endswith(ckpt.name)
    run_id = log_checkpoint_run(mlflow_store, ckpt, tmp_path)
    encoder = create_encoder("resnet18", f"run:{run_id}")
    assert encoder.weights_record.provenance["run_id"] == run_id
    assert encoder.weights_record.provenance["initial_weights"] == "scratch"  # the chain is recorded
    assert encoder.preprocessing == trained.preprocessing
    assert torch.equal(encoder.layer4[1].conv2.weight, trained.layer4[1].conv2.weight)
    with pytest.raises(WeightsError, match="no such MLflow run"):
        create_encoder("resnet18", "run:0123456789abcdef0123456789abcdef")
    with pytest.raises(WeightsError, match="holds a resnet18 encoder, not resnet34"):
        create_encoder("resnet34", f"run:{run_id}")


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


# ----------------------------------------------------------------------------- error paths

def test_wrong_arch_for_a_file_is_an_error_with_the_right_arch_named(home, tmp_path):
    torch.save(resnet_state_dict(18), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="fits resnet18: use --arch resnet18"):
        import_weights(tmp_path / "r18.pth", "imagenet", "resnet34")
    with pytest.raises(WeightsError, match="torchvision-layout networks; resnet50_keras is a Keras-layout"):
        import_weights(tmp_path / "r18.pth", "imagenet", "resnet50_keras")
    torch.save(densenet121_state_dict(), tmp_path / "d121.pth")
    with pytest.raises(WeightsError, match="does not fit"):
        import_weights(tmp_path / "d121.pth", "imagenet", "resnet50")
    assert list_weights() == []


def test_keras_resnet50_weights_never_load_into_the_torchvision_layout(home, tmp_path):
    """The two ResNet50 layouts share key names; only the conv biases tell them apart."""
    keras_layout = build_encoder("resnet50_keras").state_dict()
    path = tmp_path / "keras_resnet50_as_pt.pt"
    torch.save(keras_layout, path)
    with pytest.raises(WeightsError, match="conv biases: it is a Keras-layout ResNet50, use --arch resnet50_keras"):
        import_weights(path, "x", "resnet50")
    # Why it matters: the same tensors minus the biases load into torchvision's layout and compute
    # something else entirely (stride in the 3x3 instead of the 1x1 conv).
    torchvision_layout = build_encoder("resnet50").eval()
    keras_net = build_encoder("resnet50_keras").eval()
    keras_net.load_state_dict(keras_layout)
    torchvision_layout.load_state_dict({k: v for k, v in keras_layout.items() if k in torchvision_layout.state_dict()})
    with torch.no_grad():
        x = _x()
        assert _rel_err(torchvision_layout(x)[-1], keras_net(x)[-1]) > 0.1


def test_truncated_file_is_an_error(home, tmp_path):
    torch.save(resnet_state_dict(18), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pth: not a readable PyTorch file, or truncated"):
        import_weights(tmp_path / "cut.pth", "imagenet", "resnet18")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.h5"):
        import_weights(tmp_path / "empty.h5", "imagenet", "resnet18")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran during unpickling",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_needs_code_is_refused(home, tmp_path, capsys):
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Payload()}, f)
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "whole_module.pt")
    for bad in (path, tmp_path / "whole_module.pt"):
        with pytest.raises(WeightsError, match="refused — the file is a pickle that needs code to load"):
            import_weights(bad, "imagenet", "resnet18")
    assert "code ran" not in capsys.readouterr().out


def test_sha256_mismatch_is_an_error(home, tmp_path):
    torch.save(resnet_state_dict(18), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="sha256 mismatch: expected 00ff"):
        import_weights(tmp_path / "r18.pth", "imagenet", "resnet18", expected_sha256="00ff" * 16)
    record = import_weights(tmp_path / "r18.pth", "imagenet", "resnet18")
    stored = home / "weights" / record.file
    state = torch.load(stored, weights_only=True)
    state["conv1.weight"] += 1e-3
    torch.save(state, stored)
    with pytest.raises(WeightsError, match=r"sha256 mismatch: .*\(the file changed after import\)"):
        create_encoder("resnet18", "imagenet")


def test_unknown_source_lists_the_known_ones(home, tmp_path):
    torch.save(resnet_state_dict(18), tmp_path / "r18.pth")
    import_weights(tmp_path / "r18.pth", "imagenet", "resnet18")
    with pytest.raises(WeightsError) as err:
        create_encoder("resnet18", "radimagenet")
    message = str(err.value)
    assert "unknown weights source 'radimagenet'" in message
    for known in ("scratch", "file:PATH", "run:RUN_ID", "imagenet (resnet18)"):
        assert known in message
    with pytest.raises(WeightsError, match="exist for resnet18, not for resnet34"):
        create_encoder("resnet34", "imagenet")
    with pytest.raises(ValueError, match="unknown encoder 'resnet51'; known: resnet18"):
        create_encoder("resnet51", "scratch")


def test_reimport_needs_replace(home, tmp_path):
    torch.save(resnet_state_dict(18, seed=1), tmp_path / "a.pth")
    torch.save(resnet_state_dict(18, seed=2), tmp_path / "b.pth")
    first = import_weights(tmp_path / "a.pth", "imagenet", "resnet18")
    with pytest.raises(WeightsError, match="already exist"):
        import_weights(tmp_path / "b.pth", "imagenet", "resnet18")
    second = import_weights(tmp_path / "b.pth", "imagenet", "resnet18", replace=True)
    assert first.source_sha256 != second.source_sha256
    assert [r.source_file for r in list_weights()] == ["b.pth"]
