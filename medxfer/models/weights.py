"""Weights sources: import, registry, resolution and strict loading.

A *weights source* names where an encoder's weights come from (``../shared/DESIGN.md``):

- ``scratch`` — random initialisation;
- ``NAME`` — a file imported once with :func:`import_weights` (``medxfer weights import``) into
  ``$MEDXFER_HOME/weights/NAME/ARCH.pt`` + ``ARCH.json``; one name (``imagenet``,
  ``radimagenet``) can hold weights for several archs;
- ``file:PATH`` — a supported file converted on the fly (not stored);
- ``run:RUN_ID`` — the checkpoint an earlier medxfer run logged to MLflow
  (:data:`CHECKPOINT_ARTIFACT`): self-pretraining and incremental chains.

Every load checks sha256, uses ``torch.load(..., weights_only=True)`` only, and is strict: a
missing, unexpected or mis-shaped key is an error listing the keys, except the layers the caller
names (the head).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import os
import pickle
import re
import secrets
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .. import __version__
from ..core.home import medxfer_home
from .encoders import ARCHS, arch_spec, build_encoder
from .preprocessing import CAFFE, IMAGENET, SCRATCH, TF, Preprocessing, preset

FORMATS = ("torchvision", "keras-h5", "radimagenet-pt", "medxfer")
CHECKPOINT_ARTIFACT = "checkpoint/medxfer_checkpoint.pt"
CHECKPOINT_MARKER = "medxfer_checkpoint"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RESERVED = {"scratch"}


class WeightsError(ValueError):
    """Weights that cannot be used as asked; the message says which file or source and why."""


# ----------------------------------------------------------------------------- records

@dataclass
class WeightsRecord:
    """Where an encoder's weights come from (timm's ``pretrained_cfg``, for medxfer)."""

    name: str
    arch: str
    format: str
    preprocessing: dict[str, Any]
    sha256: str = ""  # of the converted state dict file (registry) or of the source (file:, run:)
    file: str = ""  # converted file, relative to the registry folder for imported weights
    source_file: str = ""  # base name only: paths may carry names
    source_sha256: str = ""
    arch_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"bn_eps": 1.001e-05}
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WeightsRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def preprocessing_record(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def params(self) -> dict[str, str]:
        """Flat MLflow params: ``weights.*`` and ``preprocessing.*``."""
        out = {"weights.name": self.name, "weights.arch": self.arch, "weights.format": self.format,
               "weights.sha256": self.sha256, "weights.source_sha256": self.source_sha256,
               "weights.source_file": self.source_file}
        out.update({f"weights.{k}": str(v) for k, v in self.arch_options.items()})
        out.update(self.preprocessing_record.params())
        return {k: v for k, v in out.items() if v != ""}


def source_label(source: str) -> str:
    """A weights source as it may appear in run names and params: ``file:`` keeps the base name
    only (a folder path can carry a person's name)."""
    return f"file:{Path(source[len('file:'):]).name}" if source.startswith("file:") else source


def scratch_record(arch: str) -> WeightsRecord:
    """The record of a randomly initialised encoder."""
    return WeightsRecord(name="scratch", arch=arch, format="scratch", preprocessing=SCRATCH.to_dict(),
                         provenance={"note": "random initialisation"})


@dataclass
class Conversion:
    """A state dict in the encoder's layout and what the conversion decided."""

    state_dict: dict[str, torch.Tensor]
    format: str
    preprocessing: Preprocessing
    preprocessing_reason: str
    arch_options: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading files

def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def safe_torch_load(path: str | os.PathLike, data: bytes | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file.

    With ``data`` the bytes already read (and hashed) are loaded, never the file again."""
    try:
        return torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = _first_line(exc)
        raise WeightsError(
            f"{path}: refused — the file is a pickle that needs code to load ({first}). medxfer loads "
            "tensors only (torch.load weights_only=True); re-save the weights as a plain state dict, "
            "e.g. torch.save(model.state_dict(), 'weights.pt')") from None
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError) as exc:
        raise WeightsError(f"{path}: not a readable PyTorch file, or truncated ({_first_line(exc)})") from None


def _plain_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside common wrappers (``state_dict``, ``model``; ``module.`` prefixes)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


_RESNET_HEAD = re.compile(r"^fc\.")
_DENSENET_HEAD = re.compile(r"^classifier\.")
_DENSENET_OLD = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.([12])\.(.+)$")
_DENSENET_NEW = re.compile(r"^(.*denselayer\d+)\.(norm[12]|conv[12])\.(.+)$")
_RADIMAGENET_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _family(arch: str) -> str:
    return "resnet" if arch.startswith("resnet") else "densenet" if arch.startswith("densenet") else arch


def _from_torchvision(state: dict[str, torch.Tensor], arch: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """torchvision ``resnet*``/``densenet*`` keys → encoder keys; returns (state, skipped head keys)."""
    out, skipped = {}, []
    family = _family(arch)
    for key, value in state.items():
        if (family == "resnet" and _RESNET_HEAD.match(key)) or (family == "densenet" and _DENSENET_HEAD.match(key)):
            skipped.append(key)
            continue
        if family == "densenet":
            old = _DENSENET_OLD.match(key)  # torchvision < 0.3: denselayer1.norm.1.weight
            if old:
                key = f"{old.group(1)}.layers.{old.group(2)}{old.group(3)}.{old.group(4)}"
            else:
                new = _DENSENET_NEW.match(key)
                if new:
                    key = f"{new.group(1)}.layers.{new.group(2)}.{new.group(3)}"
        out[key] = value
    return out, skipped


def _from_radimagenet_pt(state: dict[str, torch.Tensor], arch: str, path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """RadImageNet's PyTorch release: ``backbone = nn.Sequential(*torchvision_model.children()[:k])``."""
    family, renamed = _family(arch), {}
    for key, value in state.items():
        if not key.startswith("backbone."):
            renamed[key] = value  # a head next to the backbone: dropped below if it is one
            continue
        index, _, rest = key[len("backbone."):].partition(".")
        if family == "resnet":
            if index not in _RADIMAGENET_RESNET:
                raise WeightsError(f"{path}: key {key} is not part of a torchvision ResNet backbone")
            renamed[f"{_RADIMAGENET_RESNET[index]}.{rest}"] = value
        elif family == "densenet":
            if index != "0":
                raise WeightsError(f"{path}: key {key} is not part of a torchvision DenseNet backbone")
            renamed[f"features.{rest}"] = value
        else:
            raise WeightsError(f"{path}: RadImageNet PyTorch weights exist for ResNet50 and DenseNet121, not {arch}")
    heads = [k for k in renamed if not (k.startswith(("conv1", "bn1", "layer", "features.")))]
    mapped, skipped = _from_torchvision({k: v for k, v in renamed.items() if k not in heads}, arch)
    return mapped, heads + skipped


def default_preprocessing(fmt: str, arch: str) -> tuple[Preprocessing, str]:
    """The preprocessing a file of ``fmt`` for ``arch`` expects, and why."""
    if fmt == "keras-h5":
        if arch.startswith("mobilenet"):
            return TF, "Keras MobileNet preprocess_input: tf mode, inputs scaled to [-1, 1]"
        return CAFFE, ("RadImageNet Keras release (caffe mode, then x 1/255); for Keras's own ImageNet ResNet50 "
                       "import with --preprocessing caffe-keras, for Keras ImageNet DenseNet with imagenet")
    if fmt == "radimagenet-pt":
        return IMAGENET, ("RadImageNet's PyTorch release documents no preprocessing: torchvision ImageNet mean/std "
                          "assumed (override with --preprocessing)")
    return IMAGENET, "torchvision ImageNet weights: RGB, ImageNet mean/std"


def detect_format(path: str | os.PathLike) -> str:
    """``keras-h5`` for HDF5, else by the content of the PyTorch file."""
    import h5py

    if Path(path).is_file() and h5py.is_hdf5(path):
        return "keras-h5"
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and CHECKPOINT_MARKER in obj:
        return "medxfer"
    state = _plain_state_dict(obj, path)
    return "radimagenet-pt" if any(k.startswith("backbone.") for k in state) else "torchvision"


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
        from .keras_h5 import KerasImportError, keras_to_state_dict, read_keras_h5

        try:
            conv = keras_to_state_dict(read_keras_h5(path), arch, path)
        except KerasImportError as exc:
            raise WeightsError(str(exc)) from None
        state, skipped = conv.state_dict, conv.skipped_layers
        provenance.update(source_layout=conv.layout, keras_version=conv.keras_version)
        if conv.bn_eps is not None:
            arch_options["bn_eps"] = conv.bn_eps
        default, reason = default_preprocessing(fmt, arch)
    elif fmt == "medxfer":
        obj = safe_torch_load(path)
        if not isinstance(obj, dict) or CHECKPOINT_MARKER not in obj:
            raise WeightsError(f"{path}: not a medxfer checkpoint (no {CHECKPOINT_MARKER!r} entry)")
        if obj.get("arch") != arch:
            raise WeightsError(f"{path}: the checkpoint holds a {obj.get('arch')} encoder, not {arch}")
        lacking = [k for k in ("encoder", "preprocessing") if not isinstance(obj.get(k), dict)]
        if lacking:
            raise WeightsError(f"{path}: damaged medxfer checkpoint (no {', '.join(lacking)})")
        state, skipped = dict(obj["encoder"]), []
        arch_options = dict(obj.get("arch_options") or {})
        default = Preprocessing.from_dict(obj["preprocessing"])
        reason = "from the medxfer checkpoint"
        provenance.update({k: v for k, v in (obj.get("provenance") or {}).items()})
    else:
        if spec.layout == "keras" and fmt in ("torchvision", "radimagenet-pt"):
            raise WeightsError(f"{path}: {fmt} weights are torchvision-layout networks; {arch} is a Keras-layout "
                               f"encoder (import Keras .h5 files into it, or use --arch "
                               f"{'resnet50' if arch == 'resnet50_keras' else 'a torchvision-layout arch'})")
        state = _plain_state_dict(safe_torch_load(path), path)
        if fmt == "radimagenet-pt":
            state, skipped = _from_radimagenet_pt(state, arch, path)
        else:
            state, skipped = _from_torchvision(state, arch)
        default, reason = default_preprocessing(fmt, arch)
    if preprocessing is not None:
        default = preset(preprocessing) if isinstance(preprocessing, str) else preprocessing
        reason = "chosen at import"
    if skipped:
        provenance["skipped_head"] = skipped
    encoder = build_encoder(arch, in_channels=_stem_channels(state, arch))
    try:
        load_strict(encoder, state, source=str(path))
    except WeightsError as exc:
        raise WeightsError(f"{exc}{_layout_hint(state, arch)}") from None
    return Conversion(state_dict=state, format=fmt, preprocessing=default, preprocessing_reason=reason,
                      arch_options=arch_options, provenance=provenance)


def _stem_channels(state: dict[str, torch.Tensor], arch: str) -> int:
    key = ARCHS[arch].builder.stem_weight
    return int(state[key].shape[1]) if key in state and state[key].ndim == 4 else 3


def _layout_hint(state: dict[str, torch.Tensor], arch: str) -> str:
    has_conv_bias = "conv1.bias" in state or "layer1.0.conv1.bias" in state
    if arch == "resnet50" and has_conv_bias:
        return " — the file has conv biases: it is a Keras-layout ResNet50, use --arch resnet50_keras"
    if arch == "resnet50_keras" and "layer1.0.conv1.weight" in state and not has_conv_bias:
        return " — the file has no conv biases: it is a torchvision-layout ResNet50, use --arch resnet50"
    for other, spec in ARCHS.items():
        if other != arch and _fits(state, other):
            return f" — the file fits {other}: use --arch {other}"
    return ""


def _fits(state: dict[str, torch.Tensor], arch: str) -> bool:
    try:
        own = build_encoder(arch, _stem_channels(state, arch)).state_dict()
    except Exception:  # noqa: BLE001 - only a hint
        return False
    keys = {k for k in own if not k.endswith("num_batches_tracked")}
    return keys == {k for k in state if not k.endswith("num_batches_tracked")} and all(
        own[k].shape == state[k].shape for k in keys)


# ----------------------------------------------------------------------------- strict loading

def _listing(label: str, names: Iterable[str], limit: int = 10) -> str:
    names = list(names)
    if not names:
        return ""
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return f"{label} ({len(names)}): {', '.join(names[:limit])}{more}"


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], skip: Iterable[str] = (),
                source: str = "weights") -> list[str]:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error.

    ``skip`` names key prefixes the caller initialises itself (a new head): they are neither
    required nor loaded. BatchNorm ``num_batches_tracked`` counters may be absent (old files).
    Returns the module keys that were left as initialised (the skipped ones).
    """
    skip = tuple(skip)

    def skipped(key: str) -> bool:
        return any(key == s or key.startswith(s.rstrip(".") + ".") for s in skip)

    own = module.state_dict()
    missing = [k for k in own if k not in state and not skipped(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not skipped(k)]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in state if k in own and not skipped(k) and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = [p for p in (_listing("missing keys", missing), _listing("unexpected keys", unexpected),
                             _listing("shape mismatches (file vs encoder)", mismatched)) if p]
        raise WeightsError(f"{source}: does not fit {type(module).__name__}"
                           f"{' ' + module.arch if hasattr(module, 'arch') else ''}: " + "; ".join(parts))
    merged = dict(own)
    merged.update({k: v for k, v in state.items() if not skipped(k)})
    module.load_state_dict(merged, strict=True)
    return [k for k in own if skipped(k)]


def adapt_stem(state: dict[str, torch.Tensor], stem_key: str, in_channels: int,
               preprocessing: Preprocessing | None = None,
               stem_norm: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Fit the first convolution to ``in_channels``; returns the new state and what was done.

    RGB → 1 channel: the filters are summed over the input channels (in the source's channel
    order, e.g. BGR for caffe weights). With ``preprocessing`` the sum is weighted by
    ``mean(std) / std_c`` and the per-channel mean offset is folded into the stem's BatchNorm
    running mean (``stem_norm``) or, without one, into the stem conv's bias — so a gray image
    normalised with the collapsed 1-channel statistics (:meth:`Preprocessing.for_channels`) gives
    exactly the stem output of the RGB network fed that image on R, G and B (away from the
    zero-padded border). 1 channel → RGB: the filter is repeated and divided by the channel count.
    """
    weight = state.get(stem_key)
    if weight is None or weight.shape[1] == in_channels:
        return state, "as trained"
    out = dict(state)
    channels = weight.shape[1]
    if in_channels == 1:
        if preprocessing is None or len(preprocessing.mean) != channels:
            out[stem_key] = weight.sum(dim=1, keepdim=True)
            return out, f"rgb-summed: {stem_key} summed over its {channels} input channels"
        mean = torch.tensor(preprocessing.mean, dtype=weight.dtype)
        std = torch.tensor(preprocessing.std, dtype=weight.dtype)
        scale = (std.mean() / std).reshape(1, channels, 1, 1)
        out[stem_key] = (weight * scale).sum(dim=1, keepdim=True)
        offset = ((mean.mean() - mean) / std).reshape(1, channels, 1, 1)
        delta = preprocessing.post_scale * (weight * offset).sum(dim=(1, 2, 3))
        if stem_norm is not None:
            target = f"{stem_norm}.running_mean"
            out[target] = state[target] - delta
        else:
            target = stem_key.rsplit(".", 1)[0] + ".bias"
            out[target] = state[target] + delta
        return out, (f"rgb-summed: {stem_key} summed over its {channels} input channels, weighted by "
                     f"mean(std)/std; the mean offset folded into {target}")
    if channels == 1:
        out[stem_key] = weight.repeat(1, in_channels, 1, 1) / in_channels
        return out, f"gray-repeated: {stem_key} repeated over {in_channels} channels and divided by {in_channels}"
    raise WeightsError(f"the weights' first convolution takes {channels} channels; cannot adapt it to {in_channels}")


# ----------------------------------------------------------------------------- registry

def registry_dir(home: str | os.PathLike | None = None) -> Path:
    """``$MEDXFER_HOME/weights``."""
    return Path(home) / "weights" if home else medxfer_home() / "weights"


def _paths(name: str, arch: str, home) -> tuple[Path, Path]:
    """(folder of source ``name``, its record for ``arch``)."""
    folder = registry_dir(home) / name
    return folder, folder / f"{arch}.json"


def import_weights(path: str | os.PathLike, name: str, arch: str, fmt: str = "auto",
                   preprocessing: str | Preprocessing | None = None, expected_sha256: str | None = None,
                   note: str = "", home: str | os.PathLike | None = None, replace: bool = False) -> WeightsRecord:
    """Convert ``path`` once into the registry as weights source ``name`` for ``arch``."""
    if not _NAME_RE.match(name) or name in _RESERVED or ":" in name:
        raise WeightsError(f"invalid weights name {name!r}: letters, digits, '.', '_', '-' (not 'scratch')")
    arch_spec(arch)
    source_sha = sha256_file(path) if Path(path).is_file() else ""
    if not source_sha:
        raise WeightsError(f"{path}: no such file")
    if expected_sha256 and expected_sha256.lower() != source_sha:
        raise WeightsError(f"{path}: sha256 mismatch: expected {expected_sha256.lower()}, file has {source_sha}")
    folder, record_path = _paths(name, arch, home)
    if record_path.exists() and not replace:
        raise WeightsError(f"weights {name!r} for {arch} already exist ({record_path}); pass replace=True / --replace")
    conv = convert_weights(path, arch, fmt, preprocessing)
    buffer = io.BytesIO()
    torch.save(conv.state_dict, buffer)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    # Content-addressed state file: the record's rename is the single commit point, so a crash or
    # a concurrent import never pairs a record with a file it does not describe.
    state_path = folder / f"{arch}-{sha[:12]}.pt"
    _atomic_write(state_path, data)
    provenance = {"imported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "medxfer_version": __version__, "preprocessing_reason": conv.preprocessing_reason,
                  **conv.provenance}
    if note:
        provenance["note"] = note
    record = WeightsRecord(name=name, arch=arch, format=conv.format, preprocessing=conv.preprocessing.to_dict(),
                           sha256=sha, file=f"{name}/{state_path.name}", source_file=Path(path).name,
                           source_sha256=source_sha, arch_options=conv.arch_options, provenance=provenance)
    _atomic_write(record_path, (json.dumps(record.to_dict(), indent=2) + "\n").encode())
    for stale in folder.glob(f"{arch}-*.pt"):  # files of replaced imports
        if stale.name != state_path.name:
            stale.unlink(missing_ok=True)
    return record


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a uniquely named temporary file and ``os.replace``; readable by the user's group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def list_weights(home: str | os.PathLike | None = None) -> list[WeightsRecord]:
    """Every imported weights record, sorted by name and arch."""
    root = registry_dir(home)
    records = []
    for path in sorted(root.glob("*/*.json")):
        try:
            records.append(WeightsRecord.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            raise WeightsError(f"{path}: damaged weights record ({exc})") from None
    return records


def _known_sources(home) -> str:
    by_name: dict[str, list[str]] = {}
    for r in list_weights(home):
        by_name.setdefault(r.name, []).append(r.arch)
    imported = [f"{n} ({', '.join(a)})" for n, a in sorted(by_name.items())]
    return ", ".join(["scratch", "file:PATH", "run:RUN_ID", *imported])


@dataclass
class ResolvedWeights:
    """A weights record with its state dict, ready for :func:`load_strict`."""

    record: WeightsRecord
    state_dict: dict[str, torch.Tensor]


def imported_record(source: str, arch: str, home: str | os.PathLike | None = None) -> WeightsRecord | None:
    """The registry record of an imported name for ``arch`` without loading its weights; None when
    ``source`` is not an imported name (scratch, file:, run:, unknown)."""
    if not _NAME_RE.match(source) or source == "scratch":
        return None
    record_path = _paths(source, arch, home)[1]
    try:
        return WeightsRecord.from_dict(json.loads(record_path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def resolve_weights(source: str, arch: str, home: str | os.PathLike | None = None) -> ResolvedWeights | None:
    """The weights ``source`` names for ``arch`` (``None`` for ``scratch``)."""
    arch_spec(arch)
    if source == "scratch":
        return None
    if source.startswith("file:"):
        path = source[len("file:"):]
        conv = convert_weights(path, arch)
        record = WeightsRecord(name=f"file:{Path(path).name}", arch=arch, format=conv.format,
                               preprocessing=conv.preprocessing.to_dict(), sha256=sha256_file(path),
                               source_file=Path(path).name, source_sha256=sha256_file(path),
                               arch_options=conv.arch_options,
                               provenance={"preprocessing_reason": conv.preprocessing_reason, **conv.provenance})
        return ResolvedWeights(record, conv.state_dict)
    if source.startswith("run:"):
        return _resolve_run(source[len("run:"):], arch)
    record_path = _paths(source, arch, home)[1] if _NAME_RE.match(source) else None
    if record_path is None or not record_path.exists():
        other = [r.arch for r in list_weights(home) if r.name == source]
        detail = (f"weights {source!r} exist for {', '.join(other)}, not for {arch}" if other
                  else f"unknown weights source {source!r}")
        raise WeightsError(f"{detail}; known sources: {_known_sources(home)}")
    try:
        record = WeightsRecord.from_dict(json.loads(record_path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(f"{record_path}: damaged weights record ({exc})") from None
    state_path = registry_dir(home) / record.file
    try:
        data = state_path.read_bytes()  # read once: the bytes hashed are the bytes loaded
    except OSError:
        raise WeightsError(f"weights {source!r} for {arch}: {state_path} is missing; import the file again") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != record.sha256:
        raise WeightsError(f"weights {source!r} for {arch}: sha256 mismatch: {state_path} has {actual}, its record "
                           f"says {record.sha256} (the file changed after import); import the source again")
    return ResolvedWeights(record, _plain_state_dict(safe_torch_load(state_path, data), state_path))


def _resolve_run(run_id: str, arch: str) -> ResolvedWeights:
    """The checkpoint artifact of an MLflow run (tracking URI from ``medxfer.tracking``)."""
    from ..tracking import RunNotFound, download_run_artifact

    with tempfile.TemporaryDirectory(prefix="medxfer-run-") as tmp:
        try:
            local = download_run_artifact(run_id, CHECKPOINT_ARTIFACT, tmp)
        except RunNotFound as exc:
            raise WeightsError(str(exc)) from None
        try:
            conv = convert_weights(local, arch, "medxfer")
        except WeightsError as exc:
            raise WeightsError(f"run:{run_id}: {str(exc).replace(str(local), CHECKPOINT_ARTIFACT)}") from None
        sha = sha256_file(local)
    record = WeightsRecord(name=f"run:{run_id}", arch=arch, format="medxfer", preprocessing=conv.preprocessing.to_dict(),
                           sha256=sha, source_file=Path(CHECKPOINT_ARTIFACT).name, source_sha256=sha,
                           arch_options=conv.arch_options, provenance={"run_id": run_id, **conv.provenance})
    return ResolvedWeights(record, conv.state_dict)


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_dict(encoder: nn.Module, preprocessing: Preprocessing | None = None,
                    arch_options: dict[str, Any] | None = None, head: dict[str, torch.Tensor] | None = None,
                    provenance: dict[str, Any] | None = None) -> dict:
    """A medxfer checkpoint: tensors, strings and numbers only, so ``weights_only=True`` loads it.

    ``preprocessing`` and ``arch_options`` default to what the encoder was created with
    (:func:`~medxfer.models.create_encoder` sets them), so a ``run:`` reload sees the same input
    normalisation and BatchNorm eps.
    """
    if preprocessing is None:
        preprocessing = getattr(encoder, "preprocessing", None)
        if preprocessing is None:
            raise ValueError("the encoder carries no preprocessing record: pass preprocessing=")
    record = getattr(encoder, "weights_record", None)
    if arch_options is None:
        arch_options = dict(record.arch_options) if record is not None else {}
    base = {"initial_weights": record.name, "initial_weights_sha256": record.sha256} if record is not None else {}
    if getattr(encoder, "stem_adaptation", None):
        base["stem_adaptation"] = encoder.stem_adaptation
    return {CHECKPOINT_MARKER: 1, "arch": encoder.arch, "in_channels": int(encoder.in_channels),
            "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in (head or {}).items()},
            "preprocessing": preprocessing.to_dict(), "arch_options": dict(arch_options),
            "provenance": {"medxfer_version": __version__, **base, **(provenance or {})}}


def save_checkpoint(path: str | os.PathLike, encoder: nn.Module, preprocessing: Preprocessing | None = None,
                    arch_options: dict[str, Any] | None = None, head: dict[str, torch.Tensor] | None = None,
                    provenance: dict[str, Any] | None = None) -> Path:
    """Write :func:`checkpoint_dict` atomically; returns the path."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint_dict(encoder, preprocessing, arch_options, head, provenance), buffer)
    _atomic_write(path, buffer.getvalue())
    return path
