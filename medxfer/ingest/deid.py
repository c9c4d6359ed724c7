"""Keyed pseudonyms: the only form in which patient, study and series identities leave ingest.

A pseudonym is an HMAC-SHA256 of the identifier under a secret that never enters the output
folder. The same secret gives the same pseudonyms, so a cohort can be extended later and label
files can be joined in pseudonym space (their key column is hashed, never copied).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

SECRET_BYTES = 32


def default_secret_file() -> Path:
    """``$MEDXFER_HOME/secret`` (default ``~/.medxfer/secret``)."""
    home = Path(os.environ.get("MEDXFER_HOME", Path.home() / ".medxfer"))
    return home / "secret"


def load_secret(path: str | os.PathLike | None = None, *, create: bool = True) -> bytes:
    """Read the pseudonymisation secret; create a random one (mode 0600) if it is missing."""
    p = Path(path) if path else default_secret_file()
    if p.exists():
        data = p.read_bytes().strip()
        if len(data) < 16:
            raise ValueError(f"secret file {p} holds {len(data)} bytes; at least 16 are needed")
        return data
    if not create:
        raise FileNotFoundError(f"secret file {p} does not exist")
    p.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_hex(SECRET_BYTES).encode()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


class Pseudonymizer:
    """HMAC-SHA256 pseudonyms, separated by domain (``PatientID``, ``StudyInstanceUID``…)."""

    def __init__(self, secret: bytes):
        self._secret = secret

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag of the secret: equal fingerprints mean equal pseudonyms."""
        return self.digest("fingerprint", "medxfer")[:12]

    def digest(self, domain: str, value: str) -> str:
        """Full hex HMAC of ``value`` within ``domain`` (values are stripped of DICOM padding)."""
        msg = domain.encode() + b"\x00" + str(value).strip().strip("\x00").encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def pseudonym(self, domain: str, value: str, *, prefix: str = "", length: int = 12) -> str:
        """A readable pseudonym, e.g. ``pat-3fa94c0b12de``."""
        return prefix + self.digest(domain, value)[:length]


def redact_path(rel: str, identifiers: dict[str, str], pseudo: Pseudonymizer) -> str:
    """``rel`` with every identifier occurring in it replaced by a pseudonym token.

    PACS exports often name folders ``<PatientID>/<StudyInstanceUID>/…`` or after the patient's
    name; the report must still list every file, so identifier-bearing parts are replaced, e.g.
    ``MRN0012345/1.2.840…/IM1`` -> ``[PatientID-3fa94c0b]/[StudyInstanceUID-91be0c2a]/IM1``.
    ``identifiers`` maps a DICOM keyword to the value (PatientName is also split into its parts).
    """
    lower = rel.lower()
    tokens: list[tuple[str, str]] = []
    for kw, value in identifiers.items():
        value = str(value or "").strip()
        if not value:
            continue
        parts = [value]
        if kw == "PatientName":
            parts += [p for p in re.split(r"[\^= ]+", value) if p]
        # substring test first: almost no path holds an identifier, and this runs once per file
        hits = [part for part in parts if len(part) >= 3 and part.lower() in lower]
        if hits:
            token = f"[{kw}-{pseudo.digest(kw, value)[:8]}]"
            tokens.extend((part, token) for part in hits)
    if not tokens:
        return rel
    tokens.sort(key=lambda t: -len(t[0]))  # longest first: the full name before its parts
    pattern = re.compile("|".join(re.escape(t) for t, _ in tokens), re.IGNORECASE)
    lookup = {t.lower(): r for t, r in tokens}
    return pattern.sub(lambda m: lookup[m.group(0).lower()], rel)


def propagate_redactions(display: dict[str, str]) -> dict[str, str]:
    """Apply folder redactions learned from some files (DICOM headers) to every file under those folders.

    ``display`` maps each relative path to its display path (equal when nothing was redacted);
    a README inside ``DOE^JANE/`` must not show the name its DICOM neighbours revealed.
    """
    folders: dict[str, str] = {}
    for rel, shown in display.items():
        raw_parts, shown_parts = rel.split("/")[:-1], shown.split("/")[:-1]
        if len(raw_parts) != len(shown_parts):
            continue
        for i in range(len(raw_parts)):
            if raw_parts[i] != shown_parts[i]:
                folders.setdefault("/".join(raw_parts[: i + 1]), "/".join(shown_parts[: i + 1]))
    if not folders:
        return dict(display)
    out = {}
    for rel, shown in display.items():
        parts = rel.split("/")
        for i in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:i])
            if prefix in folders and shown == rel:
                shown = folders[prefix] + "/" + "/".join(parts[i:])
                break
        out[rel] = shown
    return out
