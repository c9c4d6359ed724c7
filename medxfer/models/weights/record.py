"""What is known about a set of weights: its record, the results of converting and resolving it, provenance.

A :class:`WeightsRecord` travels with every encoder (``encoder.weights_record``), is stored as
``$MEDXFER_HOME/weights/NAME/ARCH.json`` for imported weights and is logged as MLflow params.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import torch

from ... import __version__
from ..preprocessing import SCRATCH, Preprocessing


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
        """The record as stored in ``ARCH.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WeightsRecord":
        """Inverse of :meth:`to_dict`; unknown keys (a newer medxfer's) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def preprocessing_record(self) -> Preprocessing:
        """The input preprocessing these weights expect."""
        return Preprocessing.from_dict(self.preprocessing)

    def params(self) -> dict[str, str]:
        """Flat MLflow params: ``weights.*`` and ``preprocessing.*``."""
        out = {"weights.name": self.name, "weights.arch": self.arch, "weights.format": self.format,
               "weights.sha256": self.sha256, "weights.source_sha256": self.source_sha256,
               "weights.source_file": self.source_file}
        out.update({f"weights.{k}": str(v) for k, v in self.arch_options.items()})
        out.update(self.preprocessing_record.params())
        return {k: v for k, v in out.items() if v != ""}


@dataclass
class Conversion:
    """A state dict in the encoder's layout and what the conversion decided."""

    state_dict: dict[str, torch.Tensor]
    format: str
    preprocessing: Preprocessing
    preprocessing_reason: str
    arch_options: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResolvedWeights:
    """A weights record with its state dict, ready for :func:`~medxfer.models.weights.load_strict`."""

    record: WeightsRecord
    state_dict: dict[str, torch.Tensor]


def scratch_record(arch: str) -> WeightsRecord:
    """The record of a randomly initialised encoder."""
    return WeightsRecord(name="scratch", arch=arch, format="scratch", preprocessing=SCRATCH.to_dict(),
                         provenance={"note": "random initialisation"})


def import_provenance(conversion: Conversion, note: str = "") -> dict[str, Any]:
    """The provenance of weights imported now: when, by which medxfer, why this preprocessing, and
    what the conversion found (source layout, skipped head …)."""
    provenance = {"imported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "medxfer_version": __version__, "preprocessing_reason": conversion.preprocessing_reason,
                  **conversion.provenance}
    if note:
        provenance["note"] = note
    return provenance


def conversion_record(name: str, arch: str, conversion: Conversion, sha256: str, source_file: str,
                      provenance: dict[str, Any]) -> WeightsRecord:
    """The record of weights converted on the fly (``file:``, ``run:`` …) from a source whose sha256
    is ``sha256`` (nothing is stored: it is the record's ``sha256`` and ``source_sha256``);
    ``provenance`` comes first, then what the conversion found."""
    return WeightsRecord(name=name, arch=arch, format=conversion.format,
                         preprocessing=conversion.preprocessing.to_dict(), sha256=sha256, source_file=source_file,
                         source_sha256=sha256, arch_options=conversion.arch_options,
                         provenance={**provenance, **conversion.provenance})
