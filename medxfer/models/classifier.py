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


def create_classifier(arch: str, weights: str = "scratch", num_classes: int = 2, in_channels: int = 3,
                      dropout: float = 0.0, freeze: str = "none",
                      home: str | os.PathLike | None = None) -> Classifier:
    """One line from names to a classifier: encoder + weights source + freeze policy."""
    encoder = create_encoder(arch, weights, in_channels, home)
    model = Classifier(encoder, num_classes, dropout)
    model.freeze_summary = apply_freeze(encoder, freeze)
    return model
