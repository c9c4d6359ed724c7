"""The frozen-encoder feature cache: computed once, reused by every head on that encoder, recomputed when
the image or the cache file changes, and giving the same predictions as the full network."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil

import pytest
import torch

from medxfer.engine.features import cached_features, extractor_key, predict_features
from medxfer.engine.predict import manifest_items
from medxfer.models import create_classifier

SIZE, CHANNELS = 32, 1


@pytest.fixture
def items(dental_cohort, tmp_path):
    """Three panoramic items whose image files are private copies (the tests touch and replace them)."""
    chosen = manifest_items(dental_cohort.manifest, ["PX"])[:3]
    (tmp_path / "images").mkdir()
    for item in chosen:
        copy_path = tmp_path / "images" / os.path.basename(item["image_path"])
        shutil.copy2(item["image_path"], copy_path)
        item["image"] = item["image_path"] = str(copy_path)
        item["label"] = 0
    return chosen


def _frozen(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return create_classifier("resnet18", "scratch", num_classes=2, in_channels=CHANNELS, dropout=dropout,
                             freeze="all")


def _counting(network):
    """Count the items whose features the network actually computes."""
    calls = []
    original = network.features

    def features(x):
        calls.append(int(x.shape[0]))
        return original(x)

    network.features = features
    return calls


def _fill(network, items, cache_dir):
    return cached_features(network, items, SIZE, CHANNELS, cache_dir, "cpu", batch_size=2)


def test_features_are_computed_once_and_shared_by_every_head(items, tmp_path):
    """A second fill computes nothing; another head (other dropout, other weights) on the same frozen encoder
    reads the same features; the network's training mode is left as it was."""
    network = _frozen()
    calls = _counting(network)
    network.train()
    first = _fill(network, items, tmp_path / "cache")
    assert sum(calls) == 3 and network.training
    assert set(first) == {i["item_id"] for i in items}
    assert all(f.shape == (512,) and torch.isfinite(f).all() for f in first.values())
    assert len(list((tmp_path / "cache").glob("*/*.pt"))) == 3

    calls.clear()
    again = _fill(network, items, tmp_path / "cache")
    assert calls == []
    other_head = copy.deepcopy(network)
    other_head.dropout.p = 0.5
    torch.nn.init.normal_(other_head.head.weight)
    other_calls = _counting(other_head)
    shared = _fill(other_head, items, tmp_path / "cache")
    assert other_calls == []
    for item_id, f in first.items():
        assert torch.equal(again[item_id], f) and torch.equal(shared[item_id], f)


def test_a_changed_image_file_is_recomputed(items, tmp_path):
    """A re-ingested image (new content, or only a new modification time) is computed again, not read stale."""
    network = _frozen()
    calls = _counting(network)
    before = _fill(network, items, tmp_path / "cache")
    a, b = items[0], items[1]
    shutil.copyfile(b["image_path"], a["image_path"])  # item a's file now holds b's image
    st = os.stat(a["image_path"])
    os.utime(a["image_path"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    calls.clear()
    after = _fill(network, items, tmp_path / "cache")
    assert sum(calls) == 1
    assert torch.allclose(after[a["item_id"]], before[b["item_id"]], atol=1e-6)
    assert not torch.allclose(after[a["item_id"]], before[a["item_id"]], atol=1e-4)
    assert torch.equal(after[items[2]["item_id"]], before[items[2]["item_id"]])

    st = os.stat(items[2]["image_path"])  # same bytes, touched: recomputed, same features
    os.utime(items[2]["image_path"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    calls.clear()
    touched = _fill(network, items, tmp_path / "cache")
    assert sum(calls) == 1
    assert torch.allclose(touched[items[2]["item_id"]], before[items[2]["item_id"]], atol=1e-6)


def test_an_unreadable_cache_file_is_recomputed_with_a_warning(items, tmp_path, caplog):
    """A truncated or garbage cache file (a crashed writer, a foreign file) is a cache miss with a warning,
    never an error; the rewritten files are good again."""
    network = _frozen()
    calls = _counting(network)
    before = _fill(network, items, tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("*/*.pt"))
    files[0].write_bytes(files[0].read_bytes()[:40])
    files[1].write_bytes(b"not a tensor at all")
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="medxfer.engine.features"):
        after = _fill(network, items, tmp_path / "cache")
    assert sum(calls) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "recomputing" in r.getMessage()]
    assert len(warnings) == 2
    for item_id, f in before.items():
        assert torch.allclose(after[item_id], f, atol=1e-6)
    calls.clear()
    _fill(network, items, tmp_path / "cache")
    assert calls == []


def test_a_wrong_shaped_cache_entry_is_recomputed_and_replaced(items, tmp_path, caplog):
    """An entry of another shape or kind where the cache expects an item's features (another encoder's
    features copied in, a foreign file) is a miss: computed again and overwritten, so it does not
    poison every later run; the head then trains on features of the right shape."""
    network = _frozen()
    calls = _counting(network)
    before = _fill(network, items, tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("*/*.pt"))
    torch.save(torch.zeros(256), files[0])  # a narrower encoder's features
    torch.save(torch.zeros(512, 1), files[1])  # the right size, the wrong shape
    torch.save({"features": torch.zeros(512)}, files[2])  # not a tensor at all
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="medxfer.engine.features"):
        after = _fill(network, items, tmp_path / "cache")
    assert sum(calls) == 3
    assert len([r for r in caplog.records if "recomputing" in r.getMessage()]) == 3
    for item_id, f in before.items():
        assert after[item_id].shape == (512,) and torch.allclose(after[item_id], f, atol=1e-6)
    for path in files:  # replaced on disk
        assert torch.load(path, weights_only=True).shape == (512,)
    calls.clear()
    again = _fill(network, items, tmp_path / "cache")
    assert calls == [] and all(torch.equal(again[k], after[k]) for k in after)
    assert predict_features(network, items, again, "cpu").shape == (3, 2)


def test_a_truncated_cache_entry_is_replaced_on_disk(items, tmp_path):
    """A truncated entry (a writer killed mid-write on a file system without atomic rename) is rewritten
    whole by the next fill, so later runs read it."""
    network = _frozen()
    calls = _counting(network)
    _fill(network, items, tmp_path / "cache")
    path = sorted((tmp_path / "cache").glob("*/*.pt"))[0]
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    calls.clear()
    _fill(network, items, tmp_path / "cache")
    assert sum(calls) == 1
    assert torch.load(path, weights_only=True).shape == (512,)


@pytest.mark.parametrize("freeze", ["none", "top:1"])
def test_an_encoder_that_trains_is_refused(items, tmp_path, freeze):
    """Features of an encoder that still learns would go stale: refused before anything is written."""
    torch.manual_seed(0)
    network = create_classifier("resnet18", "scratch", num_classes=2, in_channels=CHANNELS, freeze=freeze)
    with pytest.raises(ValueError, match="frozen encoder"):
        _fill(network, items, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_extractor_key_follows_what_decides_the_features():
    """The cache folder changes with the encoder's weights, buffers, BatchNorm eps, preprocessing, input size
    and channels, and not with the head or dropout (so heads share one cache)."""
    network = _frozen()
    key = extractor_key(network, SIZE, CHANNELS)
    assert extractor_key(_frozen(), SIZE, CHANNELS) == key  # the same seeded initialisation

    head_only = copy.deepcopy(network)
    torch.nn.init.normal_(head_only.head.weight)
    head_only.dropout.p = 0.3
    assert extractor_key(head_only, SIZE, CHANNELS) == key

    assert extractor_key(_frozen(seed=1), SIZE, CHANNELS) != key
    weight = copy.deepcopy(network)
    with torch.no_grad():
        next(weight.encoder.parameters()).view(-1)[0] += 1e-3
    assert extractor_key(weight, SIZE, CHANNELS) != key
    buffer = copy.deepcopy(network)
    bn = next(m for m in buffer.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var.mul_(2)
    assert extractor_key(buffer, SIZE, CHANNELS) != key
    eps = copy.deepcopy(network)
    eps.encoder.set_bn_eps(1e-3)
    assert extractor_key(eps, SIZE, CHANNELS) != key
    prep = copy.deepcopy(network)
    prep.encoder.preprocessing = dataclasses.replace(prep.encoder.preprocessing, post_scale=0.5)
    assert extractor_key(prep, SIZE, CHANNELS) != key
    assert extractor_key(network, SIZE * 2, CHANNELS) != key
    assert extractor_key(network, SIZE, 3) != key


def test_predictions_from_cached_features_equal_the_full_network(items, tmp_path):
    """The head on cached features gives the full network's probabilities, item by item and in item order
    (dropout off, as in evaluation, even if the network was left training)."""
    from medxfer.engine.classification import predict_items
    from medxfer.transforms.pipelines import classification_transforms

    network = _frozen(dropout=0.5)
    torch.nn.init.normal_(network.head.weight, std=0.5)
    features = _fill(network, items, tmp_path / "cache")
    network.train()
    cached = predict_features(network, items, features, "cpu", batch_size=2)
    transform = classification_transforms(SIZE, CHANNELS, network.preprocessing, augment=False)
    full = predict_items(network, items, transform, "cpu", batch_size=2)
    assert cached.shape == full.shape == (3, 2)
    assert torch.allclose(torch.from_numpy(cached), torch.from_numpy(full), atol=1e-5)
    assert abs(cached[:, 0] - cached[:, 1]).max() > 1e-3  # the head is not a constant: the check means something
    reordered = predict_features(network, items[::-1], features, "cpu")
    assert torch.allclose(torch.from_numpy(reordered), torch.from_numpy(cached[::-1].copy()), atol=1e-6)
