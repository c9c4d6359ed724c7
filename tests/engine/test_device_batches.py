"""``prepare_batch`` that finishes the image pipeline on the device: the same network input as the CPU pipeline."""
from __future__ import annotations

import torch

from medxfer.engine.batches import DevicePrepareBatch, batch_preparer, prepare_batch
from medxfer.models.preprocessing import IMAGENET
from medxfer.transforms.weights_norm import WeightsNormalize


def _batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 1, 16, 16, generator=g), "label": torch.arange(n) % 2}


def test_without_augmentation_the_device_gives_the_cpu_pipelines_input():
    batch = _batch()
    image, label = DevicePrepareBatch(IMAGENET, 3)(batch, "cpu")
    expected = torch.stack([WeightsNormalize(IMAGENET, 3)(x) for x in batch["image"]])
    torch.testing.assert_close(image, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(label, batch["label"]) and image.shape == (6, 3, 16, 16)


def test_training_batches_are_augmented_per_rank(monkeypatch):
    batch = _batch(32)
    plain = DevicePrepareBatch(IMAGENET, 3)(batch, "cpu")[0]
    first = DevicePrepareBatch(IMAGENET, 3, augment=True, seed=0)(batch, "cpu")[0]
    assert not torch.equal(first, plain)
    assert torch.equal(DevicePrepareBatch(IMAGENET, 3, augment=True, seed=0)(batch, "cpu")[0], first)  # repeatable
    monkeypatch.setenv("RANK", "1")  # another DDP rank draws other augmentations
    assert not torch.equal(DevicePrepareBatch(IMAGENET, 3, augment=True, seed=0)(batch, "cpu")[0], first)


def test_the_bundle_picks_the_cpu_or_the_device_path():
    assert batch_preparer(False) is prepare_batch
    device = batch_preparer(True, IMAGENET, 3, augment=True, seed=4)
    assert isinstance(device, DevicePrepareBatch) and device.augment is not None and device.augment.seed == 4
