"""Weights sources: the string that names where an encoder's weights come from (``../shared/DESIGN.md``).

- ``scratch`` — random initialisation;
- ``NAME`` — weights imported once into the registry (:mod:`.registry`);
- ``SCHEME:REFERENCE`` — resolved by the resolver registered for ``SCHEME`` with
  :func:`register_source_scheme`. This module registers ``file:PATH`` (a supported file converted
  on the fly, not stored); :mod:`medxfer.engine` registers ``run:RUN_ID`` (the checkpoint an
  earlier run logged to MLflow), since models know nothing of MLflow.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..encoders import arch_spec
from .errors import WeightsError
from .formats import convert_weights
from .record import ResolvedWeights, WeightsRecord, conversion_record
from .registry import is_weights_name, list_weights, load_imported, record_path

SourceResolver = Callable[[str, str], ResolvedWeights]
"""``resolver(reference, arch)``: the weights ``SCHEME:REFERENCE`` names for ``arch``, or a WeightsError."""

_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*$")
# schemes a higher layer registers when imported: which module to import for them
_PROVIDED_BY = {"run": "medxfer.engine"}


@dataclass(frozen=True)
class SourceScheme:
    """A registered ``SCHEME:`` of weights sources."""

    scheme: str
    resolver: SourceResolver
    usage: str  # how the source is written, e.g. "file:PATH"


_SCHEMES: dict[str, SourceScheme] = {}


def register_source_scheme(scheme: str, resolver: SourceResolver, usage: str | None = None) -> None:
    """Make ``SCHEME:REFERENCE`` weights sources resolve with ``resolver(reference, arch)``.

    ``usage`` is how error messages list the scheme (default ``SCHEME:REF``). Registering the same
    resolver again (a re-imported module) is harmless; another resolver for a taken scheme is an error.
    """
    if not _SCHEME_RE.match(scheme) or scheme == "scratch":
        raise ValueError(f"invalid weights source scheme {scheme!r}: lower-case letters, digits, '+', '.', '-'")
    known = _SCHEMES.get(scheme)
    if known is not None and _qualname(known.resolver) != _qualname(resolver):
        raise ValueError(f"weights source scheme {scheme!r} is already registered ({_qualname(known.resolver)})")
    usage = usage or (known.usage if known is not None else f"{scheme}:REF")
    _SCHEMES[scheme] = SourceScheme(scheme, resolver, usage)


def source_schemes() -> tuple[str, ...]:
    """The registered schemes, in registration order."""
    return tuple(_SCHEMES)


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def source_label(source: str) -> str:
    """A weights source as it may appear in run names and params: ``file:`` keeps the base name
    only (a folder path can carry a person's name)."""
    return f"file:{Path(source[len('file:'):]).name}" if source.startswith("file:") else source


def known_sources(home: str | os.PathLike | None = None) -> str:
    """``scratch``, the registered schemes and the imported names (with their archs), for messages."""
    by_name: dict[str, list[str]] = {}
    for r in list_weights(home):
        by_name.setdefault(r.name, []).append(r.arch)
    imported = [f"{n} ({', '.join(a)})" for n, a in sorted(by_name.items())]
    return ", ".join(["scratch", *(s.usage for s in _SCHEMES.values()), *imported])


def resolve_weights(source: str, arch: str, home: str | os.PathLike | None = None) -> ResolvedWeights | None:
    """The weights ``source`` names for ``arch`` (``None`` for ``scratch``)."""
    arch_spec(arch)
    if source == "scratch":
        return None
    scheme, colon, reference = source.partition(":")
    if colon and scheme in _SCHEMES:
        return _SCHEMES[scheme].resolver(reference, arch)
    if colon and scheme in _PROVIDED_BY:
        provider = _PROVIDED_BY[scheme]
        raise WeightsError(f"weights source {source!r}: the {scheme}: scheme is provided by {provider} "
                           f"(import {provider})")
    if not is_weights_name(source) or not record_path(source, arch, home).exists():
        other = [r.arch for r in list_weights(home) if r.name == source]
        detail = (f"weights {source!r} exist for {', '.join(other)}, not for {arch}" if other
                  else f"unknown weights source {source!r}")
        raise WeightsError(f"{detail}; known sources: {known_sources(home)}")
    return load_imported(source, arch, home)


def check_weights_sha256(record: WeightsRecord | None, expected: str | None, source: str) -> None:
    """Raise a :class:`WeightsError` unless the weights loaded from ``source`` (their ``record``,
    whose ``sha256`` is that of the bytes actually read) are the ones pinned by ``expected`` (the
    sha256 a study saw when it planned the run; ``None`` or ``""``: nothing pinned). A ``file:``
    replaced or a name re-imported (``--replace``) since then is refused, not silently trained on."""
    if not expected:
        return
    expected = str(expected).lower().removeprefix("sha256:")
    found = record.sha256 if record is not None else ""
    if found == expected:
        return
    label = source_label(source)
    what = ("the file changed" if source.startswith("file:")
            else "the name was re-imported" if is_weights_name(source) else "the weights changed")
    raise WeightsError(f"weights {label}: {what} since the study was planned (sha256 {expected[:12]}… expected, "
                       f"{(found or 'none')[:12]}… found); restore them, or run the study again to plan with the "
                       "new weights (a new configuration)")


def _copy_hashing(src: str, dst: Path) -> str:
    """Copy ``src`` to ``dst``; the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                fout.write(chunk)
    except (FileNotFoundError, IsADirectoryError):
        raise WeightsError(f"{src}: no such file") from None
    except OSError as exc:
        raise WeightsError(f"{src}: cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _resolve_file(path: str, arch: str) -> ResolvedWeights:
    """``file:PATH``: a supported file converted on the fly; only its base name is recorded.

    The file is read once, into a private copy hashed as it is copied, and converted from the copy:
    the recorded sha256 is that of the very bytes loaded, even when the file is replaced meanwhile."""
    name = Path(path).name
    if not Path(path).is_file():
        raise WeightsError(f"{path}: no such file")
    tmp = tempfile.mkdtemp(prefix="medxfer-weights-")
    try:
        copy = Path(tmp) / (name or "weights")
        sha = _copy_hashing(path, copy)
        try:
            conv = convert_weights(copy, arch)
        except WeightsError as exc:
            raise WeightsError(str(exc).replace(str(copy), path)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record = conversion_record(f"file:{name}", arch, conv, sha, name,
                               provenance={"preprocessing_reason": conv.preprocessing_reason})
    return ResolvedWeights(record, conv.state_dict)


register_source_scheme("file", _resolve_file, usage="file:PATH")
