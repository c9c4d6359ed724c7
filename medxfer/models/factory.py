"""``create_encoder``: an encoder from the registry with the weights a source names."""
from __future__ import annotations

import os

from .encoders import Encoder, arch_spec
from .weights.loading import adapt_stem, load_strict
from .weights.record import scratch_record
from .weights.sources import resolve_weights


def create_encoder(arch: str, weights: str = "scratch", in_channels: int | None = None,
                   home: str | os.PathLike | None = None) -> Encoder:
    """Build ``arch`` and load ``weights`` (``scratch``, ``NAME``, ``file:PATH``, ``run:ID`` …) strictly.

    The returned encoder carries ``weights_record`` (a :class:`WeightsRecord`), ``preprocessing``
    (the :class:`Preprocessing` its inputs need, for ``in_channels``) and ``stem_adaptation``
    (how the first convolution was fitted to ``in_channels``). ``in_channels`` defaults to the arch's
    own (3 for the 2D encoders, 1 for the 3D ones).
    """
    in_channels = arch_spec(arch).in_channels if in_channels is None else in_channels
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    return load_weights(arch_spec(arch).build(in_channels), weights, home)


def load_weights(encoder: Encoder, weights: str = "scratch", home: str | os.PathLike | None = None) -> Encoder:
    """Load the weights a source names into an already built encoder (e.g. the one inside a
    FlexibleUNet) strictly, and attach ``weights_record``, ``preprocessing`` and ``stem_adaptation``."""
    resolved = resolve_weights(weights, encoder.arch, home)
    encoder.set_bn_momentum()
    if resolved is None:
        record, note = scratch_record(encoder.arch), "random"
    else:
        record, spec = resolved.record, encoder.spec
        state, note = adapt_stem(resolved.state_dict, spec.stem_weight, encoder.in_channels,
                                 record.preprocessing_record, spec.stem_norm)
        if "bn_eps" in record.arch_options:
            encoder.set_bn_eps(float(record.arch_options["bn_eps"]))
        load_strict(encoder, state, source=f"weights {weights!r}")
    encoder.weights_record = record
    encoder.stem_adaptation = note
    encoder.preprocessing = record.preprocessing_record.for_channels(encoder.in_channels)
    return encoder


def weights_params(encoder: Encoder) -> dict[str, str]:
    """MLflow params of an encoder made by :func:`create_encoder`: the weights record (source,
    sha256, format, arch options), the stem adaptation and the preprocessing its inputs get."""
    record = encoder.weights_record
    params = {k: v for k, v in record.params().items() if not k.startswith("preprocessing.")}
    params.update({"weights.in_channels": str(encoder.in_channels),
                   "weights.stem": encoder.stem_adaptation.split(":")[0]})
    params.update(encoder.preprocessing.params())
    return params
