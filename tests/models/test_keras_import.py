"""Keras ``.h5`` import: numerical parity with Keras itself (torch backend) in every layout users
have, and the real ImageNet MobileNet file from ``../shared/data``."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medxfer.models import WeightsError, build_encoder, create_encoder, import_weights  # noqa: E402

keras = pytest.importorskip("keras", reason="keras (torch backend) is a test dependency: pip install -e .[dev]")
if keras.backend.backend() != "torch":  # pragma: no cover - keras imported earlier with another backend
    pytest.skip("keras must run on its torch backend (KERAS_BACKEND=torch)", allow_module_level=True)

from . import keras_builders as kb  # noqa: E402

PARITY = 1e-4  # max |medxfer - keras| relative to the output scale


def _parity(encoder, model, x: np.ndarray) -> float:
    reference = kb.forward(model, x)
    with torch.no_grad():
        ours = encoder.eval()(torch.from_numpy(x))[-1].numpy()
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module", params=["resnet50_keras", "densenet121", "mobilenet_v1_025"])
def keras_model(request, tmp_path_factory):
    """A randomised Keras network saved in every supported .h5 layout."""
    arch = request.param
    model = kb.build(arch, 64)
    kb.randomize(model, seed=len(arch))
    folder = tmp_path_factory.mktemp(f"keras_{arch}")
    files = {layout: kb.save(model, arch, layout, folder) for layout in kb.KERAS_LAYOUTS}
    return arch, model, files


@pytest.mark.parametrize("layout", kb.KERAS_LAYOUTS)
def test_keras_h5_import_matches_keras_forward(home, keras_model, layout):
    arch, model, files = keras_model
    record = import_weights(files[layout], "radimagenet", arch)
    assert record.format == "keras-h5"
    assert record.provenance["source_layout"] == layout
    if arch != "mobilenet_v1_025":
        assert record.arch_options["bn_eps"] == pytest.approx(1.001e-5)
        assert record.preprocessing["mode"] == "caffe"
    encoder = create_encoder(arch, "radimagenet")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype("float32")
    assert _parity(encoder, model, x) <= PARITY


@pytest.mark.parametrize("keras_model", ["resnet50_keras"], indirect=True)
def test_keras_resnet50_refuses_torchvision_layout(home, keras_model):
    _, _, files = keras_model
    with pytest.raises(WeightsError, match="never into the torchvision layout"):
        import_weights(files["tf-keras-model"], "radimagenet", "resnet50")
    with pytest.raises(WeightsError, match="the file looks like resnet50_keras"):
        import_weights(files["tf-keras-model"], "radimagenet", "densenet121")


def test_mobilenet_odd_input_size_matches_keras_same_padding(home, tmp_path):
    """TF "same" padding with stride 2 pads bottom/right on even sizes, both sides on odd ones."""
    model = kb.build("mobilenet_v1_050", 67)
    kb.randomize(model, seed=2)
    import_weights(kb.save(model, "mobilenet_v1_050", "keras3-legacy-h5", tmp_path), "k", "mobilenet_v1_050")
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 67, 67)).astype("float32")
    assert _parity(create_encoder("mobilenet_v1_050", "k"), model, x) <= PARITY


def test_keras3_native_weights_file_is_refused_with_a_way_out(home, tmp_path):
    model = kb.build("mobilenet_v1_025", 32)
    model.save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(WeightsError, match=r"Keras 3 native .weights.h5 .*model.save\('model.h5'\)"):
        import_weights(tmp_path / "m.weights.h5", "k", "mobilenet_v1_025")


def test_damaged_keras_file_is_an_error(home, tmp_path):
    model = kb.build("mobilenet_v1_025", 32)
    path = kb.save(model, "mobilenet_v1_025", "tf-keras-weights", tmp_path)
    with h5py.File(path, "a") as f:
        del f["conv_pw_7_bn"]["conv_pw_7_bn/moving_variance:0"]
    with pytest.raises(WeightsError, match="damaged Keras file"):
        import_weights(path, "k", "mobilenet_v1_025")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="m|mobilenet"):
        import_weights(path, "k", "mobilenet_v1_025")


# corruptions of a Keras file's bytes, each: name, how to overwrite, what the one line says
def _overwrite(data: bytearray, marker: bytes, offset: int, new: bytes) -> None:
    at = data.index(marker) + offset
    data[at:at + len(new)] = new


CORRUPTIONS = {
    # superblock: its signature (the file no longer reads as HDF5) and its addresses
    "superblock-signature": (lambda d: _overwrite(d, b"\x89HDF", 0, b"XXXX"), "not a readable HDF5 file"),
    "superblock-addresses": (lambda d: d.__setitem__(slice(16, 48), b"\xff" * 32), "not a readable HDF5 file"),
    # the root group's B-tree: h5py raises RuntimeError at the first link lookup (was a 46-line traceback)
    "b-tree": (lambda d: _overwrite(d, b"TREE", 0, b"\xaa" * 64), "damaged Keras file"),
    # an attribute's value: keras_version no longer UTF-8 (was a bare 'utf-8' codec error, no file name)
    "attribute-value": (lambda d: _overwrite(d, b"2.9.0", 0, b"\xff\xfe\xfd\xfc\xfb"), "damaged Keras file"),
    # an attribute message's header (layer_names)
    "attribute-header": (lambda d: _overwrite(d, b"layer_names", -8, b"\x77" * 88), "damaged Keras file"),
}


@pytest.fixture(scope="module")
def intact_keras_file(tmp_path_factory):
    model = kb.build("mobilenet_v1_025", 32)
    return kb.save(model, "mobilenet_v1_025", "tf-keras-model", tmp_path_factory.mktemp("intact"))


def _corrupted(intact, tmp_path, name) -> Path:
    data = bytearray(intact.read_bytes())
    CORRUPTIONS[name][0](data)
    path = tmp_path / f"{name}_mobilenet.h5"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_keras_file_is_one_error_naming_the_file(home, tmp_path, intact_keras_file, corruption):
    path = _corrupted(intact_keras_file, tmp_path, corruption)
    with pytest.raises(WeightsError) as info:
        import_weights(path, "k", "mobilenet_v1_025")
    message = str(info.value)
    assert str(path) in message and CORRUPTIONS[corruption][1] in message and "\n" not in message


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_keras_file_through_the_cli_is_one_line_exit_2(home, tmp_path, intact_keras_file, corruption):
    from click.testing import CliRunner

    from medxfer.cli import main

    path = _corrupted(intact_keras_file, tmp_path, corruption)
    result = CliRunner().invoke(main, ["weights", "import", str(path), "--name", "k", "--arch", "mobilenet_v1_025"])
    assert result.exit_code == 2, (result.exception, result.output)
    assert isinstance(result.exception, SystemExit)  # not an uncaught RuntimeError / UnicodeDecodeError
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medxfer: error: ")
    assert str(path) in lines[0] and CORRUPTIONS[corruption][1] in lines[0]
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- the real file

@pytest.fixture(scope="module")
def real_mobilenet(shared_data):
    path = shared_data / "weights_keras_mobilenet025" / "mobilenet_2_5_224_tf_no_top.h5"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.mark.shared_data
def test_real_imagenet_mobilenet_imports_and_matches_keras(home, real_mobilenet):
    from medxfer.core.hashing import sha256_file

    record = import_weights(real_mobilenet, "imagenet", "mobilenet_v1_025")
    assert record.source_sha256 == sha256_file(real_mobilenet)
    assert record.provenance["keras_version"] == "2.0.4"
    assert record.preprocessing["mode"] == "tf"  # Keras MobileNet: inputs scaled to [-1, 1]
    encoder = create_encoder("mobilenet_v1_025", "imagenet").eval()
    x01 = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    net_input = encoder.preprocessing.apply(x01, 3, channel_dim=1)
    assert float(net_input.min()) >= -1 and float(net_input.max()) <= 1 and float(net_input.min()) < -0.9

    model = kb.build("mobilenet_v1_025", 224)
    model.load_weights(real_mobilenet)  # Keras reading the same file is the reference
    assert _parity(encoder, model, net_input.numpy()) <= PARITY

    random_init = build_encoder("mobilenet_v1_025").eval()
    with torch.no_grad():
        ours, rand = encoder(net_input)[-1], random_init(net_input)[-1]
    assert float((ours - rand).abs().mean()) > 0.1 * float(ours.abs().mean())
