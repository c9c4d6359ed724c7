"""The item cache: items at network size on disk, shared by runs, keyed by the item and the deterministic steps."""
from __future__ import annotations

import logging
import multiprocessing
import os
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, LoadImaged

from medxfer.engine.item_cache import (ItemCacheDataset, cached_dataset, decode, encode, item_key,
                                       split_cacheable)
from medxfer.models.preprocessing import IMAGENET, SCRATCH
from medxfer.transforms.pipelines import classification_transforms, segmentation_transforms
from medxfer.transforms.presets import LoadItemd

ENTRY = re.compile(r"^[0-9a-f]{24}\.(image|label)\.(u8n|u8|f16|f32)\.npy$")


def _item(root, i: int, modality: str, shape: tuple[int, int], rng) -> dict:
    """An ingested 2D item as ``load_cohort`` gives it (a NIfTI image and its manifest record)."""
    high = 255 if modality == "US" else 4095
    path = root / f"img{i}.nii"
    nib.save(nib.Nifti1Image(rng.integers(0, high + 1, size=shape).astype(np.uint16), np.eye(4)), path)
    return {"image": str(path), "image_path": str(path), "item_id": f"item-{i:03d}", "patient": f"pat-{i % 3}",
            "kind": "image", "fold": i % 3, "modality": modality, "body_part": "", "view": "", "laterality": "",
            "channels": 1, "shape": list(shape), "spacing": [float("nan")] * 2,
            "window_center": 2000.0 if modality == "DX" else float("nan"),
            "window_width": 3000.0 if modality == "DX" else float("nan"), "sample_id": f"item-{i:03d}",
            "slice": -1, "label": i % 2}


@pytest.fixture
def items(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    return [_item(tmp_path / "data", i, "DX", (40, 30), rng) for i in range(6)]


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images decoded (LoadItemd calls) in this process, threads included."""
    calls = {"n": 0}
    original = LoadItemd.__call__

    def counted(self, data):
        calls["n"] += 1
        return original(self, data)

    monkeypatch.setattr(LoadItemd, "__call__", counted)
    return calls


def _pipeline(size: int = 32, augment: bool = False):
    return classification_transforms(size, 1, SCRATCH, augment, on_device=True)


def test_a_second_run_decodes_nothing_and_reads_what_the_first_computed(items, tmp_path, decodes):
    cache_dir = tmp_path / "cache"
    first = ItemCacheDataset(items, _pipeline(), cache_dir)
    assert first.computed == len(items) and decodes["n"] == len(items)
    reference = [_pipeline()(dict(item))["image"] for item in items]  # the uncached pipeline
    decodes["n"] = 0

    second = ItemCacheDataset(items, _pipeline(), cache_dir, num_workers=2)
    samples = [second[i] for i in range(len(items))]
    assert second.computed == 0 and decodes["n"] == 0  # hit: no decode, no resize
    for sample, ref, item in zip(samples, reference, items):
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (1, 32, 32)
        torch.testing.assert_close(sample["image"], ref, atol=2.5e-4, rtol=0)  # float16 entries
        assert int(sample["label"]) == item["label"] and sample["item_id"] == item["item_id"]
    # one file per item and array, named by digests only: no item id or patient pseudonym in a name
    entries = sorted(p.name for p in second.cache.folder.iterdir() if p.name != "pipeline.json")
    assert len(entries) == len(items) and all(ENTRY.match(name) for name in entries)
    assert not any(tag in name for name in entries for tag in ("item-", "pat-", "img"))


def test_eight_bit_images_at_network_size_come_back_exactly(tmp_path):
    """Values that are k / 255 (an 8-bit ultrasound frame that needs no resizing) are stored as uint8."""
    rng = np.random.default_rng(1)
    us = [_item(tmp_path, i, "US", (32, 32), rng) for i in range(3)]
    dataset = ItemCacheDataset(us, _pipeline(32), tmp_path / "cache")
    for i, item in enumerate(us):
        assert torch.equal(dataset[i]["image"], _pipeline(32)(dict(item))["image"])
    assert all(".image.u8n." in name for name in os.listdir(dataset.cache.folder) if name.endswith(".npy"))


def test_the_cache_key_follows_the_network_size_the_item_and_its_file(items, tmp_path, decodes):
    cache_dir = tmp_path / "cache"
    at32 = ItemCacheDataset(items, _pipeline(32), cache_dir)
    at48 = ItemCacheDataset(items, _pipeline(48), cache_dir)
    assert at32.cache.folder != at48.cache.folder and at48.computed == len(items)
    assert at48[0]["image"].shape == (1, 48, 48)
    # normalisation and augmentation are not cached: another encoder's run shares the entries
    imagenet = ItemCacheDataset(items, classification_transforms(32, 1, IMAGENET, True), cache_dir)
    assert imagenet.cache.folder == at32.cache.folder and imagenet.computed == 0
    normalised = imagenet[0]["image"]  # ImageNet statistics applied after the cache: no longer in [0, 1]
    assert normalised.shape == (1, 32, 32) and float(normalised.min()) < 0

    # the preset's metadata is part of the item; the label and the fold are not
    assert item_key({**items[0], "window_width": 1000.0}) != item_key(items[0])
    assert item_key({**items[0], "label": 1, "fold": 2}) == item_key(items[0])
    os.utime(items[1]["image_path"], ns=(0, 10**9))  # a re-ingested file: new size or mtime
    decodes["n"] = 0
    again = ItemCacheDataset(items, _pipeline(32), cache_dir)
    assert again.computed == 1 and decodes["n"] == 1


def _fill(items, cache_dir, barrier, results) -> None:
    barrier.wait()
    dataset = ItemCacheDataset(items, _pipeline(), cache_dir, num_workers=2)
    results.put(float(sum(float(dataset[i]["image"].sum()) for i in range(len(items)))))


def test_concurrent_runs_fill_one_cache_safely(items, tmp_path):
    """Two runs (processes) filling the same entries at once: both finish, every entry is whole."""
    cache_dir = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_fill, args=(items, cache_dir, barrier, results)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    sums = [results.get(timeout=5), results.get(timeout=5)]
    assert sums[0] == sums[1]
    later = ItemCacheDataset(items, _pipeline(), cache_dir)
    assert later.computed == 0
    names = os.listdir(later.cache.folder)
    assert not [n for n in names if n.endswith(".tmp")]  # no temporary file left behind
    for i in range(len(items)):
        later[i]


def test_a_corrupt_entry_is_computed_again(items, tmp_path, caplog, decodes):
    cache_dir = tmp_path / "cache"
    ItemCacheDataset(items, _pipeline(), cache_dir)
    dataset = ItemCacheDataset(items, _pipeline(), cache_dir)
    truncated = dataset.cache.folder / dataset._files[0]["image"]
    truncated.write_bytes(truncated.read_bytes()[:100])  # a copy cut short
    foreign = dataset.cache.folder / dataset._files[1]["image"]
    np.save(foreign.open("wb"), np.zeros((2, 2)))  # not the array its name says
    decodes["n"] = 0
    with caplog.at_level(logging.WARNING, logger="medxfer.engine.item_cache"):
        repaired = [dataset[0]["image"], dataset[1]["image"]]
    assert decodes["n"] == 2 and "recomputing" in caplog.text
    for i, image in enumerate(repaired):
        torch.testing.assert_close(image, _pipeline()(dict(items[i]))["image"], atol=2.5e-4, rtol=0)
    decodes["n"] = 0
    fresh = ItemCacheDataset(items, _pipeline(), cache_dir)
    assert [fresh[i]["image"].shape for i in (0, 1)] == [(1, 32, 32)] * 2 and decodes["n"] == 0  # replaced on disk


def test_masks_are_cached_with_their_images(tmp_path):
    rng = np.random.default_rng(2)
    item = _item(tmp_path, 0, "DX", (40, 40), rng)
    mask = tmp_path / "mask0.nii.gz"
    nib.save(nib.Nifti1Image((rng.random((40, 40)) > 0.7).astype(np.uint8), np.eye(4)), mask)
    item["label"] = str(mask)
    pipeline = segmentation_transforms(32, 1, SCRATCH, False)
    dataset = ItemCacheDataset([item], pipeline, tmp_path / "cache")
    assert dataset.cache.data_keys == ["image", "label"]
    sample = dataset[0]
    reference = pipeline(dict(item))
    assert torch.equal(sample["label"], reference["label"])  # {0, 1} masks are exact
    # float16 entries, then the scratch normalisation (2x - 1) doubles their rounding
    torch.testing.assert_close(sample["image"], reference["image"], atol=5e-4, rtol=0)
    assert any(".label.u8" in n for n in os.listdir(dataset.cache.folder))
    os.utime(mask, ns=(0, 10**9))  # the mask file is part of the item's identity
    assert item_key(item, ["image", "label"]) != dataset._keys[0]


def test_volumes_multiview_and_an_unwritable_folder_keep_the_memory_cache(items, tmp_path, caplog):
    volumes = Compose([LoadImaged("image")])
    assert split_cacheable(volumes)[0] == []
    assert isinstance(cached_dataset([], volumes, tmp_path / "cache"), CacheDataset)
    assert isinstance(cached_dataset(items, _pipeline(), None), CacheDataset)  # item_cache: false
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="medxfer.engine.item_cache"):
        fallback = cached_dataset(items, _pipeline(), blocker / "cache")
    assert isinstance(fallback, CacheDataset) and "caching in memory" in caplog.text
    assert fallback[0]["image"].shape == (1, 32, 32)


@pytest.mark.parametrize("values, encoding", [
    (np.arange(256, dtype=np.float32).reshape(16, 16) / np.float32(255.0), "u8n"),
    (np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32), "u8n"),
    (np.array([[0.0, 2.0], [7.0, 0.0]], dtype=np.float32), "u8"),
    (np.random.default_rng(3).random((8, 8), dtype=np.float32), "f16"),
    (np.array([[-1e6, 3.0]], dtype=np.float32), "f32"),
])
def test_the_smallest_encoding_that_keeps_the_values(values, encoding):
    name, stored = encode(values)
    assert name == encoding
    back = decode(name, stored).numpy()
    if encoding == "f16":
        assert np.abs(back - values).max() <= 2.5e-4
    else:
        assert np.array_equal(back, values)
