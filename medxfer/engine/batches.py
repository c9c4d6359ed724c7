"""Batches: moving them to the device the way GPUs like them, and reading a key of every sample."""
from __future__ import annotations

import torch


def prepare_batch(batchdata: dict, device: torch.device | str | None = None, non_blocking: bool = False,
                  **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI ``prepare_batch``: image and label to ``device``; on CUDA the image goes channels-last
    (channels-last-3d for volumes: faster convolutions with cuDNN and tensor cores), and copies are
    non-blocking from pinned memory."""
    image, label = batchdata["image"], batchdata["label"]
    device = torch.device(device) if device is not None else image.device
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    fmt = {"memory_format": formats[image.ndim]} if device.type == "cuda" and image.ndim in formats else {}
    return (image.to(device=device, non_blocking=non_blocking, **fmt),
            label.to(device=device, non_blocking=non_blocking))


def batch_values(batch, key: str) -> list:
    """``key`` of every sample of a batch, collated (a dict of lists / tensors) or decollated (a list of
    sample dicts, as MONAI's engines leave ``engine.state.batch`` after an iteration); tensors as numbers."""
    if isinstance(batch, dict):
        values = batch[key]
        return values.tolist() if hasattr(values, "tolist") else list(values)
    return [b[key].item() if hasattr(b[key], "item") else b[key] for b in batch]
