"""Frozen-encoder feature cache: with ``freeze: all`` the encoder is a fixed function, so its
pooled features of an item are computed once and every head that trains on that encoder —
other learning rates, dropouts, folds, seeds — reads them from disk.

Cache layout: ``<cache_dir>/<extractor key>/<item key>.pt``, one small tensor per item, written
atomically (write + rename), so shards on several machines can share a cache folder.

- The extractor key hashes the encoder's actual parameters and buffers (imported weights,
  ``run:`` checkpoints and seeded scratch initialisations alike), its preprocessing, the input
  size and channels, and this module's transform version.
- The item key hashes the item's metadata (image path, window, shape) and the image file's size
  and modification time, so a re-ingested image is recomputed.

What this excludes: augmentation. A cached head sees every training image as it is, each epoch;
the record says ``augment = false`` and ``feature_cache = true``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from torch import nn

from ..core.files import atomic_writer
from ..core.hashing import stable_digest
from ..transforms.pipelines import classification_transforms

log = logging.getLogger(__name__)
TRANSFORM_VERSION = 1  # bump when the deterministic image pipeline changes meaning
# labels never change an image's features; a sample's identity is its file and slice_indices
_ITEM_KEYS_IGNORED = {"label", "fold", "item_label", "label_name", "item_label_name", "sample_id", "slice"}


class FeatureHead(nn.Module):
    """The trainable part of a :class:`~medxfer.models.classifier.Classifier` on pooled features:
    ``head(dropout(x))``. It shares its modules with the classifier, so training it trains the
    classifier's head."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.dropout = classifier.dropout
        self.head = classifier.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(x))


def extractor_key(network: nn.Module, image_size: int, in_channels: int) -> str:
    """A hash of everything that decides an item's features besides the item itself."""
    h = hashlib.sha256()
    h.update(json.dumps({"arch": type(network.encoder).__name__, "image_size": int(image_size),
                         "in_channels": int(in_channels), "transform_version": TRANSFORM_VERSION,
                         "views": list(network.views), "fusion": network.fusion,
                         "preprocessing": network.preprocessing.params() if hasattr(network.preprocessing, "params")
                         else str(network.preprocessing)}, sort_keys=True, default=str).encode())
    for name, module in network.encoder.named_modules():  # eps is not in the state dict but changes outputs
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            h.update(f"{name}:eps={module.eps}".encode())
    for name, tensor in network.encoder.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:24]


def item_key(item: dict[str, Any]) -> str:
    """A hash of an item's image file and the metadata its preset reads."""
    meta = {k: v for k, v in item.items() if k not in _ITEM_KEYS_IGNORED}
    files = [v["image_path"] for v in item["views"]] if item.get("views") else [item["image_path"]]
    meta["file"] = []  # every image of a multi-view sample
    for path in files:
        try:
            st = os.stat(path)
            meta["file"].append([st.st_size, st.st_mtime_ns])
        except OSError:
            meta["file"].append(None)
    return stable_digest(meta, 24)


def _save_atomic(tensor: torch.Tensor, path: Path) -> None:
    """Write + fsync + rename, with a name unique across hosts sharing the folder (NFS)."""
    with atomic_writer(path, "wb", fsync=True) as f:
        torch.save(tensor, f)


def feature_shape(network: nn.Module) -> tuple[int, ...] | None:
    """The shape of one item's pooled features, ``(C,)``: the input size of the classifier's linear
    head (``V × C`` for late-fused views); None when the network has no linear head to tell."""
    head = getattr(network, "head", None)
    return (int(head.in_features),) if isinstance(head, nn.Linear) else None


def _load(path: Path, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """A cached feature vector, or None when absent, unreadable or not a float vector of ``shape``
    (then it is computed again and the entry replaced: a bad entry never poisons later runs)."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is a cache miss, not an error
        log.warning("feature cache: recomputing unreadable %s (%s)", path.name, str(exc).splitlines()[0][:200])
        return None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim != 1 \
            or (shape is not None and tuple(value.shape) != shape):
        found = f"tensor of shape {tuple(value.shape)}, {value.dtype}" if isinstance(value, torch.Tensor) \
            else type(value).__name__
        log.warning("feature cache: recomputing %s: it holds a %s, not features of shape %s", path.name, found,
                    shape if shape is not None else "(C,)")
        return None
    return value


@torch.no_grad()
def cached_features(network: nn.Module, items: list[dict], image_size: int, in_channels: int,
                    cache_dir: str | os.PathLike, device: torch.device | str, batch_size: int = 16,
                    num_workers: int = 0) -> dict[str, torch.Tensor]:
    """Pooled encoder features (C,) per ``sample_id`` for ``items`` (samples: 2D items, or slices of
    volumes / cines, each cached on its own): read from ``cache_dir`` where present, computed (in
    batches, eval mode) and written where not."""
    if any(p.requires_grad for p in network.encoder.parameters()):
        raise ValueError("the feature cache needs a frozen encoder (freeze: all)")
    folder = Path(cache_dir) / extractor_key(network, image_size, in_channels)
    folder.mkdir(parents=True, exist_ok=True)
    keys = {_sample_id(item): item_key(item) for item in items}
    shape = feature_shape(network)
    features = {sample_id: _load(folder / f"{key}.pt", shape) for sample_id, key in keys.items()}
    missing = [item for item in items if features[_sample_id(item)] is None]
    if missing:
        was_training = network.training
        network.to(device).eval()  # MONAI may build the datasets before the network is moved
        transform = classification_transforms(image_size, in_channels, network.preprocessing, augment=False,
                                              views=network.views, fusion=network.fusion)
        loader = DataLoader(Dataset(missing, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for batch in loader:
            feats = network.features(batch["image"].to(device)).float().cpu()
            for sample_id, f in zip(batch["sample_id"] if "sample_id" in batch else batch["item_id"], feats):
                features[sample_id] = f.clone()
                _save_atomic(features[sample_id], folder / f"{keys[sample_id]}.pt")
        network.train(was_training)
    return features


def _sample_id(item: dict) -> str:
    """A sample's cache identity: ``sample_id`` (a slice of a volume) or, for older records, ``item_id``."""
    return str(item.get("sample_id") or item["item_id"])


def feature_items(features: dict[str, torch.Tensor], items: list[dict]) -> list[dict]:
    """Dataset records ``{"image": features, "label": y, "item_id", "item_label"}`` for a MONAI ``Dataset``."""
    return [{"image": features[_sample_id(i)], "label": torch.tensor(int(i["label"])), "item_id": i["item_id"],
             "item_label": int(i.get("item_label", i["label"]))} for i in items]


@torch.no_grad()
def predict_features(network: nn.Module, items: list[dict], features: dict[str, torch.Tensor],
                     device: torch.device | str, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, C) of the classifier's head on cached features, in item order."""
    head = FeatureHead(network)
    head.eval()
    out = []
    for start in range(0, len(items), batch_size):
        x = torch.stack([features[_sample_id(i)] for i in items[start:start + batch_size]]).to(device)
        out.append(torch.softmax(head(x).float(), 1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def all_items(cohort) -> list[dict]:
    """Every item of a cohort (train, validation, test): what one cache fill computes. The cache holds
    features of 2D samples: a whole-volume cohort (``input: 3d``) is a one-line ``ValueError``."""
    if getattr(cohort, "volumetric", False):
        raise ValueError("the feature cache (train_features, freeze: all) holds pooled features of 2D samples; with "
                         "input: 3d train the frozen encoder's head end to end (configs/train.json)")
    return list(cohort.train) + list(cohort.val) + list(cohort.test)
