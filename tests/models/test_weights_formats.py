"""Weights file formats: torchvision / RadImageNet-PyTorch / medxfer imports, and the files refused."""
from __future__ import annotations

import pickle

import pytest
import torch

from medxfer.models import WeightsError, build_encoder, create_encoder, import_weights, list_weights, save_checkpoint
from medxfer.models.preprocessing import SCRATCH

from .numerics import random_images, rel_err
from .torchvision_reference import (densenet121_forward, densenet121_state_dict, resnet_forward,
                                    resnet_state_dict)


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
    x = random_images()
    with torch.no_grad():
        assert rel_err(encoder(x)[-1], resnet_forward(state, x, depth)) < 1e-5


@pytest.mark.parametrize("old_keys", [False, True], ids=["new-keys", "old-keys"])
def test_torchvision_densenet_checkpoint_reproduces_reference_forward(home, tmp_path, old_keys):
    state = densenet121_state_dict(seed=3, old_keys=old_keys)
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(state, path)
    import_weights(path, "imagenet", "densenet121")
    encoder = create_encoder("densenet121", "imagenet").eval()
    x = random_images(1)
    with torch.no_grad():
        assert rel_err(encoder(x)[-1], densenet121_forward(state, x)) < 1e-5


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
    x = random_images(2)
    with torch.no_grad():
        assert rel_err(encoder(x)[-1], reference(x)) < 1e-5


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
    g = random_images(4, channels=1)
    with torch.no_grad():
        assert rel_err(rgb(g.repeat(1, 3, 1, 1))[-1], source.eval()(g)[-1]) < 1e-5


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
        x = random_images()
        assert rel_err(torchvision_layout(x)[-1], keras_net(x)[-1]) > 0.1


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



def test_file_named_h5_without_an_hdf5_signature_is_a_damaged_hdf5_file(home, tmp_path):
    """Sniffing: a .h5 whose signature bytes were overwritten is reported as HDF5, not as 'not PyTorch'."""
    (tmp_path / "weights.h5").write_bytes(b"XXXX\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(WeightsError) as info:
        import_weights(tmp_path / "weights.h5", "imagenet", "resnet18")
    assert str(tmp_path / "weights.h5") in str(info.value) and "not a readable HDF5 file" in str(info.value)
    assert "PyTorch" not in str(info.value)
    # a PyTorch file that happens to be named .h5 still imports
    torch.save(resnet_state_dict(18), tmp_path / "resnet18.h5")
    assert import_weights(tmp_path / "resnet18.h5", "imagenet", "resnet18").format == "torchvision"
