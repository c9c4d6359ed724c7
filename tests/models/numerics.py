"""Small numeric helpers of the weights tests."""
from __future__ import annotations

import torch


def random_images(seed: int = 0, size: int = 64, channels: int = 3) -> torch.Tensor:
    """A reproducible batch of two random images."""
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest value of ``b``."""
    return float((a - b).abs().max() / b.abs().max())
