"""The ordered layer list (``model.layers``) of the ``keras.applications`` networks, without Keras.

Papers that fine-tune Keras networks freeze by *layer position*: RadImageNet's ``unfreezetop10``
(``acl/acl_train.py`` and the other ``*_train.py`` scripts of github.com/BMEII-AI/RadImageNet) builds
``base_model = ResNet50(weights=..., input_shape=(s, s, 3), include_top=False, pooling='avg')`` (likewise
DenseNet121, InceptionV3, InceptionResNetV2) and sets ``layer.trainable = False`` for every layer of
``base_model.layers[:-10]``; ``freezeall`` freezes every layer of ``base_model.layers``, ``unfreezeall``
none. Reproducing that needs Keras's list: which layers exist (activations, paddings, additions and
the global pooling count as layers; the ``InputLayer`` is the first) and in which order.

That order is not the order of the application's code. A Keras functional model lists its layers
by *depth* (the longest path to the output, deepest first), ties broken by the order in which a
depth-first walk from the output, visiting each layer's inputs in call order, first meets them
(``keras.src.ops.function.map_graph``). So in a ResNet block the shortcut convolution comes after
the second 3×3 activation. Here each network's graph is written as its application code builds it
(:func:`_resnet50` …: layer classes, names and inputs, in creation order) and :func:`_keras_order`
runs that algorithm; ``tests/models/test_keras_layers.py`` checks the result against
``[l.name for l in model.layers]`` of Keras itself.

Unnamed layers get Keras 3's automatic names in a fresh session (``conv2d``, ``conv2d_1``, … in
creation order, as :data:`~medxfer.models.weights.keras_h5.KERAS_LAYER_MAPS` keys them). TF-Keras 2,
which RadImageNet ran, names some layers otherwise (``input_1``; InceptionResNetV2's residual scaling
is a ``Lambda`` named ``block35_1`` … where Keras 3 has an unnamed ``CustomScaleLayer``). Its
application code builds the same layers with the same inputs and orders them with the same
``map_graph`` algorithm, so the positions K counts are the same (read from the sources, not run
against TensorFlow here). The Keras 1/2.2 MobileNet, before ``tf.keras``, also padded its stem with
a ``conv1_pad`` layer that Keras 3 does not have.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from .weights.keras_h5 import KERAS_LAYER_MAPS

# the pooling RadImageNet built its base models with (include_top=False, pooling='avg')
STUDY_POOLING = "avg"
_WEIGHTED = {"Conv2D": "conv", "DepthwiseConv2D": "dwconv", "BatchNormalization": "bn"}


@dataclass(frozen=True)
class KerasLayer:
    """One layer of a Keras application: its name, Keras class and what weights it holds."""

    name: str
    class_name: str  # the Keras layer class ("Conv2D", "BatchNormalization", "Activation" …)

    @property
    def kind(self) -> str | None:
        """``"conv"``, ``"dwconv"`` or ``"bn"`` for a layer with weights, None for the others."""
        return _WEIGHTED.get(self.class_name)


def _snake_case(class_name: str) -> str:
    """Keras's ``to_snake_case`` (``MaxPooling2D`` → ``max_pooling2d``), the stem of automatic names."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _Graph:
    """A functional graph as an application's code creates it: each call adds one layer applied to
    earlier layers' outputs (one node per layer: the applications share no layer)."""

    def __init__(self) -> None:
        self.classes: dict[str, str] = {}
        self.inputs: dict[str, tuple[str, ...]] = {}
        self._uids: Counter[str] = Counter()

    def __call__(self, class_name: str, *inputs: str, name: str | None = None) -> str:
        if name is None:  # Keras 3 auto_name: the first is "conv2d", the next "conv2d_1" …
            stem = _snake_case(class_name)
            name = stem if self._uids[stem] == 0 else f"{stem}_{self._uids[stem]}"
            self._uids[stem] += 1
        if name in self.classes:
            raise ValueError(f"layer name {name!r} used twice")
        self.classes[name] = class_name
        self.inputs[name] = inputs
        return name


def _keras_order(graph: _Graph, output: str) -> list[str]:
    """``model.layers`` of the model ending at ``output``: Keras's ``map_graph`` order."""
    first_seen = {output: 0}  # depth-first walk from the output, a layer's inputs in call order
    finished: list[str] = []  # post-order: every layer after all of its inputs
    stack = [(output, iter(graph.inputs[output]))]
    while stack:
        name, pending = stack[-1]
        for parent in pending:
            if parent not in first_seen:
                first_seen[parent] = len(first_seen)
                stack.append((parent, iter(graph.inputs[parent])))
                break
        else:
            stack.pop()
            finished.append(name)
    depth: dict[str, int] = {}
    for name in reversed(finished):  # consumers before producers
        d = depth.setdefault(name, 0)
        for parent in graph.inputs[name]:
            depth[parent] = max(depth.get(parent, 0), d + 1)
    return sorted(first_seen, key=lambda n: (-depth[n], first_seen[n]))


def _top(g: _Graph, x: str, pooling: str | None, named: bool) -> str:
    """``include_top=False`` with ``pooling``: ResNet and DenseNet name their pooling layer, the others do not."""
    if pooling is None:
        return x
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling {pooling!r}: use 'avg', 'max' or None")
    cls = "GlobalAveragePooling2D" if pooling == "avg" else "GlobalMaxPooling2D"
    return g(cls, x, name=f"{pooling}_pool" if named else None)


def _resnet50(g: _Graph, x: str, pooling: str | None) -> str:
    """``keras.applications.ResNet50``: v1 bottlenecks, ``Add([shortcut, residual])``."""
    x = g("ZeroPadding2D", x, name="conv1_pad")
    x = g("Conv2D", x, name="conv1_conv")
    x = g("BatchNormalization", x, name="conv1_bn")
    x = g("Activation", x, name="conv1_relu")
    x = g("ZeroPadding2D", x, name="pool1_pad")
    x = g("MaxPooling2D", x, name="pool1_pool")
    for stage, count in zip(range(2, 6), (3, 4, 6, 3)):
        for b in range(1, count + 1):
            p = f"conv{stage}_block{b}"
            shortcut = x
            if b == 1:
                shortcut = g("BatchNormalization", g("Conv2D", x, name=f"{p}_0_conv"), name=f"{p}_0_bn")
            y = x
            for i in (1, 2, 3):
                y = g("BatchNormalization", g("Conv2D", y, name=f"{p}_{i}_conv"), name=f"{p}_{i}_bn")
                if i < 3:
                    y = g("Activation", y, name=f"{p}_{i}_relu")
            x = g("Activation", g("Add", shortcut, y, name=f"{p}_add"), name=f"{p}_out")
    return _top(g, x, pooling, named=True)


def _densenet121(g: _Graph, x: str, pooling: str | None) -> str:
    """``keras.applications.DenseNet121``: ``Concatenate([x, new])`` per layer, unnamed stem paddings."""
    x = g("ZeroPadding2D", x)
    x = g("Activation", g("BatchNormalization", g("Conv2D", x, name="conv1_conv"), name="conv1_bn"), name="conv1_relu")
    x = g("MaxPooling2D", g("ZeroPadding2D", x), name="pool1")
    for stage, count in zip(range(2, 6), (6, 12, 24, 16)):
        for i in range(1, count + 1):
            p = f"conv{stage}_block{i}"
            y = g("Activation", g("BatchNormalization", x, name=f"{p}_0_bn"), name=f"{p}_0_relu")
            y = g("Activation", g("BatchNormalization", g("Conv2D", y, name=f"{p}_1_conv"), name=f"{p}_1_bn"),
                  name=f"{p}_1_relu")
            x = g("Concatenate", x, g("Conv2D", y, name=f"{p}_2_conv"), name=f"{p}_concat")
        if stage < 5:
            x = g("Activation", g("BatchNormalization", x, name=f"pool{stage}_bn"), name=f"pool{stage}_relu")
            x = g("AveragePooling2D", g("Conv2D", x, name=f"pool{stage}_conv"), name=f"pool{stage}_pool")
    x = g("Activation", g("BatchNormalization", x, name="bn"), name="relu")
    return _top(g, x, pooling, named=True)


def _mobilenet(g: _Graph, x: str, pooling: str | None) -> str:
    """``keras.applications.MobileNet`` (any alpha: the width does not change the layers)."""
    x = g("ReLU", g("BatchNormalization", g("Conv2D", x, name="conv1"), name="conv1_bn"), name="conv1_relu")
    for i in range(1, 14):
        if i in (2, 4, 6, 12):  # the strided blocks pad bottom/right and convolve "valid"
            x = g("ZeroPadding2D", x, name=f"conv_pad_{i}")
        for part, cls in (("dw", "DepthwiseConv2D"), ("pw", "Conv2D")):
            x = g("ReLU", g("BatchNormalization", g(cls, x, name=f"conv_{part}_{i}"), name=f"conv_{part}_{i}_bn"),
                  name=f"conv_{part}_{i}_relu")
    return _top(g, x, pooling, named=False)


def _v3_conv(g: _Graph, x: str, n: int = 1) -> str:
    """InceptionV3 ``conv2d_bn`` ``n`` times in a row: unnamed Conv2D, BatchNormalization, Activation."""
    for _ in range(n):
        x = g("Activation", g("BatchNormalization", g("Conv2D", x)))
    return x


def _inception_v3(g: _Graph, x: str, pooling: str | None) -> str:
    """``keras.applications.InceptionV3``: only the ``mixed*`` concatenations are named."""
    x = g("MaxPooling2D", _v3_conv(g, x, 3))
    x = g("MaxPooling2D", _v3_conv(g, x, 2))
    # mixed0-2 (35x35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1; mixed4-7 (17x17): 1x1 | 1x1-1x7-7x1 |
    # 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1. Branches are created in this order, each to its end.
    for chains, names in (((1, 2, 3), ("mixed0", "mixed1", "mixed2")), ((1, 3, 5), ("mixed4", "mixed5", "mixed6",
                                                                                    "mixed7"))):
        for name in names:
            branches = [_v3_conv(g, x, n) for n in chains]
            x = g("Concatenate", *branches, _v3_conv(g, g("AveragePooling2D", x)), name=name)
        if name == "mixed2":  # mixed3 (reduction to 17x17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool
            x = g("Concatenate", _v3_conv(g, x), _v3_conv(g, x, 3), g("MaxPooling2D", x), name="mixed3")
    # mixed8 (reduction to 8x8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool
    x = g("Concatenate", _v3_conv(g, x, 2), _v3_conv(g, x, 4), g("MaxPooling2D", x), name="mixed8")
    for i in range(2):  # mixed9, mixed10: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avgpool-1x1
        branch1x1 = _v3_conv(g, x)
        stem = _v3_conv(g, x)
        branch3x3 = g("Concatenate", _v3_conv(g, stem), _v3_conv(g, stem), name=f"mixed9_{i}")
        stem = _v3_conv(g, x, 2)
        branch3x3dbl = g("Concatenate", _v3_conv(g, stem), _v3_conv(g, stem))
        x = g("Concatenate", branch1x1, branch3x3, branch3x3dbl, _v3_conv(g, g("AveragePooling2D", x)),
              name=f"mixed{9 + i}")
    return _top(g, x, pooling, named=False)


def _irv2_conv(g: _Graph, x: str, n: int = 1, name: str | None = None) -> str:
    """InceptionResNetV2 ``conv2d_bn`` ``n`` times in a row (BatchNormalization and ReLU after each)."""
    for _ in range(n):
        x = g("Conv2D", x, name=name)
        x = g("BatchNormalization", x, name=None if name is None else f"{name}_bn")
        x = g("Activation", x, name=None if name is None else f"{name}_ac")
    return x


def _inception_resnet_v2(g: _Graph, x: str, pooling: str | None) -> str:
    """``keras.applications.InceptionResNetV2``: residual blocks ``block35_i``, ``block17_i``, ``block8_i``
    whose unnamed ``CustomScaleLayer`` adds ``scale * up`` to the block input."""
    x = g("MaxPooling2D", _irv2_conv(g, x, 3))
    x = g("MaxPooling2D", _irv2_conv(g, x, 2))
    x = g("Concatenate", _irv2_conv(g, x), _irv2_conv(g, x, 2), _irv2_conv(g, x, 3),
          _irv2_conv(g, g("AveragePooling2D", x)), name="mixed_5b")
    # branch chain lengths of each residual block type, and the number of blocks
    for block, chains, count in (("block35", (1, 2, 3), 10), ("block17", (1, 3), 20), ("block8", (1, 3), 10)):
        for i in range(1, count + 1):
            mixed = g("Concatenate", *(_irv2_conv(g, x, n) for n in chains), name=f"{block}_{i}_mixed")
            up = g("Conv2D", mixed, name=f"{block}_{i}_conv")  # biased, no BatchNormalization, no activation
            x = g("CustomScaleLayer", x, up)
            if not (block == "block8" and i == count):  # the last block8 has no activation
                x = g("Activation", x, name=f"{block}_{i}_ac")
        if block == "block35":  # mixed_6a: 3x3/2 | 1x1-3x3-3x3/2 | maxpool
            x = g("Concatenate", _irv2_conv(g, x), _irv2_conv(g, x, 3), g("MaxPooling2D", x), name="mixed_6a")
        elif block == "block17":  # mixed_7a: 1x1-3x3/2 | 1x1-3x3/2 | 1x1-3x3-3x3/2 | maxpool
            x = g("Concatenate", _irv2_conv(g, x, 2), _irv2_conv(g, x, 2), _irv2_conv(g, x, 3),
                  g("MaxPooling2D", x), name="mixed_7a")
    x = _irv2_conv(g, x, name="conv_7b")
    return _top(g, x, pooling, named=False)


_TOPOLOGIES = {"ResNet50": _resnet50, "DenseNet121": _densenet121, "MobileNet": _mobilenet,
               "InceptionV3": _inception_v3, "InceptionResNetV2": _inception_resnet_v2}


def keras_applications() -> tuple[str, ...]:
    """The ``keras.applications`` networks whose layer lists are known here."""
    return tuple(_TOPOLOGIES)


@lru_cache(maxsize=None)
def keras_layers(application: str, pooling: str | None = STUDY_POOLING) -> tuple[KerasLayer, ...]:
    """``model.layers`` of ``keras.applications.<application>(include_top=False, pooling=pooling)``
    in a fresh Keras 3 session: the ``InputLayer`` first, the global pooling layer (if any) last."""
    try:
        topology = _TOPOLOGIES[application]
    except KeyError:
        raise ValueError(f"no Keras layer list for {application!r}; known: {', '.join(_TOPOLOGIES)}") from None
    g = _Graph()
    output = topology(g, g("InputLayer"), pooling)
    return tuple(KerasLayer(name, g.classes[name]) for name in _keras_order(g, output))


def keras_layer_names(application: str, pooling: str | None = STUDY_POOLING) -> tuple[str, ...]:
    """The names of :func:`keras_layers`, in ``model.layers`` order."""
    return tuple(layer.name for layer in keras_layers(application, pooling))


def keras_layer_modules(application: str) -> dict[str, str]:
    """Keras layer name → the PyTorch module (name in the encoder) holding its weights, for every
    layer with weights (:data:`~medxfer.models.weights.keras_h5.KERAS_LAYER_MAPS`, the map the
    ``.h5`` importer loads with). Layers without weights have no module."""
    if application not in KERAS_LAYER_MAPS:
        raise ValueError(f"no Keras layer map for {application!r}; known: {', '.join(KERAS_LAYER_MAPS)}")
    return {name: prefix for name, (prefix, _) in KERAS_LAYER_MAPS[application]().items()}
