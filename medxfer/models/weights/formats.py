"""Weights files → a state dict in the encoder's layout: format detection and conversion, strictly checked.

Formats: ``torchvision`` and ``radimagenet-pt`` (:mod:`.pytorch_files`), ``keras-h5``
(:mod:`.keras_h5`), ``medxfer`` checkpoints (:mod:`.checkpoints`) and the 3D ``medicalnet`` and
``swinunetr-ssl`` files (:mod:`.layouts3d`). Every conversion ends with a
strict load into a fresh encoder, so a file that does not fit is refused at import, with a hint
naming the arch it does fit when there is one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..encoders import ARCHS, ArchSpec, arch_spec, build_encoder
from ..preprocessing import IMAGENET, Preprocessing, preset
from .checkpoints import is_checkpoint, read_checkpoint
from .errors import WeightsError
from .keras_h5 import KerasImportError, keras_to_state_dict, read_keras_h5
from .layouts3d import FORMATS_3D, convert_3d, default_preprocessing_3d, detect_layout_3d, layout_provenance
from .loading import load_strict, plain_state_dict, safe_torch_load
from .pytorch_files import from_radimagenet_pt, from_torchvision
from .record import Conversion

FORMATS = ("torchvision", "keras-h5", "radimagenet-pt", "medxfer", *FORMATS_3D)
_LAYOUT_TITLES = {"keras": "Keras", "monai": "MONAI"}
_CONV_BIAS = re.compile(r"(^|\.)conv\d*\.bias$")

# why a Keras file gets the preprocessing its arch spec names (ArchSpec.keras_preprocessing)
_KERAS_PREPROCESSING_REASONS = {
    "tf": "Keras {application} preprocess_input: tf mode, inputs scaled to [-1, 1]",
    "caffe": ("RadImageNet Keras release (caffe mode, then x 1/255, as its training scripts feed all four "
              "networks); for Keras's own ImageNet {application} file import with --preprocessing {keras_imagenet}"),
}


def default_preprocessing(fmt: str, arch: str) -> tuple[Preprocessing, str]:
    """The preprocessing a file of ``fmt`` for ``arch`` expects, and why."""
    three_d = default_preprocessing_3d(fmt, arch)
    if three_d is not None:
        return three_d
    if fmt == "keras-h5":
        spec = arch_spec(arch)
        mode = spec.keras_preprocessing or "caffe"
        return preset(mode), _KERAS_PREPROCESSING_REASONS[mode].format(
            application=spec.keras_application, keras_imagenet=spec.keras_imagenet_preprocessing or mode)
    if fmt == "radimagenet-pt":
        return IMAGENET, ("RadImageNet's PyTorch release documents no preprocessing: torchvision ImageNet mean/std "
                          "assumed (override with --preprocessing)")
    return IMAGENET, "torchvision ImageNet weights: RGB, ImageNet mean/std"


# file name endings of HDF5 (Keras) files: one without the HDF5 signature is damaged, not PyTorch
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".keras")


def detect_format(path: str | os.PathLike) -> str:
    """``keras-h5`` for HDF5, else by the content of the PyTorch file.

    A file named like HDF5 (``.h5``) that is neither HDF5 nor PyTorch is reported as a damaged
    HDF5 file (its signature was overwritten), not as an unreadable PyTorch file."""
    import h5py  # only Keras imports need it

    if Path(path).is_file() and h5py.is_hdf5(path):
        return "keras-h5"
    try:
        obj = safe_torch_load(path)
    except WeightsError as exc:
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError:  # no such file: safe_torch_load's reason stands
            raise exc from None
        # a zip (torch.save) or a pickle (legacy torch.save) named .h5 keeps the PyTorch reason (e.g. refused code)
        if Path(path).suffix.lower() in _HDF5_SUFFIXES and not head.startswith((b"PK\x03\x04", b"\x80")):
            raise WeightsError(f"{path}: not a readable HDF5 file (no valid HDF5 signature: damaged or truncated "
                               "at its start); get a fresh copy of the file") from None
        raise
    if is_checkpoint(obj):
        return "medxfer"
    state = plain_state_dict(obj, path)
    if any(k.startswith("backbone.") for k in state):
        return "radimagenet-pt"
    return detect_layout_3d(state) or "torchvision"


def convert_weights(path: str | os.PathLike, arch: str, fmt: str = "auto",
                    preprocessing: str | Preprocessing | None = None) -> Conversion:
    """Read ``path`` (any supported format) as a state dict for ``arch`` and check it fits, strictly."""
    spec = arch_spec(arch)
    if not Path(path).is_file():
        raise WeightsError(f"{path}: no such file")
    if Path(path).stat().st_size == 0:
        raise WeightsError(f"{path}: empty file")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise WeightsError(f"unknown weights format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    provenance: dict[str, Any] = {}
    arch_options: dict[str, Any] = {}
    if fmt == "keras-h5":
        try:
            conv = keras_to_state_dict(read_keras_h5(path), arch, path)
        except KerasImportError as exc:
            raise WeightsError(str(exc)) from None
        except (KeyError, IndexError, TypeError) as exc:  # weights of unexpected names or shapes: a damaged file
            raise WeightsError(f"{path}: damaged Keras file, weights of unexpected names or shapes "
                               f"({type(exc).__name__}: {exc})") from None
        state, skipped = conv.state_dict, conv.skipped_layers
        provenance.update(source_layout=conv.layout, keras_version=conv.keras_version)
        if conv.bn_eps is not None:
            arch_options["bn_eps"] = conv.bn_eps
        default, reason = default_preprocessing(fmt, arch)
    elif fmt == "medxfer":
        checkpoint = read_checkpoint(path, arch)
        state, skipped = dict(checkpoint["encoder"]), []
        arch_options = dict(checkpoint.get("arch_options") or {})
        default = Preprocessing.from_dict(checkpoint["preprocessing"])
        reason = "from the medxfer checkpoint"
        provenance.update(checkpoint.get("provenance") or {})
    elif fmt in FORMATS_3D:
        state, skipped = convert_3d(fmt, plain_state_dict(safe_torch_load(path), path))
        provenance.update(layout_provenance(fmt, arch))
        default, reason = default_preprocessing(fmt, arch)
    else:
        if spec.layout == "keras":
            raise WeightsError(f"{path}: {fmt} weights are torchvision-layout networks; {arch} is a Keras-layout "
                               f"encoder (import Keras .h5 files into it, or use --arch "
                               f"{spec.twin or 'a torchvision-layout arch'})")
        state = plain_state_dict(safe_torch_load(path), path)
        if fmt == "radimagenet-pt":
            state, skipped = from_radimagenet_pt(state, arch, path)
        else:
            state, skipped = from_torchvision(state, arch)
        default, reason = default_preprocessing(fmt, arch)
    if preprocessing is not None:
        default = preset(preprocessing) if isinstance(preprocessing, str) else preprocessing
        reason = "chosen at import"
    if skipped:
        provenance["skipped_head"] = skipped
    encoder = build_encoder(arch, in_channels=_stem_channels(state, spec))
    try:
        load_strict(encoder, state, source=str(path))
    except WeightsError as exc:
        raise WeightsError(f"{exc}{_layout_hint(state, spec)}") from None
    return Conversion(state_dict=state, format=fmt, preprocessing=default, preprocessing_reason=reason,
                      arch_options=arch_options, provenance=provenance)


def _stem_channels(state: dict[str, torch.Tensor], spec: ArchSpec) -> int:
    """Input channels of the file's first convolution (the arch's default when it has none)."""
    weight = state.get(spec.stem_weight)
    return int(weight.shape[1]) if weight is not None and weight.ndim >= 4 else spec.in_channels


def _layout_hint(state: dict[str, torch.Tensor], spec: ArchSpec) -> str:
    """Why a file that does not fit ``spec`` does not, when the reason is another arch."""
    if spec.twin:  # same key names, another network: only the conv biases tell them apart
        twin = arch_spec(spec.twin)
        has_conv_bias = any(_CONV_BIAS.search(k) for k in state)
        layout = _LAYOUT_TITLES.get(twin.layout, twin.layout)
        if has_conv_bias and twin.conv_bias and not spec.conv_bias:
            return f" — the file has conv biases: it is a {layout}-layout {twin.title}, use --arch {twin.name}"
        if not has_conv_bias and spec.conv_bias and not twin.conv_bias and spec.stem_weight in state:
            return f" — the file has no conv biases: it is a {layout}-layout {twin.title}, use --arch {twin.name}"
    for other in ARCHS:
        if other != spec.name and _fits(state, arch_spec(other)):
            return f" — the file fits {other}: use --arch {other}"
    return ""


def _fits(state: dict[str, torch.Tensor], spec: ArchSpec) -> bool:
    """Whether ``state`` is exactly a state dict of ``spec`` (keys and shapes)."""
    stem = state.get(spec.stem_weight)
    if stem is None or stem.ndim != spec.spatial_dims + 2:  # cheap: no network built for an arch that cannot fit
        return False
    try:
        own = spec.build(_stem_channels(state, spec)).state_dict()
    except Exception:  # noqa: BLE001 - only a hint
        return False
    keys = {k for k in own if not k.endswith("num_batches_tracked")}
    return keys == {k for k in state if not k.endswith("num_batches_tracked")} and all(
        own[k].shape == state[k].shape for k in keys)
