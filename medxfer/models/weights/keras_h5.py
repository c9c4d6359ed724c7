"""Keras ``.h5`` weights → PyTorch state dicts for the Keras-layout encoders.

Read with ``h5py`` only (no TensorFlow/Keras at run time). Layouts users have:

- TF-Keras 2 ``model.save("x.h5")``: ``model_weights/<layer>/<layer>/kernel:0`` with a
  ``weight_names`` attribute per layer group (the published RadImageNet ``*_notop.h5``);
- TF-Keras 2 / Keras 1–2 ``model.save_weights("x.h5")``: the same layer groups at the root
  (the keras-applications ImageNet files such as ``mobilenet_2_5_224_tf_no_top.h5``);
- Keras 3 legacy ``model.save("x.h5")``: ``model_weights/<layer>/<layer>/kernel`` (no ``:0``).

Keras 3 native ``.weights.h5`` files are refused with a message: they name layers by class and
graph position (``conv2d_17``), not by layer name.

Layer names are normalised (``conv1/conv`` in TF-Keras DenseNet is ``conv1_conv`` in Keras 3).
Kernels are transposed to PyTorch order; the stem keeps the source's input-channel order (BGR
for caffe-mode weights: the preprocessing record flips the image instead).

Which Keras network an arch is (:attr:`ArchSpec.keras_application`) and the BatchNorm epsilon it
was trained with (:attr:`ArchSpec.keras_bn_eps`) are facts of its arch spec; the layer maps here
are keyed by the Keras network.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...core.errors import MedxferError
from ..encoders import ARCHS, arch_spec
from .loading import name_listing


class KerasImportError(MedxferError, ValueError):
    """A Keras file that cannot become the requested encoder (message names file and reason)."""


@dataclass
class KerasWeights:
    """Weights of a Keras model, by normalised layer name, in file order."""

    layers: dict[str, list[tuple[str | None, np.ndarray]]]
    layout: str
    keras_version: str | None = None
    backend: str | None = None
    model_config: str | None = None


def _attr_str(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def normalise_layer_name(name: str) -> str:
    """``conv1/conv`` → ``conv1_conv`` (TF-Keras 2 DenseNet names vs Keras 3)."""
    return name.replace("/", "_")


# what h5py and numpy raise on a damaged file: corrupted metadata surfaces as RuntimeError from
# h5py's link and object calls, OSError from reads, KeyError for a missing member, UnicodeDecodeError
# (a ValueError) from a name attribute with overwritten bytes, TypeError for an attribute of another kind
_DAMAGE = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a KeyError's without the quotes ``str`` adds)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = text.strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_keras_h5(path: str | Path) -> KerasWeights:
    """All weights of a Keras ``.h5`` file, without Keras; raises :class:`KerasImportError`.

    A damaged file (superblock, B-tree, heap, attribute or data bytes overwritten) is one
    :class:`KerasImportError` naming the file, whatever h5py raises for it (``OSError``,
    ``RuntimeError``, ``KeyError``, a ``UnicodeDecodeError`` of a name attribute …).
    """
    import h5py  # imported here: only Keras imports need it

    try:
        f = h5py.File(path, "r")
    except _DAMAGE as exc:
        raise KerasImportError(f"{path}: not a readable HDF5 file ({_first_line(exc)})") from None
    try:
        with f:
            return _read_open_file(f, path)
    except KerasImportError:
        raise
    except _DAMAGE as exc:
        raise KerasImportError(f"{path}: damaged Keras file, its HDF5 structure cannot be read "
                               f"({_first_line(exc)}); get a fresh copy of the file") from None


def _read_open_file(f, path: str | Path) -> KerasWeights:
    """:func:`read_keras_h5` on an open ``h5py.File``."""
    version, backend = _attr_str(f.attrs.get("keras_version")), _attr_str(f.attrs.get("backend"))
    config = _attr_str(f.attrs.get("model_config"))
    if "layer_names" in f.attrs or "model_weights" in f:
        root = f["model_weights"] if "model_weights" in f else f
        layout = ("keras3-legacy-h5" if version and version.startswith("3") else "tf-keras-model") \
            if "model_weights" in f else "tf-keras-weights"
        version = version or _attr_str(root.attrs.get("keras_version"))
        backend = backend or _attr_str(root.attrs.get("backend"))
        layers = {}
        for raw in root.attrs["layer_names"]:
            name = _attr_str(raw)
            group = root[name]
            names = [_attr_str(w) for w in group.attrs.get("weight_names", [])]
            if not names:
                continue
            values = []
            for wname in names:
                kind = wname.rsplit("/", 1)[-1].split(":")[0]
                values.append((kind, np.asarray(group[wname])))
            layers[normalise_layer_name(name)] = values
    elif "layers" in f and "vars" in f:
        # Keras 3 native .weights.h5 names layers by class and graph position
        # ("conv2d_17"), not by layer name: mapping them would rest on Keras's internal
        # topological order, so refuse with the way out instead of guessing.
        raise KerasImportError(
            f"{path}: a Keras 3 native .weights.h5 file, which stores layers by class and position "
            "rather than by name; re-save the model in Keras as legacy HDF5 (model.save('model.h5')) "
            "and import that")
    else:
        raise KerasImportError(f"{path}: HDF5 file without Keras weights (no layer_names, "
                               "model_weights or layers group)")
    if not layers:
        raise KerasImportError(f"{path}: the Keras file holds no weights")
    return KerasWeights(layers=layers, layout=layout, keras_version=version, backend=backend, model_config=config)


# ----------------------------------------------------------------------------- layer maps
# keras layer name → (PyTorch module prefix, kind); kind is "conv", "dwconv" or "bn".

def _resnet50_keras_map() -> dict[str, tuple[str, str]]:
    m = {"conv1_conv": ("conv1", "conv"), "conv1_bn": ("bn1", "bn")}
    for stage, count in zip(range(2, 6), (3, 4, 6, 3)):
        for b in range(1, count + 1):
            prefix, torch_prefix = f"conv{stage}_block{b}", f"layer{stage - 1}.{b - 1}"
            for i in (1, 2, 3):
                m[f"{prefix}_{i}_conv"] = (f"{torch_prefix}.conv{i}", "conv")
                m[f"{prefix}_{i}_bn"] = (f"{torch_prefix}.bn{i}", "bn")
            if b == 1:
                m[f"{prefix}_0_conv"] = (f"{torch_prefix}.downsample.0", "conv")
                m[f"{prefix}_0_bn"] = (f"{torch_prefix}.downsample.1", "bn")
    return m


def _densenet121_map() -> dict[str, tuple[str, str]]:
    m = {"conv1_conv": ("features.conv0", "conv"), "conv1_bn": ("features.norm0", "bn"), "bn": ("features.norm5", "bn")}
    for stage, count in zip(range(2, 6), (6, 12, 24, 16)):
        for i in range(1, count + 1):
            k, t = f"conv{stage}_block{i}", f"features.denseblock{stage - 1}.denselayer{i}.layers"
            m[f"{k}_0_bn"] = (f"{t}.norm1", "bn")
            m[f"{k}_1_conv"] = (f"{t}.conv1", "conv")
            m[f"{k}_1_bn"] = (f"{t}.norm2", "bn")
            m[f"{k}_2_conv"] = (f"{t}.conv2", "conv")
        if stage < 5:
            m[f"pool{stage}_bn"] = (f"features.transition{stage - 1}.norm", "bn")
            m[f"pool{stage}_conv"] = (f"features.transition{stage - 1}.conv", "conv")
    return m


def _mobilenet_v1_map() -> dict[str, tuple[str, str]]:
    m = {"conv1": ("conv1", "conv"), "conv1_bn": ("conv1_bn", "bn")}
    for i in range(1, 14):
        m[f"conv_dw_{i}"] = (f"layers.{i - 1}.dw", "dwconv")
        m[f"conv_dw_{i}_bn"] = (f"layers.{i - 1}.dw_bn", "bn")
        m[f"conv_pw_{i}"] = (f"layers.{i - 1}.pw", "conv")
        m[f"conv_pw_{i}_bn"] = (f"layers.{i - 1}.pw_bn", "bn")
    return m


# Keras names a layer built without a name after its class and a session-wide counter (``conv2d``,
# ``conv2d_1`` …). keras.applications' Inception networks name almost none of theirs, so their maps are
# keyed by the names a fresh session gives, i.e. by creation order (the order of the ``conv2d_bn`` calls,
# which the PyTorch modules list below follow). A file's numbering may start elsewhere (``conv2d_95``
# after other models, ``conv2d_1`` from Keras 2.2): :func:`_in_creation_order` renumbers it by rank.
AUTO_NAMED = ("conv2d", "batch_normalization")  # the auto-named kinds in the Inception networks
_AUTO_NAME = re.compile(r"^(conv2d|batch_normalization)(?:_(\d+))?$")


def _auto_name(kind: str, index: int) -> str:
    """The name Keras gives the ``index``-th unnamed layer of ``kind`` in a fresh session."""
    return f"{kind}_{index}" if index else kind


def _conv_bn_map(prefixes: list[str]) -> dict[str, tuple[str, str]]:
    """The i-th unnamed ``conv2d_bn`` (Conv2D ``conv2d_i`` + BatchNormalization ``batch_normalization_i``)
    is the PyTorch ``ConvBN`` at ``prefixes[i]``."""
    m: dict[str, tuple[str, str]] = {}
    for i, prefix in enumerate(prefixes):
        m[_auto_name("conv2d", i)] = (f"{prefix}.conv", "conv")
        m[_auto_name("batch_normalization", i)] = (f"{prefix}.bn", "bn")
    return m


# InceptionV3 blocks: their conv2d_bn modules in Keras's creation order (torchvision's branch names)
_V3_BLOCK_CONVS = {
    "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
          "branch_pool"),
    "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "C": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    "D": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
    "E": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
_V3_MIXED = (("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
             ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E"),
             ("Mixed_7c", "E"))  # Keras mixed0 … mixed10


def _inception_v3_map() -> dict[str, tuple[str, str]]:
    stem = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    return _conv_bn_map(stem + [f"{block}.{conv}" for block, kind in _V3_MIXED for conv in _V3_BLOCK_CONVS[kind]])


# Inception-ResNet-v2 residual blocks: Keras name → (count, its unnamed conv2d_bn modules in creation order)
_IRV2_BLOCKS = {
    "block35": (10, ("branch0", "branch1.0", "branch1.1", "branch2.0", "branch2.1", "branch2.2")),
    "block17": (20, ("branch0", "branch1.0", "branch1.1", "branch1.2")),
    "block8": (10, ("branch0", "branch1.0", "branch1.1", "branch1.2")),
}
_IRV2_STAGES = {"block35": "repeat", "block17": "repeat_1", "block8": "repeat_2"}  # their nn.Sequential


def _irv2_block_module(kind: str, index: int) -> str:
    """PyTorch module of Keras block ``<kind>_<index>`` (1-based): ``repeat``, ``repeat_1``,
    ``repeat_2`` hold them, the last block8 (no activation) is ``block8``."""
    if kind == "block8" and index == _IRV2_BLOCKS["block8"][0]:
        return "block8"
    return f"{_IRV2_STAGES[kind]}.{index - 1}"


def _inception_resnet_v2_map() -> dict[str, tuple[str, str]]:
    unnamed = ["conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a"]
    unnamed += [f"mixed_5b.{b}" for b in ("branch0", "branch1.0", "branch1.1", "branch2.0", "branch2.1",
                                           "branch2.2", "branch3.1")]
    named = {"conv_7b": ("conv2d_7b.conv", "conv"), "conv_7b_bn": ("conv2d_7b.bn", "bn")}
    reductions = {"block35": ("mixed_6a", ("branch0", "branch1.0", "branch1.1", "branch1.2")),
                  "block17": ("mixed_7a", ("branch0.0", "branch0.1", "branch1.0", "branch1.1", "branch2.0",
                                           "branch2.1", "branch2.2"))}
    for kind, (count, convs) in _IRV2_BLOCKS.items():
        for i in range(1, count + 1):
            module = _irv2_block_module(kind, i)
            unnamed += [f"{module}.{conv}" for conv in convs]
            named[f"{kind}_{i}_conv"] = (f"{module}.conv2d", "conv")  # 1x1 with bias, no BatchNorm
        if kind in reductions:  # the reduction block after the stage
            block, convs_r = reductions[kind]
            unnamed += [f"{block}.{conv}" for conv in convs_r]
    return {**_conv_bn_map(unnamed), **named}


def _in_creation_order(layers: dict[str, list]) -> tuple[dict[str, list], dict[str, str]]:
    """``layers`` with its auto-named layers renamed as a fresh Keras session names them, by rank of
    their number within each kind (their creation order; the file's ``layer_names`` list is Keras's
    topological order, not it); also the renaming (fresh name → the file's) where they differ."""
    numbered: dict[str, list[tuple[int, str]]] = {kind: [] for kind in AUTO_NAMED}
    for name in layers:
        match = _AUTO_NAME.match(name)
        if match:
            numbered[match.group(1)].append((int(match.group(2) or 0), name))
    renamed = {old: _auto_name(kind, rank) for kind, found in numbered.items()
               for rank, (_, old) in enumerate(sorted(found))}
    out = {renamed.get(name, name): values for name, values in layers.items()}
    return out, {new: old for old, new in renamed.items() if new != old}


# keras.applications network (ArchSpec.keras_application) → its layer map
KERAS_LAYER_MAPS = {"ResNet50": _resnet50_keras_map, "DenseNet121": _densenet121_map, "MobileNet": _mobilenet_v1_map,
                    "InceptionV3": _inception_v3_map, "InceptionResNetV2": _inception_resnet_v2_map}
# the networks whose unnamed layers are matched by creation order (:func:`_in_creation_order`)
_BY_CREATION_ORDER = ("InceptionV3", "InceptionResNetV2")

_HEAD_LAYER = re.compile(r"^(predictions|fc\d*|dense(_\d+)?|logits|conv_preds|classifier.*)$")


def keras_archs(application: str | None = None) -> list[str]:
    """The Keras-layout archs: those with a Keras network (of ``application`` when given)."""
    return [name for name, spec in ARCHS.items()
            if spec.keras_application and (application is None or spec.keras_application == application)]


def detect_keras_arch(weights: KerasWeights) -> str | None:
    """Best guess of the medxfer arch a Keras file holds (for error messages and ``--arch`` checks)."""
    names = set(weights.layers)
    if {"conv2_block1_0_conv", "conv5_block3_3_conv"} <= names:
        return keras_archs("ResNet50")[0]
    if {"res2a_branch2a", "res5c_branch2c"} <= names:
        # Keras <= 2.2 ResNet50: BatchNorm eps 1e-3 and, in early versions, an unpadded max-pool —
        # a different network from keras.applications >= 2.3; not supported rather than guessed.
        return "Keras <= 2.2 ResNet50 (res2a_branch2a names; not supported: re-save it from keras >= 2.3)"
    if "pool2_conv" in names and "conv2_block1_0_bn" in names:
        blocks4 = sum(1 for n in names if re.fullmatch(r"conv4_block\d+_1_conv", n))
        if blocks4 == 24:
            return keras_archs("DenseNet121")[0]
        return f"densenet (conv4 has {blocks4} layers, not DenseNet121)"
    if "conv_dw_1" in names and "conv1" in names:
        width = weights.layers["conv1"][0][1].shape[-1]  # the stem's output is the first feature map
        fitting = [a for a in keras_archs("MobileNet") if ARCHS[a].feature_channels[0] == width]
        return fitting[0] if fitting else f"mobilenet_v1 (stem width {width})"
    if {"block35_1_conv", "block17_1_conv", "conv_7b"} <= names:
        return keras_archs("InceptionResNetV2")[0]
    if names and all(_AUTO_NAME.match(n) or _HEAD_LAYER.match(n) for n in names):  # only unnamed conv2d_bn
        v3_convs = _auto_count(_inception_v3_map(), "conv2d")
        if _auto_count(names, "conv2d") == _auto_count(names, "batch_normalization") == v3_convs:
            return keras_archs("InceptionV3")[0]
    return None


def _named(values: list[tuple[str | None, np.ndarray]], layer: str) -> dict[str, np.ndarray]:
    if all(name is not None for name, _ in values):
        out = {}
        for name, arr in values:
            out["kernel" if name == "depthwise_kernel" else name] = arr
        return out
    raise KerasImportError(f"layer {layer}: weights without names")


def _convert_layer(prefix: str, kind: str, values, layer: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if kind == "bn":
        named = _named(values, layer)
        if "moving_mean" not in named or "moving_variance" not in named:
            raise KerasImportError(f"layer {layer}: BatchNormalization without moving statistics")
        size = named["moving_mean"].shape[0]
        out[f"{prefix}.weight"] = torch.from_numpy(np.array(named.get("gamma", np.ones(size)), dtype=np.float32))
        out[f"{prefix}.bias"] = torch.from_numpy(np.array(named.get("beta", np.zeros(size)), dtype=np.float32))
        out[f"{prefix}.running_mean"] = torch.from_numpy(np.array(named["moving_mean"], dtype=np.float32))
        out[f"{prefix}.running_var"] = torch.from_numpy(np.array(named["moving_variance"], dtype=np.float32))
        return out
    named = _named(values, layer)
    kernel = np.asarray(named["kernel"], dtype=np.float32)
    if kernel.ndim != 4:
        raise KerasImportError(f"layer {layer}: kernel of shape {kernel.shape} is not a 2D convolution")
    if kind == "dwconv":  # (kh, kw, in, multiplier) → (in * multiplier, 1, kh, kw)
        kh, kw, cin, mult = kernel.shape
        weight = kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
    else:  # (kh, kw, in, out) → (out, in, kh, kw)
        weight = kernel.transpose(3, 2, 0, 1)
    out[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
    if "bias" in named:
        out[f"{prefix}.bias"] = torch.from_numpy(np.array(named["bias"], dtype=np.float32))
    return out


@dataclass
class KerasConversion:
    """A converted state dict and what the conversion decided."""

    state_dict: dict[str, torch.Tensor]
    skipped_layers: list[str] = field(default_factory=list)
    layout: str = ""
    keras_version: str | None = None
    bn_eps: float | None = None


def _auto_count(names, kind: str) -> int:
    """How many of ``names`` are auto-named layers of ``kind`` (``conv2d``, ``conv2d_7`` …)."""
    return sum(1 for name in names if (match := _AUTO_NAME.match(name)) and match.group(1) == kind)


def _renumbering_note(renamed: dict[str, str]) -> str:
    """How the file's auto-named layers were read, for an error message ("" when as named)."""
    if not renamed:
        return ""
    new, old = next(iter(renamed.items()))
    return (f" (the file's auto-named layers, numbered from another start, are read in creation order: "
            f"its {old} is {new} here)")


def keras_to_state_dict(weights: KerasWeights, arch: str, path: str | Path = "") -> KerasConversion:
    """Convert for ``arch``; every weighted layer must map (classifier heads are skipped and listed)."""
    detected = detect_keras_arch(weights)
    spec = arch_spec(arch)
    if spec.keras_application is None:
        hint = f" — it looks like {detected}: use --arch {detected}" if detected in keras_archs() else ""
        twin = arch_spec(spec.twin) if spec.twin else None
        if twin is not None and twin.keras_application and detected in (None, twin.name):
            hint = (f" — Keras {twin.title} is another network than {arch} (same key names, another computation); "
                    f"it loads into --arch {twin.name}, never into the {spec.layout} layout")
        raise KerasImportError(f"{path}: Keras .h5 weights cannot load into {arch!r}; Keras-layout encoders: "
                               f"{', '.join(keras_archs())}{hint}")
    layer_map = KERAS_LAYER_MAPS[spec.keras_application]()
    layers, renamed = (_in_creation_order(weights.layers) if spec.keras_application in _BY_CREATION_ORDER
                       else (weights.layers, {}))
    unmapped = [n for n in layers if n not in layer_map]
    heads = [renamed.get(n, n) for n in unmapped if _HEAD_LAYER.match(n)]
    foreign = [renamed.get(n, n) for n in unmapped if not _HEAD_LAYER.match(n)]  # as the file names them
    missing = [n for n in layer_map if n not in layers]
    if foreign or missing:
        guess = f"; the file looks like {detected}" if detected and detected != arch else ""
        counts = [f"{have} {kind} layers where {spec.title} has {want}"  # why ranks no longer pair up
                  for kind in (AUTO_NAMED if spec.keras_application in _BY_CREATION_ORDER else ())
                  if (have := _auto_count(layers, kind)) != (want := _auto_count(layer_map, kind))]
        raise KerasImportError(
            f"{path}: not a Keras {arch}{guess}: " + "; ".join(
                part for part in (*counts, name_listing("layers missing from the file", missing, limit=8),
                                  name_listing("layers the encoder does not have", foreign, limit=8)) if part)
            + _renumbering_note(renamed))
    state: dict[str, torch.Tensor] = {}
    for name, (prefix, kind) in layer_map.items():
        try:
            state.update(_convert_layer(prefix, kind, layers[name], renamed.get(name, name)))
        except KerasImportError as exc:
            raise KerasImportError(f"{path}: {exc}") from None
    return KerasConversion(state_dict=state, skipped_layers=heads, layout=weights.layout,
                           keras_version=weights.keras_version, bn_eps=spec.keras_bn_eps)
