"""Content digests: of files (sha256, streamed) and of JSON-able values (config hashes, cache keys)."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

DIGEST_LENGTH = 20  # hex characters of a config hash unless a caller's stored contract says otherwise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes in memory."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """The text :func:`stable_digest` hashes: JSON with sorted keys, ``str()`` for what JSON lacks."""
    return json.dumps(obj, sort_keys=True, default=str)


def stable_digest(obj: Any, length: int = DIGEST_LENGTH) -> str:
    """The first ``length`` hex characters of the sha256 of :func:`canonical_json` of ``obj``.

    The same value gives the same digest in every process and on every machine. Stored digests
    (MLflow ``config_hash`` tags, feature-cache keys) keep the length they were written with:
    a different length would make a resumed study re-run everything.
    """
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def canonical_numbers(value: Any) -> Any:
    """``30.0`` and ``30`` are one setting: integral floats become ints, recursively through dicts and lists
    (what a config hash and a cell's identity are computed from)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical_numbers(v) for v in value]
    return value
