"""Item cache: each item loaded, scaled by its modality preset and resized to the network size once,
kept on disk and shared by every run (and every process, host and fold) that needs it again.

Runs of a study read the same images through the same deterministic steps — load, modality preset,
resize-with-pad — before their random augmentation; today every run decodes and resizes them again
into its own in-memory ``CacheDataset``. :class:`ItemCacheDataset` runs those leading steps (the
transforms of :data:`CACHEABLE_STEPS` before anything random) once per item and stores the result.

Layout (like the frozen-encoder feature cache, :mod:`.features`):
``<cache_dir>/<pipeline key>/<item key>.<data key>.<encoding>.npy``, one small ``.npy`` per array
(``image``; ``label`` too when the cached steps load a mask), written atomically (unique temporary
name + rename), so concurrent runs and hosts sharing the folder never see half a file. The bundles'
``item_cache_dir`` defaults to ``<dataset>/.medxfer/items``, beside the feature cache.

- The pipeline key hashes a description of the cached steps (their types and settings: image size,
  channels, modality-preset windows and percentiles, interpolation modes), the bundle's context
  (``input`` mode), the source of the modules that implement them, and :data:`ITEM_CACHE_VERSION`.
  ``<pipeline key>/pipeline.json`` holds that description, readable.
- The item key hashes the item's record (its image path, preset metadata, slice indices; not its
  label or fold) and each source file's size and modification time: a re-ingested image is
  recomputed. Both keys are digests: no file name holds an identifier.
- Encodings: ``u8n`` (uint8 ``k``, read as ``k / 255`` in float32: exact, checked before it is
  chosen), ``u8`` (uint8 integers: masks), ``f16`` (float16: values in [0, 1] to about 2.4e-4),
  ``f32`` (anything else). An entry that cannot be read back is computed again and replaced.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, Randomizable, apply_transform

from ..core.files import atomic_write, atomic_writer
from ..core.hashing import stable_digest
from ..transforms.masks import LoadMaskd
from ..transforms.presets import LoadItemd, ModalityPresetd, ResizeWithPadd
from .loaders import resolve_num_workers

log = logging.getLogger(__name__)

ITEM_CACHE_VERSION = 1  # bump when the cache's own format or the meaning of an entry changes
# The transforms whose output is cached: loading and sizing, before any augmentation or normalisation
# (the weights' normalisation is left out, so runs of different encoders share the entries).
CACHEABLE_STEPS = (LoadItemd, LoadMaskd, ModalityPresetd, ResizeWithPadd)
ENCODINGS = ("u8n", "u8", "f16", "f32")
_DTYPES = {"u8n": np.uint8, "u8": np.uint8, "f16": np.float16, "f32": np.float32}
_FLOAT16_MAX = 65504.0
# what never changes an item's cached arrays
_IGNORED = frozenset({"label", "fold", "item_label", "label_name", "item_label_name"})


def split_cacheable(transform: Compose | Sequence[Callable]) -> tuple[list, list]:
    """``(cached, rest)``: the leading transforms of ``transform`` that are :data:`CACHEABLE_STEPS` (and
    not random), and everything after them."""
    steps = list(transform.transforms if isinstance(transform, Compose) else transform)
    n = 0
    while n < len(steps) and isinstance(steps[n], CACHEABLE_STEPS) and not isinstance(steps[n], Randomizable):
        n += 1
    return steps[:n], steps[n:]


def _plain(value: Any) -> bool:
    """Whether ``value`` is JSON data (numbers, text, booleans, None, and lists / tuples / dicts of them)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def describe_step(step: Any) -> dict[str, Any]:
    """A transform as data: its type and its plain settings (sizes, windows, modes, keys)."""
    attrs = {k: v for k, v in sorted(vars(step).items()) if not k.startswith("_") and _plain(v)}
    return {"type": f"{type(step).__module__}.{type(step).__qualname__}", **attrs}


def _code_digest(steps: Sequence[Any]) -> str:
    """A digest of the source of the modules implementing ``steps`` and of the medxfer modules they
    call into (e.g. the slice reader): a change to that code is a new cache, never a stale entry."""
    names: set[str] = set()
    for step in steps:
        module = sys.modules.get(type(step).__module__)
        names.add(type(step).__module__)
        for value in vars(module).values() if module is not None else ():
            owner = getattr(value, "__module__", None)
            if isinstance(owner, str) and owner.startswith("medxfer.") and callable(value):
                names.add(owner)
    h = hashlib.sha256()
    for name in sorted(names):
        try:
            source = inspect.getsource(sys.modules[name])
        except (KeyError, OSError, TypeError):
            source = name  # no source at hand (a frozen build): the module's name and the version decide
        h.update(name.encode() + b"\0" + source.encode() + b"\0")
    return h.hexdigest()[:24]


def pipeline_description(steps: Sequence[Any], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What decides the cached arrays besides the item: the steps, ``context`` (e.g. the input mode),
    their code and :data:`ITEM_CACHE_VERSION`."""
    return {"version": ITEM_CACHE_VERSION, "context": dict(context or {}), "steps": [describe_step(s) for s in steps],
            "code": _code_digest(steps)}


def cached_keys(steps: Sequence[Any]) -> list[str]:
    """The data keys whose arrays the cached steps produce (``image``, and ``label`` when a mask is loaded)."""
    keys: list[str] = []
    for step in steps:
        if isinstance(step, (LoadItemd, LoadMaskd)):
            keys += [str(k) for k in step.keys if str(k) not in keys]
    return keys


def item_key(item: Mapping[str, Any], data_keys: Sequence[str] = ("image",)) -> str:
    """A digest of an item's record (less its label and fold, unless a mask is read from ``label``) and of
    the size and modification time of every file the cached steps read."""
    ignored = _IGNORED - set(data_keys)
    meta = {k: v for k, v in item.items() if k not in ignored}
    files = [item.get("image_path") or item.get("image")] + [item.get(k) for k in data_keys if k != "image"]
    meta["file"] = []
    for path in files:
        try:
            st = os.stat(str(path))
            meta["file"].append([st.st_size, st.st_mtime_ns])
        except (OSError, TypeError, ValueError):
            meta["file"].append(None)
    return stable_digest(meta, 24)


def encode(array: Any) -> tuple[str, np.ndarray]:
    """``(encoding, stored array)`` for a cached array: the smallest of :data:`ENCODINGS` that gives its
    float32 values back exactly, else float16 when they fit its range, else float32."""
    x = np.ascontiguousarray(torch.as_tensor(array).detach().cpu().numpy(), dtype=np.float32)
    finite = bool(np.isfinite(x).all())
    if finite and x.size and x.min() >= 0.0 and x.max() <= 1.0:
        k = np.rint(x * 255.0).astype(np.uint8)
        if np.array_equal(k.astype(np.float32) / np.float32(255.0), x):
            return "u8n", k
    if finite and x.size and x.min() >= 0.0 and x.max() <= 255.0 and np.array_equal(np.rint(x), x):
        return "u8", x.astype(np.uint8)
    if finite and (not x.size or float(np.abs(x).max()) <= _FLOAT16_MAX):
        return "f16", x.astype(np.float16)
    return "f32", x


def decode(encoding: str, stored: np.ndarray) -> torch.Tensor:
    """The float32 tensor a stored array stands for (see :func:`encode`)."""
    x = torch.from_numpy(np.ascontiguousarray(stored))
    if encoding == "u8n":
        return x.to(torch.float32) / 255.0
    return x.to(torch.float32)


class CacheFolderError(OSError):
    """The item cache's folder cannot be made or written (a read-only dataset folder, no permission)."""


class ItemCache:
    """The cache folder of one pipeline (``steps``, ``context``) under ``cache_dir``: computes, writes and
    reads the cached arrays of items. The folder is made (and its ``pipeline.json`` written) on creation,
    or :class:`CacheFolderError`."""

    def __init__(self, cache_dir: str | os.PathLike, steps: Sequence[Any], context: Mapping[str, Any] | None = None):
        if not steps:
            raise ValueError("nothing to cache: the pipeline does not start with loading and sizing steps")
        self.steps = list(steps)
        self.compute = Compose(self.steps)
        self.data_keys = cached_keys(self.steps)
        description = pipeline_description(self.steps, context)
        self.key = stable_digest(description, 24)
        self.folder = Path(cache_dir) / self.key
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not (self.folder / "pipeline.json").is_file():
                atomic_write(self.folder / "pipeline.json", json.dumps(description, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            raise CacheFolderError(exc.errno, f"{self.folder} cannot be written ({exc.strerror or exc})") from exc

    def file_name(self, key: str, data_key: str, encoding: str) -> str:
        """The entry file of one array: ``<item key>.<data key>.<encoding>.npy``."""
        return f"{key}.{data_key}.{encoding}.npy"

    def present(self) -> set[str]:
        """The names of the entries in the folder now."""
        try:
            return set(os.listdir(self.folder))
        except FileNotFoundError:
            return set()

    def find(self, key: str, names: set[str]) -> dict[str, str] | None:
        """The file of each data key of item ``key`` among ``names``; None if one is missing."""
        found = {}
        for data_key in self.data_keys:
            name = next((self.file_name(key, data_key, e) for e in ENCODINGS
                         if self.file_name(key, data_key, e) in names), None)
            if name is None:
                return None
            found[data_key] = name
        return found

    def write(self, item: Mapping[str, Any], key: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
        """Run the cached steps on ``item`` and store their arrays: ``(files, arrays as read back)``."""
        out = apply_transform(self.compute, dict(item))
        files, arrays = {}, {}
        for data_key in self.data_keys:
            encoding, stored = encode(out[data_key])
            name = self.file_name(key, data_key, encoding)
            with atomic_writer(self.folder / name, "wb") as f:
                np.save(f, stored, allow_pickle=False)
            files[data_key], arrays[data_key] = name, decode(encoding, stored)
        return files, arrays

    def read(self, files: Mapping[str, str]) -> dict[str, torch.Tensor]:
        """The arrays of one item's entry; an ``OSError`` / ``ValueError`` when it cannot be read back as
        the array its name says."""
        arrays = {}
        for data_key, name in files.items():
            encoding = name.rsplit(".", 2)[-2]
            stored = np.load(self.folder / name, allow_pickle=False)
            if encoding not in _DTYPES or stored.dtype != _DTYPES[encoding] or stored.ndim < 2:
                raise ValueError(f"holds a {stored.dtype} array of shape {stored.shape}, not {encoding}")
            arrays[data_key] = decode(encoding, stored)
        return arrays


class ItemCacheDataset(Dataset):
    """A MONAI ``Dataset`` whose items' leading load-and-resize steps come from an :class:`ItemCache`:
    computed (in ``num_workers`` threads) and written for the items not yet cached when it is made,
    then read from disk at each access, and the rest of ``transform`` (augmentation, normalisation)
    applied as usual. ``data`` stays the list given (DDP shards it before)."""

    def __init__(self, data: Sequence[dict], transform: Compose | Sequence[Callable], cache_dir: str | os.PathLike,
                 num_workers: Any = 0, context: Mapping[str, Any] | None = None) -> None:
        compose = transform if isinstance(transform, Compose) else Compose(list(transform))
        cached, rest = split_cacheable(compose)
        self.cache = ItemCache(cache_dir, cached, context)
        super().__init__(data=data, transform=Compose(rest, map_items=compose.map_items,
                                                      unpack_items=compose.unpack_items))
        self.computed = 0
        self._keys = [item_key(item, self.cache.data_keys) for item in self.data]
        self._files = self._fill(resolve_num_workers(num_workers))

    def _fill(self, workers: int) -> list[dict[str, str]]:
        names = self.cache.present()
        files: list[dict[str, str] | None] = [self.cache.find(key, names) for key in self._keys]
        missing = [i for i, f in enumerate(files) if f is None]

        def _compute(i: int) -> dict[str, str]:
            return self.cache.write(self.data[i], self._keys[i])[0]

        if missing:
            if workers > 1:
                with ThreadPoolExecutor(workers) as pool:
                    for i, found in zip(missing, pool.map(_compute, missing)):
                        files[i] = found
            else:
                for i in missing:
                    files[i] = _compute(i)
        self.computed = len(missing)
        log.info("item cache %s: %d of %d items read from the cache, %d computed", self.cache.key,
                 len(files) - len(missing), len(files), len(missing))
        return files  # type: ignore[return-value]

    def _arrays(self, index: int) -> dict[str, torch.Tensor]:
        try:
            return self.cache.read(self._files[index])
        except (OSError, ValueError, EOFError) as exc:  # truncated, foreign or removed: compute it again
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            log.warning("item cache: recomputing entry %s (%s)", self._keys[index], reason)
            self._files[index], arrays = self.cache.write(self.data[index], self._keys[index])
            return arrays

    def _transform(self, index: int):
        item = dict(self.data[index])
        item.update(self._arrays(index))
        return apply_transform(self.transform, item)


def cached_dataset(data: Sequence[dict], transform: Compose, cache_dir: str | os.PathLike | None = None,
                   cache_rate: float = 1.0, num_workers: Any = 0, context: Mapping[str, Any] | None = None,
                   progress: bool = False) -> Dataset:
    """The bundles' training / validation dataset: an :class:`ItemCacheDataset` when ``cache_dir`` is set
    and ``transform`` starts with cacheable steps (2D items and slice samples), else (whole volumes,
    multi-view samples, cache off, or a cache folder that cannot be written) MONAI's in-memory
    ``CacheDataset`` with ``cache_rate``."""
    workers = resolve_num_workers(num_workers)
    compose = transform if isinstance(transform, Compose) else Compose(list(transform))
    if cache_dir is not None and split_cacheable(compose)[0]:
        try:
            return ItemCacheDataset(data, compose, cache_dir, num_workers=workers, context=context)
        except CacheFolderError as exc:
            log.warning("item cache: %s; caching in memory for this run", exc.strerror)
    return CacheDataset(data=data, transform=compose, cache_rate=cache_rate, num_workers=max(workers, 1),
                        progress=progress)

