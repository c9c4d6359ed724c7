"""Image classifier: a registry encoder, global average pooling, dropout and a linear head."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import MedxferError
from .encoders import Encoder, arch_spec
from .factory import create_encoder
from .freeze import apply_freeze

FUSIONS = ("late", "early")
MAX_EARLY_VIEWS = 3


class MultiViewError(MedxferError, ValueError):
    """Unusable multi-view settings or an inconsistent group."""


def check_views(views: Sequence[str] | None, fusion: str = "late") -> list[str]:
    """Validated view names (upper case, distinct) for ``fusion``; ``[]`` for single-view."""
    if not views:
        return []
    if isinstance(views, str):
        raise MultiViewError(f"views is a list of view names, e.g. [CC, MLO]; got {views!r}")
    names = [str(v).strip().upper() for v in views]
    if len(set(names)) != len(names) or any(not v for v in names):
        raise MultiViewError(f"views must be distinct, non-empty names; got {list(views)}")
    if fusion not in FUSIONS:
        raise MultiViewError(f"fusion must be one of {list(FUSIONS)}; got {fusion!r}")
    if fusion == "early" and len(names) > MAX_EARLY_VIEWS:
        raise MultiViewError(f"early fusion puts the views in the 3 channels of one image: at most "
                             f"{MAX_EARLY_VIEWS} views, got {len(names)} (use fusion: late)")
    return names


def network_channels(views: Sequence[str] | None, fusion: str, in_channels: int) -> int:
    """Input channels of the network: 3 for early fusion (views as channels), else ``in_channels``."""
    return 3 if views and fusion == "early" else int(in_channels)


def view_channels(views: Sequence[str] | None, fusion: str, in_channels: int) -> int:
    """Channels each view is read with: gray for early fusion, else ``in_channels``."""
    return 1 if views and fusion == "early" else int(in_channels)


class Classifier(nn.Module):
    """``head(dropout(pool(encoder(x)[-1])))``; logits of shape (B, num_classes)."""

    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.encoder = encoder
        self.pool = nn.AdaptiveAvgPool3d(1) if encoder.spec.spatial_dims == 3 else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.feature_channels[-1], num_classes)
        self.views: tuple[str, ...] = ()  # multi-view samples (medxfer.engine.multiview)
        self.fusion: str | None = None

    @property
    def preprocessing(self):
        """The encoder's input preprocessing record (see :mod:`medxfer.models.preprocessing`)."""
        return self.encoder.preprocessing

    @property
    def weights_record(self):
        """Where the encoder's weights came from."""
        return self.encoder.weights_record

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled deepest features (B, C): what a frozen-encoder feature cache stores."""
        return torch.flatten(self.pool(self.encoder(x)[-1]), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class MultiViewClassifier(Classifier):
    """Late fusion of ``num_views`` views (input (B, V, C, H, W)): one shared encoder, the pooled
    features of the views concatenated in view order, one linear head on (B, V × C_feat)."""

    def __init__(self, encoder: Encoder, num_classes: int, num_views: int, dropout: float = 0.0) -> None:
        super().__init__(encoder, num_classes, dropout)
        if num_views < 2:
            raise ValueError("a multi-view classifier needs at least 2 views")
        self.num_views = num_views
        self.head = nn.Linear(encoder.feature_channels[-1] * num_views, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.num_views:
            raise ValueError(f"expected (batch, {self.num_views} views, channels, H, W), got {tuple(x.shape)}")
        pooled = torch.flatten(self.pool(self.encoder(x.flatten(0, 1))[-1]), 1)
        return pooled.reshape(x.shape[0], -1)


def create_classifier(arch: str, weights: str = "scratch", num_classes: int = 2, in_channels: int | None = None,
                      dropout: float = 0.0, freeze: str = "none",
                      home: str | os.PathLike | None = None, views: list[str] | None = None,
                      fusion: str = "late") -> Classifier:
    """One line from names to a classifier: encoder + weights source + freeze policy.

    With ``views`` (e.g. ``["CC", "MLO"]``) and ``fusion="late"`` the encoder is shared across views
    (:class:`MultiViewClassifier`); ``fusion="early"`` reads the views as the channels of one
    3-channel image (see :mod:`medxfer.engine.multiview` for how samples are assembled).
    ``in_channels`` defaults to the arch's own (3 for the 2D encoders, 1 for the 3D ones)."""
    views = check_views(views, fusion)
    in_channels = arch_spec(arch).in_channels if in_channels is None else in_channels
    encoder = create_encoder(arch, weights, network_channels(views, fusion, in_channels), home)
    if views and fusion == "late":
        model: Classifier = MultiViewClassifier(encoder, num_classes, len(views), dropout)
    else:
        model = Classifier(encoder, num_classes, dropout)
    model.views, model.fusion = tuple(views), (fusion if views else None)
    model.freeze_summary = apply_freeze(encoder, freeze)
    return model
