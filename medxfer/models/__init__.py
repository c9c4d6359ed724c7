"""Encoders with swappable pretrained weights (``create_encoder``), their classifier and UNet.

>>> enc = create_encoder("resnet50", weights="imagenet", in_channels=1)   # doctest: +SKIP
>>> clf = create_classifier("densenet121", weights="radimagenet", num_classes=2, freeze="top:10")  # doctest: +SKIP
"""
from . import encoders3d  # noqa: F401 - registers the 3D encoders in the one registry (ARCHS)
from . import inception  # noqa: F401 - registers InceptionV3 and Inception-ResNet-v2 (Keras layout) in ARCHS
from . import classic_cnns  # noqa: F401 - registers AlexNet and VGG16 in the one registry (ARCHS)
from .classifier import Classifier, create_classifier
from .encoders import ARCHS, ArchSpec, Encoder, arch_spec, build_encoder, flexunet_name
from .factory import create_encoder, weights_params
from .freeze import FreezeSummary, apply_freeze, parameter_groups, parse_policy
from .preprocessing import PRESETS, Preprocessing, preset
from .segmenter import PLAIN_SEGMENTERS, create_segmenter, segmenter_dims
from .weights import (FORMATS, WeightsError, WeightsRecord, adapt_stem, convert_weights, import_weights, list_weights,
                      load_strict, register_source_scheme, resolve_weights, save_checkpoint)

__all__ = [
    "ARCHS", "ArchSpec", "Classifier", "Encoder", "FORMATS", "FreezeSummary", "PLAIN_SEGMENTERS", "PRESETS",
    "Preprocessing", "WeightsError", "WeightsRecord", "adapt_stem", "apply_freeze", "arch_spec", "build_encoder",
    "convert_weights", "create_classifier", "create_encoder", "create_segmenter", "flexunet_name", "import_weights",
    "list_weights", "load_strict", "parameter_groups", "parse_policy", "preset", "register_source_scheme",
    "resolve_weights", "save_checkpoint", "segmenter_dims", "weights_params",
]
