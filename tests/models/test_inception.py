"""InceptionV3 and Inception-ResNet-v2 in the Keras layout: parity with Keras (torch backend) in every
``.h5`` layout, auto-named layers matched by creation order whatever their numbering, files that do
not fit refused, the two paddings (classifier: Keras's; UNet: exact strides), freezing by blocks."""
from __future__ import annotations

import os
import re
import shutil

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medxfer.models import (ARCHS, WeightsError, build_encoder, create_classifier, create_encoder,  # noqa: E402
                            create_segmenter, import_weights)
from medxfer.models.weights.keras_h5 import KERAS_LAYER_MAPS  # noqa: E402

keras = pytest.importorskip("keras", reason="keras (torch backend) is a test dependency: pip install -e .[dev]")
if keras.backend.backend() != "torch":  # pragma: no cover - keras imported earlier with another backend
    pytest.skip("keras must run on its torch backend (KERAS_BACKEND=torch)", allow_module_level=True)

from . import keras_builders as kb  # noqa: E402
from .numerics import rel_err  # noqa: E402

INCEPTIONS = ("inception_v3", "inception_resnet_v2")
PARITY = 1e-4  # max |medxfer - keras| relative to the map's scale
# the Keras layers whose outputs are the five maps (the stem's activations are auto-named: a cleared session's names)
KERAS_TAPS = {"inception_v3": ["activation_2", "activation_4", "mixed2", "mixed7", "mixed10"],
              "inception_resnet_v2": ["activation_2", "activation_4", "block35_10_ac", "block17_20_ac", "conv_7b_ac"]}
# files from a session that built 95 unnamed Conv2D and 40 BatchNormalization layers before the network
OFFSETS = (95, 40)
# the smallest input Keras takes, non-square: odd and even sizes through every valid padding
INPUT = (2, 3, 75, 96)


def _file_layer_names(path) -> list[str]:
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        return [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs["layer_names"]]


@pytest.fixture(scope="module", params=INCEPTIONS)
def offset_keras_model(request, tmp_path_factory):
    """A randomised Keras network with offset layer numbering, and its files by layout (saved on demand)."""
    arch = request.param
    model = kb.build(arch, None, name_offsets=OFFSETS)
    kb.randomize(model, seed=len(arch))
    folder = tmp_path_factory.mktemp(arch)
    files: dict[str, object] = {}

    def saved(layout: str):
        if layout not in files:
            files[layout] = kb.save(model, arch, layout, folder)
        return files[layout]

    return arch, model, saved


@pytest.mark.parametrize("layout", [pytest.param(layout, marks=() if layout == "tf-keras-model" else pytest.mark.slow)
                                    for layout in kb.KERAS_LAYOUTS])
def test_offset_named_keras_file_imports_and_all_five_maps_match_keras(home, offset_keras_model, layout):
    arch, model, saved = offset_keras_model
    path = saved(layout)
    names = _file_layer_names(path)
    assert "conv2d_95" in names and "batch_normalization_40" in names and "conv2d" not in names
    record = import_weights(path, "radimagenet", arch)
    assert record.format == "keras-h5" and record.provenance["source_layout"] == layout
    # RadImageNet's own input order (caffe mode, then x 1/255), and the flag for Keras's ImageNet files
    assert record.preprocessing["mode"] == "caffe" and record.preprocessing["post_scale"] == pytest.approx(1 / 255)
    assert f"for Keras's own ImageNet {ARCHS[arch].keras_application} file" in record.provenance["preprocessing_reason"]
    assert "--preprocessing tf" in record.provenance["preprocessing_reason"]
    assert record.arch_options["bn_eps"] == pytest.approx(1e-3)
    encoder = create_encoder(arch, "radimagenet").eval()
    assert encoder.padding == "keras"
    x = np.random.default_rng(0).uniform(-1, 1, INPUT).astype("float32")
    reference = kb.forward_layers(model, KERAS_TAPS[arch], x)
    with torch.no_grad():
        ours = encoder(torch.from_numpy(x))
    assert [tuple(m.shape) for m in ours] == [r.shape for r in reference]
    assert max(rel_err(m, torch.from_numpy(r)) for m, r in zip(ours, reference)) <= PARITY


def test_the_same_weights_load_into_the_unet_and_the_other_inception_is_refused(home, offset_keras_model):
    arch, _, saved = offset_keras_model
    path = saved("tf-keras-model")
    import_weights(path, "radimagenet", arch)
    classifier_encoder = create_encoder(arch, "radimagenet")
    net = create_segmenter(arch, "radimagenet", in_channels=3, out_channels=2).eval()
    assert net.encoder.padding == "same" and net.preprocessing.mode == "caffe"
    own = classifier_encoder.state_dict()
    assert all(torch.equal(value, own[key]) for key, value in net.encoder.state_dict().items())
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    other = next(a for a in INCEPTIONS if a != arch)
    with pytest.raises(WeightsError, match=re.escape(f"{path}: not a Keras {other}; the file looks like {arch}")):
        import_weights(path, "wrong", other)


@pytest.mark.parametrize("arch", INCEPTIONS)
def test_layer_map_is_keyed_by_a_fresh_sessions_layer_names(arch):
    """What freeze top_layers:K relies on: the map's names are Keras's own in a fresh session, and each
    names the module of the PyTorch network holding weights of that layer's shape; the network's
    parameters are Keras's trainable weights (BatchNormalization(scale=False): no gamma to train)."""
    model = kb.build(arch, 75)
    weighted = {layer.name: layer for layer in model.layers if layer.weights}
    layer_map = KERAS_LAYER_MAPS[ARCHS[arch].keras_application]()
    assert set(layer_map) == set(weighted)
    encoder = build_encoder(arch)
    assert sum(p.numel() for p in encoder.parameters()) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    state = encoder.state_dict()
    for name, (prefix, kind) in layer_map.items():
        shapes = {w.path.rsplit("/", 1)[-1]: tuple(w.shape) for w in weighted[name].weights}
        if kind == "conv":
            kh, kw, cin, cout = shapes["kernel"]
            assert tuple(state[f"{prefix}.weight"].shape) == (cout, cin, kh, kw), name
            assert (f"{prefix}.bias" in state) == ("bias" in shapes), name
        else:
            assert tuple(state[f"{prefix}.running_mean"].shape) == shapes["moving_mean"], name


@pytest.fixture(scope="module")
def keras22_v3_file(tmp_path_factory):
    """InceptionV3 weights numbered as Keras <= 2.2 numbered them (conv2d_1 … conv2d_94), root layout."""
    model = kb.build("inception_v3", None, name_offsets=(1, 1))
    return kb.save(model, "inception_v3", "tf-keras-weights", tmp_path_factory.mktemp("keras22"))


def _edited(source, tmp_path, edit):
    path = tmp_path / "edited_inception_v3.h5"
    shutil.copy(source, path)
    with h5py.File(path, "a") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        names = edit(f, names)
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
    return path


def _add_layer(f, name: str, weights: dict[str, tuple[int, ...]]) -> None:
    group = f.create_group(name)
    for var, shape in weights.items():
        group.create_dataset(f"{name}/{var}:0", data=np.zeros(shape, "float32"))
    group.attrs["weight_names"] = np.array([f"{name}/{var}:0".encode() for var in weights])


def _drop(f, names: list[str], name: str) -> list[str]:
    del f[name]
    return [n for n in names if n != name]


def _add(name: str, weights: dict[str, tuple[int, ...]]):
    def edit(f, names):
        _add_layer(f, name, weights)
        return names + [name]
    return edit


def _reshape_kernel(f, names):
    del f["conv2d_10"]["conv2d_10/kernel:0"]
    f["conv2d_10"].create_dataset("conv2d_10/kernel:0", data=np.zeros((1, 1, 64, 65), "float32"))
    return names


MISMATCHES = {
    "missing-conv": (lambda f, names: _drop(f, names, "conv2d_50"),
                     r"93 conv2d layers where InceptionV3 has 94.*layers missing from the file \(1\): conv2d_93.*"
                     r"its conv2d_1 is conv2d here"),
    "extra-named-conv": (_add("block99_conv", {"kernel": (1, 1, 2048, 8), "bias": (8,)}),
                         r"layers the encoder does not have \(1\): block99_conv"),
    "extra-auto-named-conv": (_add("conv2d_500", {"kernel": (1, 1, 2048, 8)}),
                              r"95 conv2d layers where InceptionV3 has 94.*does not have \(1\): conv2d_500"),
    "wrong-shape": (_reshape_kernel, r"does not fit KerasInceptionV3 inception_v3: shape mismatches"),
}


@pytest.mark.parametrize("mismatch", list(MISMATCHES))
def test_a_file_that_is_not_exactly_inception_v3_is_refused_naming_file_and_reason(home, tmp_path, keras22_v3_file,
                                                                                   mismatch):
    edit, reason = MISMATCHES[mismatch]
    path = _edited(keras22_v3_file, tmp_path, edit)
    with pytest.raises(WeightsError, match=reason) as info:
        import_weights(path, "k", "inception_v3")
    assert str(info.value).startswith(str(path))


def test_keras_22_numbering_imports_and_a_classifier_head_is_skipped(home, tmp_path, keras22_v3_file):
    path = _edited(keras22_v3_file, tmp_path, _add("predictions", {"kernel": (2048, 3), "bias": (3,)}))
    assert "conv2d_1" in _file_layer_names(path) and "conv2d" not in _file_layer_names(path)
    record = import_weights(path, "k", "inception_v3")
    assert record.provenance["skipped_head"] == ["predictions"]


# ----------------------------------------------------------------------------- the two paddings, freezing

@pytest.mark.parametrize("arch", INCEPTIONS)
def test_unet_encoder_gives_exact_strides_and_the_output_keeps_the_input_size(arch):
    net = create_segmenter(arch, "scratch", in_channels=1, out_channels=3).eval()
    assert net.encoder.padding == "same"
    with torch.no_grad():
        for size in ((64, 64), (96, 96)):
            assert net(torch.randn(1, 1, *size)).shape == (1, 3, *size)
        maps = net.encoder(torch.zeros(1, 1, 64, 96))
    assert [tuple(m.shape[2:]) for m in maps] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]
    assert tuple(m.shape[1] for m in maps) == ARCHS[arch].feature_channels


@pytest.mark.parametrize("arch", INCEPTIONS)
def test_classifier_keeps_keras_padding_and_refuses_inputs_keras_refuses(arch):
    clf = create_classifier(arch, num_classes=3, in_channels=1).eval()
    assert clf.encoder.padding == "keras"
    with torch.no_grad():
        assert clf(torch.randn(2, 1, 75, 75)).shape == (2, 3)
        with pytest.raises(ValueError, match=r"at least 75x75.*got \(64, 64\)"):
            clf(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="padding must be one of"):
        ARCHS[arch].builder(arch=arch, padding="valid")


@pytest.mark.parametrize("arch, last_three", [("inception_v3", ("Mixed_7a", "Mixed_7b", "Mixed_7c")),
                                              ("inception_resnet_v2", ("repeat_2.8", "block8", "conv2d_7b"))])
def test_freeze_top_k_trains_the_last_k_blocks_only(arch, last_three):
    clf = create_classifier(arch, num_classes=2, freeze="top:3")
    summary = clf.freeze_summary
    assert summary.trainable_blocks == last_three and summary.frozen_blocks[0] == "stem"
    encoder = clf.encoder
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and trainable == {name for name, _ in encoder.named_parameters()
                                       if any(name.startswith(block + ".") for block in last_three)}
    clf.train()
    stem_bn = encoder.blocks()[0][1][0].bn
    assert not stem_bn.training and all(m.training for m in getattr(encoder, last_three[-1]).modules())
    # every parameter is in a block: freezing all leaves nothing to train in the encoder
    frozen_all = create_classifier(arch, num_classes=2, freeze="all")
    assert not any(p.requires_grad for p in frozen_all.encoder.parameters())
