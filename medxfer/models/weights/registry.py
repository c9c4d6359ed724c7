"""The on-disk weights registry: files imported once under a name, ``$MEDXFER_HOME/weights/NAME/``.

One name (``imagenet``, ``radimagenet``) can hold weights for several archs: ``ARCH.json`` (the
:class:`WeightsRecord`) and ``ARCH-<sha256[:12]>.pt`` (the converted state dict, content-addressed)
per arch. Every load checks the state file's sha256 against its record.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import torch

from ...core.files import atomic_write
from ...core.hashing import sha256_bytes, sha256_file
from ...core.home import medxfer_home
from ..encoders import arch_spec
from ..preprocessing import Preprocessing
from .errors import WeightsError
from .formats import convert_weights
from .loading import plain_state_dict, safe_torch_load
from .record import ResolvedWeights, WeightsRecord, import_provenance

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = frozenset({"scratch"})


def is_weights_name(name: str) -> bool:
    """Whether ``name`` has the form of an imported weights name (letters, digits, '.', '_', '-')."""
    return bool(NAME_RE.match(name))


def registry_dir(home: str | os.PathLike | None = None) -> Path:
    """``$MEDXFER_HOME/weights``."""
    return Path(home) / "weights" if home else medxfer_home() / "weights"


def record_path(name: str, arch: str, home: str | os.PathLike | None = None) -> Path:
    """Where the record of imported weights ``name`` for ``arch`` lives (whether or not it exists)."""
    return registry_dir(home) / name / f"{arch}.json"


def import_weights(path: str | os.PathLike, name: str, arch: str, fmt: str = "auto",
                   preprocessing: str | Preprocessing | None = None, expected_sha256: str | None = None,
                   note: str = "", home: str | os.PathLike | None = None, replace: bool = False) -> WeightsRecord:
    """Convert ``path`` once into the registry as weights source ``name`` for ``arch``."""
    if not is_weights_name(name) or name in RESERVED_NAMES or ":" in name:
        raise WeightsError(f"invalid weights name {name!r}: letters, digits, '.', '_', '-' (not 'scratch')")
    arch_spec(arch)
    source_sha = sha256_file(path) if Path(path).is_file() else ""
    if not source_sha:
        raise WeightsError(f"{path}: no such file")
    if expected_sha256 and expected_sha256.lower() != source_sha:
        raise WeightsError(f"{path}: sha256 mismatch: expected {expected_sha256.lower()}, file has {source_sha}")
    target = record_path(name, arch, home)
    if target.exists() and not replace:
        raise WeightsError(f"weights {name!r} for {arch} already exist ({target}); pass replace=True / --replace")
    conv = convert_weights(path, arch, fmt, preprocessing)
    buffer = io.BytesIO()
    torch.save(conv.state_dict, buffer)
    data = buffer.getvalue()
    sha = sha256_bytes(data)
    # Content-addressed state file: the record's rename is the single commit point, so a crash or
    # a concurrent import never pairs a record with a file it does not describe.
    folder = target.parent
    state_path = atomic_write(folder / f"{arch}-{sha[:12]}.pt", data, mode_bits=0o644)
    record = WeightsRecord(name=name, arch=arch, format=conv.format, preprocessing=conv.preprocessing.to_dict(),
                           sha256=sha, file=f"{name}/{state_path.name}", source_file=Path(path).name,
                           source_sha256=source_sha, arch_options=conv.arch_options,
                           provenance=import_provenance(conv, note))
    atomic_write(target, (json.dumps(record.to_dict(), indent=2) + "\n").encode(), mode_bits=0o644)
    for stale in folder.glob(f"{arch}-*.pt"):  # files of replaced imports
        if stale.name != state_path.name:
            stale.unlink(missing_ok=True)
    return record


def _read_record(path: Path) -> WeightsRecord:
    try:
        return WeightsRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: damaged weights record ({exc})") from None


def list_weights(home: str | os.PathLike | None = None) -> list[WeightsRecord]:
    """Every imported weights record, sorted by name and arch."""
    return [_read_record(path) for path in sorted(registry_dir(home).glob("*/*.json"))]


def imported_record(source: str, arch: str, home: str | os.PathLike | None = None) -> WeightsRecord | None:
    """The registry record of an imported name for ``arch`` without loading its weights; None when
    ``source`` is not an imported name (scratch, file:, run:, unknown)."""
    if not is_weights_name(source) or source == "scratch":
        return None
    try:
        return WeightsRecord.from_dict(json.loads(record_path(source, arch, home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def load_imported(name: str, arch: str, home: str | os.PathLike | None = None) -> ResolvedWeights:
    """The imported weights ``name`` for ``arch``, their sha256 checked against the record."""
    record = _read_record(record_path(name, arch, home))
    state_path = registry_dir(home) / record.file
    try:
        data = state_path.read_bytes()  # read once: the bytes hashed are the bytes loaded
    except OSError:
        raise WeightsError(f"weights {name!r} for {arch}: {state_path} is missing; import the file again") from None
    actual = sha256_bytes(data)
    if actual != record.sha256:
        raise WeightsError(f"weights {name!r} for {arch}: sha256 mismatch: {state_path} has {actual}, its record "
                           f"says {record.sha256} (the file changed after import); import the source again")
    return ResolvedWeights(record, plain_state_dict(safe_torch_load(state_path, data), state_path))
