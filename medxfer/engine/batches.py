"""Batches: moving them to the device the way GPUs like them (finishing the image pipeline there, when
augmentation and normalisation run on the device), and reading a key of every sample."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from ..models.preprocessing import Preprocessing
from ..transforms.device_augment import DeviceAugment, DeviceNormalize


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


class DevicePrepareBatch:
    """MONAI ``prepare_batch`` for batches of images in [0, 1] that the loader leaves un-augmented and
    un-normalised: on the device, :class:`~medxfer.transforms.device_augment.DeviceAugment` (when
    ``augment``), then :class:`~medxfer.transforms.device_augment.DeviceNormalize`; channels-last on
    CUDA. No value is read back to the host.

    The augmentation's generator is seeded with ``seed`` plus the process's DDP ``RANK``, so that ranks
    draw different augmentations and a run is repeatable."""

    def __init__(self, preprocessing: Preprocessing | dict, in_channels: int, augment: bool = False,
                 seed: int = 0) -> None:
        self.normalize = DeviceNormalize(preprocessing, in_channels)
        rank = int(os.environ.get("RANK", "0") or 0)
        self.augment = DeviceAugment(seed=int(seed) + rank) if augment else None

    def __call__(self, batchdata: dict, device: torch.device | str | None = None, non_blocking: bool = False,
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The network input and the labels of ``batchdata`` on ``device`` (MONAI's ``prepare_batch`` call)."""
        image, label = batchdata["image"], batchdata["label"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image  # a MetaTensor's meta is not needed
        if image.ndim != 4:
            raise ValueError(f"device-side augmentation and normalisation take batches of 2D images (B, C, H, W), "
                             f"not shape {tuple(image.shape)}: set augment_on_device: false for this bundle")
        device = torch.device(device) if device is not None else image.device
        x = image.to(device=device, non_blocking=non_blocking).float()
        if self.augment is not None:
            x = self.augment(x)
        x = self.normalize(x)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, label.to(device=device, non_blocking=non_blocking)


def batch_preparer(device_side: bool, preprocessing: Preprocessing | dict | None = None, in_channels: int = 1,
                   augment: bool = False, seed: int = 0) -> Callable[..., Any]:
    """The bundles' ``prepare_batch``: a :class:`DevicePrepareBatch` when augmentation and normalisation
    run on the device (``device_side``), else :func:`prepare_batch` (the loader did both)."""
    if not device_side:
        return prepare_batch
    if preprocessing is None:
        raise ValueError("device-side normalisation needs the weights' preprocessing record")
    return DevicePrepareBatch(preprocessing, in_channels, augment=augment, seed=seed)


def batch_values(batch, key: str) -> list:
    """``key`` of every sample of a batch, collated (a dict of lists / tensors) or decollated (a list of
    sample dicts, as MONAI's engines leave ``engine.state.batch`` after an iteration); tensors as numbers."""
    if isinstance(batch, dict):
        values = batch[key]
        return values.tolist() if hasattr(values, "tolist") else list(values)
    return [b[key].item() if hasattr(b[key], "item") else b[key] for b in batch]
