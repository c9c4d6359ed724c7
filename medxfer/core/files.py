"""Atomic file writes: the target is either the old file or the complete new one, never half of it.

The temporary file sits next to the target (same file system, so ``os.replace`` is atomic) and is
named after the process and a random token, so that several processes or hosts sharing a folder
(NFS) never write into each other's temporary file.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", *, mode_bits: int | None = None,
                  fsync: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces ``path``, on an error it is removed.

    ``mode`` is ``"w"`` (text, ``open_kwargs`` such as ``newline=""`` pass on) or ``"wb"``;
    ``mode_bits`` sets the file's permissions (e.g. ``0o644``); ``fsync`` flushes to disk before
    the rename (for caches shared between hosts).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer: mode {mode!r} is not 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if mode_bits is not None:
            os.chmod(tmp, mode_bits)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode_bits: int | None = None,
                 fsync: bool = False) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns the path."""
    binary = isinstance(data, bytes)
    with atomic_writer(path, "wb" if binary else "w", mode_bits=mode_bits, fsync=fsync,
                       **({} if binary else {"encoding": "utf-8"})) as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, doc: Any, *, indent: int | None = 1, **dumps_kwargs: Any) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically; returns the path."""
    return atomic_write(path, json.dumps(doc, indent=indent, **dumps_kwargs))
