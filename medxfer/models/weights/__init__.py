"""Weights of encoders: records, file formats, strict loading, the on-disk registry and weights sources.

A *weights source* names where an encoder's weights come from (``../shared/DESIGN.md``):
``scratch``, an imported ``NAME``, ``file:PATH``, or any ``SCHEME:REF`` registered with
:func:`register_source_scheme` (``run:RUN_ID`` comes with :mod:`medxfer.engine`). Every load checks
sha256, uses ``torch.load(..., weights_only=True)`` only, and is strict.

- :mod:`.record` — :class:`WeightsRecord` (what is known about a set of weights) and provenance;
- :mod:`.formats` — format detection and conversion (:mod:`.pytorch_files`, :mod:`.keras_h5`,
  :mod:`.checkpoints`), checked by a strict load;
- :mod:`.loading` — safe ``torch.load``, strict state-dict loading, stem adaptation;
- :mod:`.registry` — ``import_weights`` / ``list_weights`` on disk (``$MEDXFER_HOME/weights``);
- :mod:`.sources` — resolution of a source string through the scheme registry;
- :mod:`.checkpoints` — the medxfer checkpoint (``save_checkpoint``).
"""
from .checkpoints import CHECKPOINT_MARKER, checkpoint_dict, read_checkpoint, save_checkpoint
from .errors import WeightsError
from .formats import FORMATS, convert_weights, default_preprocessing, detect_format
from .keras_h5 import KerasImportError
from .loading import adapt_stem, load_strict, plain_state_dict, safe_torch_load
from .record import Conversion, ResolvedWeights, WeightsRecord, conversion_record, scratch_record
from .registry import NAME_RE, import_weights, imported_record, is_weights_name, list_weights, registry_dir
from .sources import SourceResolver, register_source_scheme, resolve_weights, source_label, source_schemes

__all__ = [
    "CHECKPOINT_MARKER", "Conversion", "FORMATS", "KerasImportError", "NAME_RE", "ResolvedWeights", "SourceResolver",
    "WeightsError", "WeightsRecord", "adapt_stem", "checkpoint_dict", "conversion_record", "convert_weights",
    "default_preprocessing", "detect_format", "import_weights", "imported_record", "is_weights_name", "list_weights",
    "load_strict", "plain_state_dict", "read_checkpoint", "register_source_scheme", "registry_dir", "resolve_weights",
    "safe_torch_load", "save_checkpoint", "scratch_record", "source_label", "source_schemes",
]
