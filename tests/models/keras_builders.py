"""Keras (torch backend) reference networks and the ``.h5`` layouts users have, for parity tests.

TF-Keras 2 files cannot be produced without TensorFlow, so their two layouts are written with
h5py exactly as TF-Keras 2 writes them (``model_weights/<layer>/<layer>/<var>:0`` from
``model.save``, layer groups at the root from ``save_weights``, ``weight_names`` attributes,
TF-Keras 2 layer names such as ``conv1/conv`` in DenseNet and ``depthwise_kernel``).
Keras 3 files are written by Keras itself.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

KERAS_LAYOUTS = ("tf-keras-model", "tf-keras-weights", "keras3-legacy-h5")
INCEPTION_APPLICATIONS = {"inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2"}


def build(arch: str, size: int | None, name_offsets: tuple[int, int] = (0, 0)):
    """The Keras application matching a medxfer arch, include_top=False, random weights (``size``
    None: any input size).

    The Inception networks name few layers; Keras numbers the others (``conv2d_17``) with a session
    counter. They are built in a cleared session after ``name_offsets`` = (Conv2D, BatchNormalization)
    throwaway layers: (0, 0) gives the names of a fresh session, others the offset names of a file
    saved by a session that had built other models first."""
    import keras

    shape = (size, size, 3)
    if arch in INCEPTION_APPLICATIONS:
        keras.backend.clear_session(free_memory=False)
        for _ in range(name_offsets[0]):
            keras.layers.Conv2D(1, 1)
        for _ in range(name_offsets[1]):
            keras.layers.BatchNormalization()
        application = getattr(keras.applications, INCEPTION_APPLICATIONS[arch])
        return application(weights=None, include_top=False, input_shape=shape)
    if arch == "resnet50_keras":
        return keras.applications.ResNet50(weights=None, include_top=False, input_shape=shape)
    if arch == "densenet121":
        return keras.applications.DenseNet121(weights=None, include_top=False, input_shape=shape)
    if arch.startswith("mobilenet_v1_"):
        alpha = int(arch.rsplit("_", 1)[1]) / 100
        return keras.applications.MobileNet(weights=None, include_top=False, input_shape=shape, alpha=alpha)
    raise ValueError(arch)


def randomize(model, seed: int = 0) -> None:
    """Every weight random, BatchNorm moving statistics included, at a scale that keeps
    activations finite through 50+ layers (He-scaled kernels, gamma around 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for var in layer.weights:
            name = var.path.rsplit("/", 1)[-1]
            shape = tuple(var.shape)
            if name in ("kernel", "depthwise_kernel"):
                fan_in = int(np.prod(shape[:-1])) if "depthwise" not in layer.__class__.__name__.lower() \
                    else int(np.prod(shape[:2]))
                value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            elif name == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif name in ("beta", "bias"):
                value = rng.normal(0, 0.1, shape)
            elif name == "moving_mean":
                value = rng.normal(0, 0.2, shape)
            elif name == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            else:
                raise AssertionError(f"unexpected weight {var.path}")
            var.assign(value.astype("float32"))


def forward(model, image_nchw: np.ndarray) -> np.ndarray:
    """Keras inference on an NCHW batch; returns NCHW."""
    import keras

    out = model(keras.ops.convert_to_tensor(image_nchw.transpose(0, 2, 3, 1)), training=False)
    return keras.ops.convert_to_numpy(out).transpose(0, 3, 1, 2)


def forward_layers(model, layer_names: list[str], image_nchw: np.ndarray) -> list[np.ndarray]:
    """The outputs of ``model``'s layers ``layer_names`` for an NCHW batch (Keras inference), NCHW."""
    import keras

    tapped = keras.Model(model.inputs, [model.get_layer(name).output for name in layer_names])
    outputs = tapped(keras.ops.convert_to_tensor(image_nchw.transpose(0, 2, 3, 1)), training=False)
    return [keras.ops.convert_to_numpy(out).transpose(0, 3, 1, 2) for out in outputs]


def _tf_keras_name(arch: str, layer_name: str) -> str:
    # TF-Keras 2 DenseNet names its stem conv1/conv and conv1/bn (Keras 3 conv1_conv, conv1_bn).
    if arch == "densenet121" and layer_name in ("conv1_conv", "conv1_bn", "conv1_relu"):
        return layer_name.replace("_", "/", 1)
    return layer_name


def _write_tf_keras(model, arch: str, path: Path, whole_model: bool) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(b"2.9.0")
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        if whole_model:
            f.attrs["model_config"] = np.bytes_(b'{"class_name": "Functional"}')
            root = f.create_group("model_weights")
            root.attrs["keras_version"] = np.bytes_(b"2.9.0")
            root.attrs["backend"] = np.bytes_(b"tensorflow")
        else:
            root = f
        names = [_tf_keras_name(arch, layer.name) for layer in model.layers]
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        for layer, name in zip(model.layers, names):
            group = root.create_group(name)
            weight_names = []
            for var in layer.weights:
                var_name = var.path.rsplit("/", 1)[-1]
                if var_name == "kernel" and "Depthwise" in layer.__class__.__name__:
                    var_name = "depthwise_kernel"
                full = f"{name}/{var_name}:0"
                weight_names.append(full.encode())
                group.create_dataset(full, data=np.asarray(var.numpy()))
            group.attrs["weight_names"] = np.array(weight_names, dtype="S")


def save(model, arch: str, layout: str, folder: Path) -> Path:
    """Write ``model``'s weights in one of :data:`KERAS_LAYOUTS`; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "tf-keras-model":
        path = folder / f"{arch}_tfkeras_model.h5"
        _write_tf_keras(model, arch, path, whole_model=True)
    elif layout == "tf-keras-weights":
        path = folder / f"{arch}_tfkeras_weights.h5"
        _write_tf_keras(model, arch, path, whole_model=False)
    elif layout == "keras3-legacy-h5":
        path = folder / f"{arch}_keras3.h5"
        model.save(path)
    elif layout == "keras3-weights-h5":
        path = folder / f"{arch}_keras3.weights.h5"
        model.save_weights(path)
    else:
        raise ValueError(layout)
    return path
