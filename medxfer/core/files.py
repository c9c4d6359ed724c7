"""Atomic file writes: the target is either the old file or the complete new one, never half of it.

The temporary file sits next to the target (same file system, so ``os.replace`` is atomic) and is
named after the process and a random token, so that several processes or hosts sharing a folder
(NFS) never write into each other's temporary file.

A full disk (``ENOSPC``) or an exhausted quota (``EDQUOT``) while writing is an ``OSError`` that names
the target (a failed ``write`` names no file of its own); :func:`disk_full_error` finds one in an
exception chain and :func:`disk_full_message` says it in one line, with the free space left.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


# errno values of "the disk cannot take more": no space left, quota exceeded
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


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
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS and exc.filename is None:  # name the file that did not fit
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise
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


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (nan, ±inf, numpy's too) replaced by None, in nested dicts, lists and
    tuples (tuples become lists), so that ``json.dumps`` writes valid JSON (``null``, never ``NaN``); numpy scalars
    and arrays become Python numbers and lists. Other values are returned as they are."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # numpy scalars and arrays, without numpy
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def safe_json(doc: Any, **dumps_kwargs: Any) -> str:
    """``doc`` as strictly valid JSON text: non-finite numbers as ``null`` (:func:`json_safe`); a value
    ``json.dumps`` cannot write otherwise goes through ``dumps_kwargs``' ``default`` (e.g. ``default=str``)."""
    return json.dumps(json_safe(doc), allow_nan=False, **dumps_kwargs)


def run_folder_name(run_name: str) -> str:
    """The output folder of a run named ``run_name``: ``/`` and the characters Windows and some file tools refuse
    in a name (``:`` of ``top:4``, ``file:`` and ``run:`` weights; ``\\ * ? " < > |``) become ``_``; the MLflow run
    name itself keeps them."""
    return re.sub(r'[/\\:*?"<>|]', "_", run_name)


def atomic_write_json(path: str | os.PathLike, doc: Any, *, indent: int | None = 1, **dumps_kwargs: Any) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically; returns the path."""
    return atomic_write(path, json.dumps(doc, indent=indent, **dumps_kwargs))


def disk_full_error(exc: BaseException | None) -> OSError | None:
    """The ``ENOSPC``/``EDQUOT`` ``OSError`` in ``exc`` or its chain (``__cause__``/``__context__``), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (the nearest existing folder up)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(n: int) -> str:
    """``n`` bytes in MB (GB from 10 GB): the unit a user frees disk space in."""
    return f"{n / 1e9:.1f} GB" if n >= 10e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e6:.1f} MB"


def disk_full_message(exc: OSError, where: str | os.PathLike | None = None) -> str:
    """One line for a full disk or quota: the file being written, the space left on its file system, what to do.

    ``where`` is the folder to measure when ``exc`` names no file (default the working folder)."""
    # a copy (shutil.copyfile) names its source in filename and the file being written in filename2
    named = exc.filename2 if getattr(exc, "filename2", None) is not None else exc.filename
    target = os.fsdecode(named) if named is not None else None
    probe = Path(target).parent if target is not None else Path(where) if where is not None else Path.cwd()
    mount = _mount_point(probe)
    writing = f" writing {target}" if target is not None else ""
    if exc.errno == errno.EDQUOT:
        return (f"disk quota exceeded{writing} (on {mount}): delete some of your files there or ask for more "
                "quota, and re-run; finished work is kept")
    try:
        free = f"{_size(shutil.disk_usage(mount).free)} free on {mount}"
    except OSError:
        free = f"free space on {mount} unknown"
    return f"no space left on device{writing} ({free}): free some space and re-run; finished work is kept"
