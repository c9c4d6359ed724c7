"""Loading tensors safely and strictly: ``torch.load(weights_only=True)``, strict state-dict loading,
and fitting the first convolution to the input's channel count.

Every load is strict: a missing, unexpected or mis-shaped key is an error listing the keys, except
the layers the caller names (the head).
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any, Iterable

import torch
from torch import nn

from ..preprocessing import Preprocessing
from .errors import WeightsError


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


def plain_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
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


def name_listing(label: str, names: Iterable[str], limit: int = 10) -> str:
    """``label (N): a, b, c … and M more`` for an error message; ``""`` when there are none."""
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
        parts = [p for p in (name_listing("missing keys", missing), name_listing("unexpected keys", unexpected),
                             name_listing("shape mismatches (file vs encoder)", mismatched)) if p]
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
    ``stem_key`` and ``stem_norm`` are the arch's :attr:`ArchSpec.stem_weight` and ``stem_norm``.
    """
    weight = state.get(stem_key)
    if weight is None or weight.shape[1] == in_channels:
        return state, "as trained"
    out = dict(state)
    channels = weight.shape[1]
    per_channel = (1, channels) + (1,) * (weight.ndim - 2)  # 2D (O, I, kH, kW) and 3D (O, I, kD, kH, kW) stems
    if in_channels == 1:
        if preprocessing is None or len(preprocessing.mean) != channels:
            out[stem_key] = weight.sum(dim=1, keepdim=True)
            return out, f"rgb-summed: {stem_key} summed over its {channels} input channels"
        mean = torch.tensor(preprocessing.mean, dtype=weight.dtype)
        std = torch.tensor(preprocessing.std, dtype=weight.dtype)
        scale = (std.mean() / std).reshape(per_channel)
        out[stem_key] = (weight * scale).sum(dim=1, keepdim=True)
        offset = ((mean.mean() - mean) / std).reshape(per_channel)
        delta = preprocessing.post_scale * (weight * offset).sum(dim=tuple(range(1, weight.ndim)))
        if stem_norm is not None:
            target = f"{stem_norm}.running_mean"
            out[target] = state[target] - delta
        else:
            target = stem_key.rsplit(".", 1)[0] + ".bias"
            out[target] = state[target] + delta
        return out, (f"rgb-summed: {stem_key} summed over its {channels} input channels, weighted by "
                     f"mean(std)/std; the mean offset folded into {target}")
    if channels == 1:
        out[stem_key] = weight.repeat(1, in_channels, *[1] * (weight.ndim - 2)) / in_channels
        return out, f"gray-repeated: {stem_key} repeated over {in_channels} channels and divided by {in_channels}"
    raise WeightsError(f"the weights' first convolution takes {channels} channels; cannot adapt it to {in_channels}")
