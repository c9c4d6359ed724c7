"""The pseudonymisation secret: where it lives, load/create it, check it against an output folder.

Every pseudonym and item id an ingest writes is keyed by this secret (:mod:`.deid`), so an output
folder is bound to the secret it was built with: its report and index record the secret's
fingerprint (a non-reversible tag). A re-ingest under another secret would silently change every
pseudonym, item id and fold; it is refused unless asked for (``rekey``), and then everything the
old secret produced is removed first. The secret must never sit inside the source or the output
folder (whoever holds it can recompute the pseudonyms), and should be readable by its owner only.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import MedxferError
from ..core.home import medxfer_home
from .cache import IMAGES_DIR
from .deid import Pseudonymizer
from .index import INDEX_FILE, STATE_DIR
from .manifest import MANIFEST_FILE, SLICE_LABELS_FILE
from .split import SPLIT_FILE

log = logging.getLogger("medxfer.ingest")
SECRET_BYTES = 32
REPORT_FILE = "ingest_report.json"
FINGERPRINT_KEY = "secret_fingerprint"


class SecretError(MedxferError, ValueError):
    """An unusable secret, or one that does not match the output folder (one line for the user)."""


def default_secret_file() -> Path:
    """``$MEDXFER_HOME/secret`` (default ``~/.medxfer/secret``)."""
    return medxfer_home() / "secret"


def load_secret(path: str | os.PathLike | None = None, *, create: bool = True) -> bytes:
    """Read the pseudonymisation secret; create a random one (mode 0600) if it is missing."""
    p = Path(path) if path else default_secret_file()
    if p.exists():
        data = p.read_bytes().strip()
        if len(data) < 16:
            raise SecretError(f"secret file {p} holds {len(data)} bytes; at least 16 are needed")
        return data
    if not create:
        raise FileNotFoundError(f"secret file {p} does not exist")
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = secrets.token_hex(SECRET_BYTES).encode()
    # written whole under a temporary name, then linked into place: a concurrent ingest either
    # creates the secret or reads the complete one, never a half-written file
    tmp = p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        _write_private(tmp, data)
        try:
            os.link(tmp, p)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: create in place (still never overwrites)
            _write_private(p, data)
    except FileExistsError:
        return load_secret(p, create=False)
    finally:
        tmp.unlink(missing_ok=True)
    return data


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` (never overwrite it) readable by its owner only, holding ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def check_secret_location(path: str | os.PathLike, *folders: str | os.PathLike) -> Path:
    """The resolved secret path; :class:`SecretError` when it lies inside one of ``folders``
    (the source or output folder), whether given with ``--secret-file`` or via ``$MEDXFER_HOME``."""
    p = Path(path).expanduser().resolve()
    for d in folders:
        if p.is_relative_to(Path(d).resolve()):
            via_home = bool(os.environ.get("MEDXFER_HOME")) and p == default_secret_file().expanduser().resolve()
            how = " ($MEDXFER_HOME points there)" if via_home else ""
            raise SecretError(f"the secret file must not be inside the source or output folder: {p} is inside "
                              f"{d}{how}; whoever holds it can recompute the pseudonyms — keep it elsewhere "
                              f"(--secret-file PATH or MEDXFER_HOME)")
    return p


def permission_warning(path: str | os.PathLike) -> str | None:
    """A warning when the secret file is open to other users (group/other permission bits), else None."""
    if os.name != "posix":
        return None
    try:
        mode = Path(path).stat().st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (f"secret file {path} is open to other users (mode {mode:04o}): whoever reads it can recompute "
            f"every pseudonym; run `chmod 600 {path}`")


# A top-level "secret_fingerprint" key of medxfer's own JSON files, found by searching, not parsing: an
# index or report of a large cohort is tens of MB, and every ingest checks both before it starts. A quote
# inside a JSON string is escaped, so an unescaped '"secret_fingerprint"' is a key.
_FINGERPRINT_KEY_TEXT = f'"{FINGERPRINT_KEY}"'
_FINGERPRINT_VALUE = re.compile(r'\s*:\s*"([0-9A-Za-z]+)"')


def recorded_fingerprints(out: str | os.PathLike) -> set[str]:
    """The secret fingerprints ``out`` records (its report and its index); unreadable files are ignored."""
    out = Path(out)
    found = set()
    for p in (out / REPORT_FILE, out / STATE_DIR / INDEX_FILE):
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        i = text.find(_FINGERPRINT_KEY_TEXT)
        while i >= 0:
            m = _FINGERPRINT_VALUE.match(text, i + len(_FINGERPRINT_KEY_TEXT))
            if m and (i == 0 or text[i - 1] != "\\"):
                found.add(m.group(1))
            i = text.find(_FINGERPRINT_KEY_TEXT, i + 1)
    return found


def _mismatch(out: Path, old: set[str], what: str) -> SecretError:
    return SecretError(
        f"{out} was built with another pseudonymisation secret (fingerprint {', '.join(sorted(old))}; {what}): "
        f"the secret file was probably moved or lost, $MEDXFER_HOME changed, or --secret-file was not given "
        f"— ingest again with the original secret (--secret-file PATH), or pass --rekey to start {out} over "
        f"with this one (every pseudonym, item id and fold changes)")


def check_output_secret(out: str | os.PathLike, fingerprint: str, rekey: bool = False,
                        recorded: set[str] | None = None) -> set[str]:
    """Compare the secret's fingerprint with the one ``out`` was built with (``recorded``: what
    :func:`recorded_fingerprints` found, when the caller has read it already).

    Returns the other fingerprints ``out`` records when ``rekey`` allows starting it over (empty when
    ``out`` is new or was built with this secret); raises :class:`SecretError` when they differ and
    ``rekey`` is false.
    """
    old = (recorded_fingerprints(out) if recorded is None else recorded) - {fingerprint}
    if old and not rekey:
        raise _mismatch(Path(out), old, f"this secret's is {fingerprint}")
    return old


@dataclass(frozen=True)
class OutputSecret:
    """The secret an ingest into an output folder uses, and what checking it found."""

    key: bytes
    path: Path
    fingerprint: str
    replaces: frozenset[str]  # fingerprints of the secret ``out`` was built with, when rekeyed; else empty
    warnings: tuple[str, ...]


def open_output_secret(secret_file: str | os.PathLike | None, src: str | os.PathLike, out: str | os.PathLike,
                       *, rekey: bool = False) -> OutputSecret:
    """Load (or create) the secret for ingesting ``src`` into ``out`` after checking it.

    Refuses a secret inside ``src`` or ``out``, and one other than the secret ``out`` was built with
    unless ``rekey`` (a missing secret is then not created either). Returns the key, its fingerprint,
    the fingerprints it replaces (then call :func:`start_over`) and warnings (a secret readable by others).
    """
    path = check_secret_location(secret_file or default_secret_file(), src, out)
    old = recorded_fingerprints(out)
    if old and not rekey and not path.exists():
        raise _mismatch(Path(out), old, f"the secret file {path} does not exist")
    try:
        key = load_secret(path)
    except (OSError, ValueError) as exc:
        raise SecretError(f"cannot use the secret file: {exc}") from exc
    fingerprint = Pseudonymizer(key).fingerprint
    replaces = check_output_secret(out, fingerprint, rekey, recorded=old)
    warning = permission_warning(path)
    return OutputSecret(key, path, fingerprint, frozenset(replaces), (warning,) if warning else ())


def start_over(out: str | os.PathLike, replaces: set[str] | frozenset[str], fingerprint: str) -> str:
    """Remove what an earlier secret produced in ``out`` (split.json, manifest, slice labels, images, index, report;
    the fingerprint carriers last, so an interrupted start-over still needs ``rekey``). Returns the
    message to report."""
    out = Path(out)
    removed = []
    split_json = out / SPLIT_FILE
    if split_json.exists():
        split_json.unlink()
        removed.append(SPLIT_FILE)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    (out / SLICE_LABELS_FILE).unlink(missing_ok=True)  # keyed by the old item ids
    if (out / IMAGES_DIR).is_dir():
        shutil.rmtree(out / IMAGES_DIR)
    state = out / STATE_DIR
    for p in sorted(state.glob("index*")) if state.is_dir() else []:  # the index and its journal
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    (out / REPORT_FILE).unlink(missing_ok=True)
    msg = (f"--rekey: {out} was built with secret fingerprint {', '.join(sorted(replaces))}, now {fingerprint}: "
           f"its manifest, images, index and report were replaced and every pseudonym and item id changed")
    if removed:
        msg += f"; {SPLIT_FILE} (folds of the old pseudonyms) was removed — run `medxfer split {out}` again"
    return msg
