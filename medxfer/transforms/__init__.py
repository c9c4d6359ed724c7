"""MONAI transforms: weights-bound normalisation (modality presets join here with the bundles)."""
from .weights_norm import WeightsNormalize, WeightsNormalized

__all__ = ["WeightsNormalize", "WeightsNormalized"]
