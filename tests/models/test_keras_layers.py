"""The Keras layer lists written without Keras equal Keras's own ``model.layers``, and every layer
with weights is one PyTorch module of the encoder holding the same number of parameters."""
from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from medxfer.models import ARCHS, build_encoder  # noqa: E402
from medxfer.models.keras_layers import (keras_applications, keras_layer_modules, keras_layer_names,  # noqa: E402
                                         keras_layers)

keras = pytest.importorskip("keras", reason="keras (torch backend) is a test dependency: pip install -e .[dev]")
if keras.backend.backend() != "torch":  # pragma: no cover - keras imported earlier with another backend
    pytest.skip("keras must run on its torch backend (KERAS_BACKEND=torch)", allow_module_level=True)

from . import keras_builders  # noqa: E402

# the Keras-layout encoders with a layer list, one per keras.applications network (the inception archs
# once they are registered); mobilenet_v1_025 also checks that the width leaves the layers alone
KERAS_ARCHS = [a for a in ("resnet50_keras", "densenet121", "mobilenet_v1_100", "mobilenet_v1_025", "inception_v3",
                           "inception_resnet_v2") if a in ARCHS]
SIZE = 75  # the smallest input every one of them takes (InceptionV3 / InceptionResNetV2)


@functools.lru_cache(maxsize=None)
def study_base_model(arch: str):
    """The base model as RadImageNet built it: ``include_top=False, pooling='avg'``, in a fresh naming scope."""
    keras.backend.clear_session()  # Keras numbers unnamed layers per session: conv2d, conv2d_1 …
    spec = ARCHS[arch]
    options = {"alpha": ARCHS[arch].feature_channels[-1] / 1024} if spec.keras_application == "MobileNet" else {}
    return getattr(keras.applications, spec.keras_application)(
        weights=None, include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3), **options)


@pytest.fixture(scope="module", autouse=True)
def _release_keras_models():
    """The Keras reference models are built once per module and released after it (InceptionResNetV2: 54M)."""
    yield
    study_base_model.cache_clear()


@pytest.mark.parametrize("arch", KERAS_ARCHS)
def test_layer_list_equals_keras_model_layers_of_the_base_model_the_study_built(arch):
    model = study_base_model(arch)
    application = ARCHS[arch].keras_application
    assert [(layer.name, layer.__class__.__name__) for layer in model.layers] == \
        [(layer.name, layer.class_name) for layer in keras_layers(application)]
    assert model.layers[-1].__class__.__name__ == "GlobalAveragePooling2D"  # the pooling layer is one of them


@pytest.mark.parametrize("arch", [a for a in KERAS_ARCHS if a in ("resnet50_keras", "densenet121", "mobilenet_v1_100")])
def test_layer_list_without_pooling_is_the_reference_builders(arch):
    keras.backend.clear_session()
    model = keras_builders.build(arch, SIZE)
    assert [layer.name for layer in model.layers] == list(keras_layer_names(ARCHS[arch].keras_application, None))


@pytest.mark.parametrize("arch", KERAS_ARCHS)
def test_each_layer_with_weights_is_one_module_of_the_encoder_with_as_many_parameters(arch):
    """Keras counts gamma/beta of a BatchNorm (its moving statistics are non-trainable), PyTorch its
    weight/bias parameters (running statistics are buffers): per layer, the same numbers."""
    model = study_base_model(arch)
    encoder = build_encoder(arch)
    modules = keras_layer_modules(ARCHS[arch].keras_application)
    weighted = [layer for layer in model.layers if layer.weights]
    assert sorted(layer.name for layer in weighted) == sorted(modules)
    for layer in weighted:
        keras_count = int(sum(np.prod(w.shape) for w in layer.trainable_weights))
        torch_count = sum(p.numel() for p in encoder.get_submodule(modules[layer.name]).parameters())
        assert torch_count == keras_count, layer.name
    covered = {id(p) for name in modules.values() for p in encoder.get_submodule(name).parameters()}
    assert covered == {id(p) for p in encoder.parameters()}  # no parameter outside a Keras layer


def test_every_keras_network_of_the_registry_has_a_layer_list():
    registered = {spec.keras_application for spec in ARCHS.values() if spec.keras_application}
    assert registered <= set(keras_applications())


def test_unknown_application_and_pooling_are_errors():
    with pytest.raises(ValueError, match="no Keras layer list for 'VGG16'"):
        keras_layers("VGG16")
    with pytest.raises(ValueError, match="pooling 'mean'"):
        keras_layers("ResNet50", "mean")
