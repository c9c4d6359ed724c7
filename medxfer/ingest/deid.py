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

from ..core.home import medxfer_home

SECRET_BYTES = 32


def default_secret_file() -> Path:
    """``$MEDXFER_HOME/secret`` (default ``~/.medxfer/secret``)."""
    return medxfer_home() / "secret"


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


# Identifier values become keyed "path tokens"; a path is shown with every part whose digest is a
# token replaced. Only digests are kept (in the index too), so redaction works on re-runs without
# storing any identifier, and it reaches every file in the export (a README in a folder named
# after a patient, a PNG named by MRN), not only the DICOM files that named the identifier.
_RUN = re.compile(r"[^\W_]+(?:\.[^\W_]+)*")  # letters/digits, dots inside (UIDs, file.ext)
_DATE = re.compile(r"(?<!\d)\d{4}[-._]\d{2}[-._]\d{2}(?!\d)")
TOKEN_CHARS = 16


def path_tokens(identifiers: dict[str, str], pseudo: Pseudonymizer) -> set[str]:
    """Keyed digests of the identifier strings that must never show in a reported path."""
    out = set()
    for kw, value in identifiers.items():
        value = str(value or "").strip()
        if not value:
            continue
        forms = {value}
        if kw == "PatientName":
            forms |= {p for p in re.split(r"[\^= ,]+", value) if p}
        if kw == "PatientBirthDate" and len(value) == 8 and value.isdigit():
            forms.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        out |= {identifier_token(f, pseudo) for f in forms if len(f) >= 3}
    return out


def identifier_token(text: str, pseudo: Pseudonymizer) -> str:
    """The keyed digest under which an identifier string (case-insensitive) is recognised."""
    return pseudo.digest("PathToken", text.lower())[:TOKEN_CHARS]


class PathRedactor:
    """Replace identifier-bearing parts of relative paths by ``[id-xxxxxxxx]``."""

    def __init__(self, tokens: set[str], pseudo: Pseudonymizer):
        self.tokens, self.pseudo = tokens, pseudo
        self._segments: dict[str, str] = {}

    def __call__(self, rel: str) -> str:
        if not self.tokens:
            return rel
        return "/".join(self._segment(s) for s in rel.split("/"))

    def _hit(self, text: str) -> str | None:
        if len(text) < 3:
            return None
        t = identifier_token(text, self.pseudo)
        return f"[id-{t[:8]}]" if t in self.tokens else None

    def _segment(self, seg: str) -> str:
        if seg in self._segments:
            return self._segments[seg]
        shown = self._hit(seg)
        if shown is None:  # dates written with separators (1970-01-01) against the DICOM form 19700101
            dated = _DATE.sub(lambda m: self._hit(re.sub(r"\D", "", m.group(0))) or m.group(0), seg)
            shown = _RUN.sub(self._run, dated)
        self._segments[seg] = shown
        return shown

    def _run(self, m: re.Match) -> str:
        run = m.group(0)
        hit = self._hit(run)
        if hit:
            return hit
        if "." in run:  # MRN0012345.dcm, 1.2.840….dcm: the stem; else any dotted piece
            stem, ext = run.rsplit(".", 1)
            hit = self._hit(stem)
            if hit:
                return f"{hit}.{ext}"
            return ".".join(self._hit(p) or p for p in run.split("."))
        return run
