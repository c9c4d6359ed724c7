"""The medxfer checkpoint: an encoder's weights with what they need to be reused (format ``medxfer``).

Tensors, strings and numbers only, so ``torch.load(weights_only=True)`` reads it. Training runs
write one (the engine logs it to MLflow, where the ``run:RUN_ID`` source finds it); it can also
be imported like any other weights file.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import __version__
from ...core.files import atomic_write
from ..preprocessing import Preprocessing
from .errors import WeightsError
from .loading import safe_torch_load

CHECKPOINT_MARKER = "medxfer_checkpoint"


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a medxfer checkpoint (it carries :data:`CHECKPOINT_MARKER`)."""
    return isinstance(obj, dict) and CHECKPOINT_MARKER in obj


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
    buffer = io.BytesIO()
    torch.save(checkpoint_dict(encoder, preprocessing, arch_options, head, provenance), buffer)
    return atomic_write(Path(path), buffer.getvalue(), mode_bits=0o644)


def read_checkpoint(path: str | os.PathLike, arch: str) -> dict[str, Any]:
    """The checkpoint in ``path``, checked to be a medxfer checkpoint of an ``arch`` encoder with its
    ``encoder`` state and ``preprocessing`` record."""
    obj = safe_torch_load(path)
    if not is_checkpoint(obj):
        raise WeightsError(f"{path}: not a medxfer checkpoint (no {CHECKPOINT_MARKER!r} entry)")
    if obj.get("arch") != arch:
        raise WeightsError(f"{path}: the checkpoint holds a {obj.get('arch')} encoder, not {arch}")
    lacking = [k for k in ("encoder", "preprocessing") if not isinstance(obj.get(k), dict)]
    if lacking:
        raise WeightsError(f"{path}: damaged medxfer checkpoint (no {', '.join(lacking)})")
    return obj
