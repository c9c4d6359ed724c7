"""Image classifier: a registry encoder, global average pooling, dropout and a linear head."""
from __future__ import annotations

import os

import torch
from torch import nn

from .encoders import Encoder
from .factory import create_encoder
from .freeze import apply_freeze

HEAD_PREFIX = "head"


class Classifier(nn.Module):
    """``head(dropout(pool(encoder(x)[-1])))``; logits of shape (B, num_classes)."""

    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.encoder = encoder
        self.pool = nn.AdaptiveAvgPool2d(1)
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


def create_classifier(arch: str, weights: str = "scratch", num_classes: int = 2, in_channels: int = 3,
                      dropout: float = 0.0, freeze: str = "none",
                      home: str | os.PathLike | None = None, views: list[str] | None = None,
                      fusion: str = "late") -> Classifier:
    """One line from names to a classifier: encoder + weights source + freeze policy.

    With ``views`` (e.g. ``["CC", "MLO"]``) and ``fusion="late"`` the encoder is shared across views
    (:class:`MultiViewClassifier`); ``fusion="early"`` reads the views as the channels of one
    3-channel image (see :mod:`medxfer.engine.multiview`)."""
    from ..engine.multiview import check_views, network_channels

    views = check_views(views, fusion)
    encoder = create_encoder(arch, weights, network_channels(views, fusion, in_channels), home)
    if views and fusion == "late":
        model: Classifier = MultiViewClassifier(encoder, num_classes, len(views), dropout)
    else:
        model = Classifier(encoder, num_classes, dropout)
    model.views, model.fusion = tuple(views), (fusion if views else None)
    model.freeze_summary = apply_freeze(encoder, freeze)
    return model
