"""Keyed pseudonyms: the only form in which patient, study and series identities leave ingest.

A pseudonym is an HMAC-SHA256 of the identifier under a secret that never enters the output
folder. The same secret gives the same pseudonyms, so a cohort can be extended later and label
files can be joined in pseudonym space (their key column is hashed, never copied).
"""
from __future__ import annotations

import hashlib
import hmac
import os
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
