"""Keyed pseudonyms: the only form in which patient, study and series identities leave ingest.

A pseudonym is an HMAC-SHA256 of the identifier under a secret that never enters the output
folder. The same secret gives the same pseudonyms, so a cohort can be extended later and label
files can be joined in pseudonym space (their key column is hashed, never copied).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import re
import unicodedata


class Pseudonymizer:
    """HMAC-SHA256 pseudonyms, separated by domain (``PatientID``, ``StudyInstanceUID``…)."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self._macs: dict[str, hmac.HMAC] = {}

    def __getstate__(self) -> dict:
        return {"_secret": self._secret, "_macs": {}}  # HMAC states do not pickle

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag of the secret: equal fingerprints mean equal pseudonyms."""
        return self.digest("fingerprint", "medxfer")[:12]

    def digest(self, domain: str, value: str) -> str:
        """Full hex HMAC of ``value`` within ``domain`` (values are stripped of DICOM padding)."""
        msg = domain.encode() + b"\x00" + str(value).strip().strip("\x00").encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def fast_digest(self, domain: str, value: str) -> str:
        """:meth:`digest` of a value without padding, from a cached keyed state (path probes are many)."""
        mac = self._macs.get(domain)
        if mac is None:
            mac = self._macs[domain] = hmac.new(self._secret, domain.encode() + b"\x00", hashlib.sha256)
        m = mac.copy()
        m.update(value.encode("utf-8", "surrogateescape"))
        return m.hexdigest()

    def pseudonym(self, domain: str, value: str, *, prefix: str = "", length: int = 12) -> str:
        """A readable pseudonym, e.g. ``pat-3fa94c0b12de``."""
        return prefix + self.digest(domain, value)[:length]


# Identifier values become keyed "path tokens"; a path is shown with every part whose digest is a
# token replaced. Only digests are kept (in the index too), so redaction works on re-runs without
# storing any identifier, and it reaches every file in the export (a README in a folder named
# after a patient, a PNG named by MRN), not only the DICOM files that named the identifier.
#
# Matching compares normalised forms on both sides (NFKC, case-folded, letters and digits only):
# each identifier contributes its forms (name parts and their joins, IDs without leading zeros,
# dates as YYYYMMDD), and each path segment (or label cell) is probed in the same forms (the whole
# text, its stem, word runs, joins of adjacent runs, letter/digit/script pieces, digit runs without
# leading zeros, dates in the common spellings). Forms of 3+ characters are tokens anywhere; shorter
# name parts ("Li", "古橋") are "short" tokens, matched more narrowly (see :class:`PathRedactor`).
TOKEN_CHARS = 16
# Bump when the forms or the normalisation change: id_tokens stored by an index of another scheme no
# longer match what PathRedactor probes, so such records must have their headers read again.
TOKEN_SCHEME = 2
MIN_TOKEN = 3  # shorter forms are short tokens (name parts only)
MIN_ID_DIGITS = 4  # an ID's digits without leading zeros count from this many digits (0042 -> no "42")
MIN_ID_DIGIT_RUN = 5  # ... and an ID's digit run with a prefix (MRN0012345 -> 12345) from this many
MAX_JOIN = 8  # adjacent word runs joined into one form (FAMILY_GIVEN, Wakasa_Clinic_MR …)
MAX_FORM = 80
_LONG_DOMAIN, _SHORT_DOMAIN = "PathToken", "PathTokenShort"
NAME_KEYWORDS = frozenset({"PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                           "ReferringPhysicianName"})
ID_KEYWORDS = frozenset({"PatientID", "OtherPatientIDs", "AccessionNumber", "BIDSSubject"})
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"), 1)}
_MON = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_SEP = "[-._ /\uff0e\uff0d\uff3f\uff0f\u3000]"  # and their full-width forms
_DATE_YMD = re.compile(r"(?<!\d)(\d{4})(" + _SEP + r")(\d{1,2})\2(\d{1,2})(?!\d)")
_DATE_XYY = re.compile(r"(?<!\d)(\d{1,2})(" + _SEP + r")(\d{1,2})\2(\d{4})(?!\d)")  # DD.MM.YYYY or MM-DD-YYYY
_DATE_DMONY = re.compile(r"(?<![^\W\d_])(\d{1,2})[-._ ]?" + _MON + r"[-._ ,]*(\d{4})(?!\d)", re.I)
_DATE_MONDY = re.compile(r"(?<![^\W\d_])" + _MON + r"[-._ ]?(\d{1,2})(?:st|nd|rd|th)?[-._ ,]*(\d{4})(?!\d)", re.I)
_MONTH_WORD = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec", re.I)
_EXTENSION = re.compile(r"[A-Za-z][A-Za-z0-9]{0,6}")
_ASCII_PIECE = re.compile(r"[0-9]+|[A-Za-z]+")
_NON_ALNUM_ASCII = re.compile(r"[^0-9a-z]+")
_WORD_RUN = re.compile(r"[^\W_]+")


def _word_char(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch)[0] == "M"


def normalize_identifier(text: str) -> str:
    """The form identifiers and path pieces are compared in: NFKC, case-folded, letters and digits only.

    ``"DOE^JANE"``, ``"Doe_Jane"`` and ``"doe jane"`` all give ``"doejane"``; half-width katakana and
    full-width letters become their ordinary forms (``ﾌﾙﾊｼ`` = ``フルハシ``, ``ＭＲＮ`` = ``MRN``)."""
    text = str(text)
    if text.isascii():
        return _NON_ALNUM_ASCII.sub("", text.lower())
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return "".join(ch for ch in text if _word_char(ch))


def _script(ch: str) -> str:
    """d(igit), h(an), k(ana), g (hangul) or a (any other letter): pieces split where this changes."""
    if ch.isdigit():
        return "d"
    o = ord(ch)
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3134F \
            or o == 0x3005:
        return "h"
    if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F:
        return "k"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F or 0xFFA0 <= o <= 0xFFDC:
        return "g"
    return "a"


def _is_cjk(norm: str) -> bool:
    return bool(norm) and all(_script(ch) in "hkg" for ch in norm)


def _short_ok(norm: str) -> bool:
    """A short form that may become a token: 2 characters, or 1 Han/kana/hangul character."""
    return len(norm) == 2 or (len(norm) == 1 and _is_cjk(norm))


def _date(y: int, m: int, d: int) -> str | None:
    return f"{y:04d}{m:02d}{d:02d}" if 1800 <= y <= 2199 and 1 <= m <= 12 and 1 <= d <= 31 else None


def _digit_forms(digits: str) -> list[str]:
    """Forms a run of digits is probed in: as written, without leading zeros, as a date (YYYYMMDD,
    DDMMYYYY, MMDDYYYY; the first or last 8 digits of a longer stamp such as YYYYMMDDhhmmss)."""
    forms = [digits]
    stripped = digits.lstrip("0")
    if len(stripped) >= MIN_ID_DIGITS and stripped != digits:
        forms.append(stripped)
    n = len(digits)
    if n == 8:
        y, a, b = int(digits[:4]), int(digits[4:6]), int(digits[6:])
        forms += [_date(y, a, b), _date(int(digits[4:]), int(digits[2:4]), int(digits[:2])),
                  _date(int(digits[4:]), int(digits[:2]), int(digits[2:4]))]
    elif 9 <= n <= 14:
        for part in (digits[:8], digits[-8:]):
            forms.append(_date(int(part[:4]), int(part[4:6]), int(part[6:])))
    return [f for f in forms if f]


def identifier_forms(keyword: str, value: str) -> tuple[set[str], set[str]]:
    """The normalised forms of one header value: (forms of 3+ characters, short name-part forms).

    Names: the whole name, each ``=`` group, each component (family, given, middle) and word, and
    every order of two or three of the components joined (``FAMILY_GIVEN``, ``GIVEN.FAMILY``).
    IDs: as written and without leading zeros (4+ digits), and the digit run of a prefixed ID (5+).
    Dates (keywords ending in ``Date``): ``YYYYMMDD``. Anything else (UIDs, institution): as written.
    Multi-valued elements (backslash-joined) give the forms of each value.
    """
    long_forms: set[str] = set()
    short: set[str] = set()

    is_name = keyword in NAME_KEYWORDS

    def add(text: str) -> None:
        n = normalize_identifier(text)
        if len(n) >= MIN_TOKEN:
            long_forms.add(n[:MAX_FORM])
        elif is_name and _short_ok(n) and not n.isdigit():  # short forms: name parts only
            short.add(n)

    for v in str(value or "").split("\\"):
        v = v.strip().strip("\x00")
        if not v:
            continue
        add(v)
        if is_name:
            for group in v.split("="):
                add(group)
                # family, given, middle; never the prefix or suffix ("MR", "DR", "JR" name folders too)
                components = [c for c in group.split("^")[:3] if normalize_identifier(c)]
                words = [w for c in components for w in re.split(r"[\s,.'’\-]+", c) if normalize_identifier(w)]
                for w in components + words:
                    add(w)
                # FAMILY^GIVEN^MIDDLE; a name written without carets ("Jane Doe"): its words
                atoms = components[:3] if len(components) > 1 else words[:3]
                for k in (2, 3):
                    for perm in itertools.permutations(atoms, k):
                        add("".join(perm))
        elif keyword.endswith("Date"):
            digits = re.sub(r"\D", "", v)
            if len(digits) == 8 and _date(int(digits[:4]), int(digits[4:6]), int(digits[6:])):
                long_forms.add(digits)
        elif keyword in ID_KEYWORDS:
            n = normalize_identifier(v)
            if n.isdigit():
                stripped = n.lstrip("0")
                if len(stripped) >= MIN_ID_DIGITS:
                    long_forms.add(stripped)
            else:
                runs = re.findall(r"\d+", n)
                longest = max(runs, key=len).lstrip("0") if runs else ""
                if len(longest) >= MIN_ID_DIGIT_RUN:
                    long_forms.add(longest)
        elif keyword == "FileName" and "." in v:
            add(v.rsplit(".", 1)[0])
    return long_forms, short


@functools.lru_cache(maxsize=4096)
def _cached_forms(keyword: str, value: str) -> tuple[frozenset[str], frozenset[str]]:
    """The files of one series repeat all their identifiers but the SOP UID: forms are built once."""
    long_forms, short = identifier_forms(keyword, value)
    return frozenset(long_forms), frozenset(short)


def path_tokens(identifiers: dict[str, str], pseudo: Pseudonymizer) -> set[str]:
    """Keyed digests of the identifier forms that must never show in a reported path or a label.

    ``identifiers`` maps a DICOM keyword (or ``BIDSSubject``, ``FileName``) to its value; see
    :func:`identifier_forms` for the forms each keyword contributes."""
    out = set()
    for kw, value in identifiers.items():
        if not value:
            continue
        long_forms, short = _cached_forms(kw, str(value))
        out |= {pseudo.fast_digest(_LONG_DOMAIN, f)[:TOKEN_CHARS] for f in long_forms}
        out |= {pseudo.fast_digest(_SHORT_DOMAIN, f)[:TOKEN_CHARS] for f in short}
    return out


def identifier_token(text: str, pseudo: Pseudonymizer) -> str:
    """The keyed digest under which an identifier string is recognised (compared normalised:
    ``identifier_token("1970-01-01") == identifier_token("19700101")``)."""
    return pseudo.fast_digest(_LONG_DOMAIN, normalize_identifier(text)[:MAX_FORM])[:TOKEN_CHARS]


class PathRedactor:
    """Replace identifier-bearing parts of relative paths by ``[id-xxxxxxxx]``.

    Each ``/``-separated segment is probed in normalised forms (see :func:`normalize_identifier`):
    the whole segment and its stem (``MRN0042.png`` keeps ``.png``), every word run and every join of
    up to 8 adjacent runs (``Doe_Jane``, ``Jane.Doe``, ``Wakasa_Clinic``), dotted runs (UIDs), the
    letter/digit/script pieces of a run (``MRN0012345`` -> ``0012345``), digit runs without leading
    zeros and read as dates, and dates written ``YYYY-MM-DD``, ``DD.MM.YYYY``, ``MM-DD-YYYY``,
    ``29Mar1975``. Short name parts (2 characters, or one Han/kana/hangul character) are matched
    only as the whole segment or stem, as a piece of a segment that holds another identifier, or —
    for two Han/kana/hangul characters — as a piece of any segment: a patient "Li" hides a folder
    ``Li`` and ``Li_Wei``, never the "li" of ``slice``.
    """

    def __init__(self, tokens: set[str], pseudo: Pseudonymizer):
        self.tokens, self.pseudo = set(tokens), pseudo
        self._segments: dict[str, str] = {}
        self._digests: dict[tuple[str, str], str] = {}

    def __call__(self, rel: str) -> str:
        if not self.tokens:
            return rel
        segs = rel.split("/")
        shown = [self._segment(s) for s in segs]
        # a date as a folder hierarchy: 2019/03/12, 12/03/2019
        for i in range(len(segs) - 2):
            a, b, c = segs[i:i + 3]
            if a.isdigit() and b.isdigit() and c.isdigit() and len(b) <= 2 and {len(a), len(c)} & {4}:
                y, first, last = (a, b, c) if len(a) == 4 else (c, b, a)
                ymds = [(y, first, last)] if len(a) == 4 else [(y, first, last), (y, last, first)]
                for ymd in ymds:
                    form = _date(*(int(x) for x in ymd))
                    t = self._long(form) if form else None
                    if t:
                        shown[i:i + 3] = [f"[id-{t[:8]}]"] * 3
                        break
        return "/".join(shown)

    def contains_identifier(self, text: str) -> bool:
        """True when any part of ``text`` (a label cell, a column name) is an identifier's form."""
        return bool(self.tokens) and bool(self.scan(text))

    def redact_text(self, text: str) -> str:
        """``text`` with every identifier-bearing part replaced (``/`` is not special here)."""
        hits = self.scan(text) if self.tokens else []
        if not hits:
            return text
        hits.sort()
        merged: list[list] = []
        for s, e, t in hits:
            if merged and s < merged[-1][1]:
                last = merged[-1]
                if e - s > last[3]:
                    last[2], last[3] = t, e - s
                last[1] = max(last[1], e)
            else:
                merged.append([s, e, t, e - s])
        out, pos = [], 0
        for s, e, t, _ in merged:
            out += [text[pos:s], f"[id-{t[:8]}]"]
            pos = e
        return "".join(out) + text[pos:]

    def _segment(self, seg: str) -> str:
        shown = self._segments.get(seg)
        if shown is None:
            if len(self._segments) > 200_000:
                self._segments.clear()
            shown = self._segments[seg] = self.redact_text(seg)
        return shown

    def _token(self, domain: str, norm: str) -> str | None:
        key = (domain, norm)
        t = self._digests.get(key)
        if t is None:
            if len(self._digests) > 500_000:
                self._digests.clear()
            t = self._digests[key] = self.pseudo.fast_digest(domain, norm)[:TOKEN_CHARS]
        return t if t in self.tokens else None

    def _long(self, norm: str) -> str | None:
        return self._token(_LONG_DOMAIN, norm[:MAX_FORM]) if len(norm) >= MIN_TOKEN else None

    def _short(self, norm: str) -> str | None:
        return self._token(_SHORT_DOMAIN, norm) if _short_ok(norm) else None

    def scan(self, text: str) -> list[tuple[int, int, str]]:
        """The identifier hits in ``text``: (start, end, token) spans, possibly overlapping."""
        whole = normalize_identifier(text)
        t = self._long(whole) or self._short(whole)
        if t:
            return [(0, len(text), t)]
        hits: list[tuple[int, int, str]] = []
        pending: list[tuple[int, int, str]] = []  # short Latin name parts: hits only beside another identifier
        # the stem before a file extension or two (MRN0042.png, Li.nii.gz)
        dot = len(text)
        for _ in range(2):
            dot = text.rfind(".", 0, dot)
            if dot <= 0 or not _EXTENSION.fullmatch(text[dot + 1:].split(".")[0]):
                break
            stem = normalize_identifier(text[:dot])
            t = self._long(stem) or self._short(stem)
            if t:
                hits.append((0, dot, t))
                break
        runs = [(m.start(), m.end()) for m in _WORD_RUN.finditer(text)]
        if not text.isascii():
            runs = _attach_marks(text, runs)
        norms = [normalize_identifier(text[s:e]) for s, e in runs]
        # a join stops at a dot between two numbers (UIDs are probed as dotted chains, dates below)
        stops = [text[runs[k][1]:runs[k + 1][0]] == "." and norms[k].isdigit() and norms[k + 1].isdigit()
                 for k in range(len(runs) - 1)] + [True]
        # every run and every join of up to MAX_JOIN adjacent runs
        for i in range(len(runs)):
            acc = ""
            for j in range(i, min(len(runs), i + MAX_JOIN)):
                acc += norms[j]
                if len(acc) > MAX_FORM:
                    break
                t = self._long(acc) or (self._short(acc) if j > i and len(acc) == 2 and _is_cjk(acc) else None)
                if t:
                    hits.append((runs[i][0], runs[j][1], t))
                if stops[j]:
                    break
        # dotted chains (UIDs, 1.2.3.4.5.dcm), and the chain without its last part
        i = 0
        while i < len(runs):
            j = i
            while j + 1 < len(runs) and text[runs[j][1]:runs[j + 1][0]] == ".":
                j += 1
            if j > i:
                for k in (j, j - 1):
                    t = self._long("".join(norms[i:k + 1]))
                    if t:
                        hits.append((runs[i][0], runs[k][1], t))
                        break
            i = j + 1
        # pieces of each run (letters / digits / script), digit forms, short name parts
        for (s, e), norm in zip(runs, norms):
            for ps, pe in (_pieces(text, s, e) if not (norm.isdigit() or norm.isalpha() and text.isascii())
                           else [(s, e)]):
                piece = norm if (ps, pe) == (s, e) else normalize_identifier(text[ps:pe])
                if piece.isdigit():
                    for form in _digit_forms(piece):
                        t = self._long(form)
                        if t:
                            hits.append((ps, pe, t))
                            break
                    continue
                t = self._long(piece) if (ps, pe) != (s, e) else None
                if t:
                    hits.append((ps, pe, t))
                    continue
                t = self._short(piece)
                if t:
                    (hits if len(piece) == 2 and _is_cjk(piece) else pending).append((ps, pe, t))
        if len(runs) > 2:  # dates with separators: three numbers, or a month name
            for m in _DATE_YMD.finditer(text):
                self._date_hit(hits, m, [(m.group(1), m.group(3), m.group(4))])
            for m in _DATE_XYY.finditer(text):
                self._date_hit(hits, m, [(m.group(4), m.group(3), m.group(1)), (m.group(4), m.group(1), m.group(3))])
        if _MONTH_WORD.search(text):
            for m in _DATE_DMONY.finditer(text):
                self._date_hit(hits, m, [(m.group(3), _MONTHS[m.group(2).lower()], m.group(1))])
            for m in _DATE_MONDY.finditer(text):
                self._date_hit(hits, m, [(m.group(3), _MONTHS[m.group(1).lower()], m.group(2))])
        if hits:
            hits += pending
        return hits

    def _date_hit(self, hits: list, m: re.Match, ymds: list[tuple]) -> None:
        for y, mo, d in ymds:
            form = _date(int(y), int(mo), int(d))
            t = self._long(form) if form else None
            if t:
                hits.append((m.start(), m.end(), t))
                return


def _attach_marks(text: str, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Word runs with combining marks (Devanagari vowel signs …) kept inside the run they belong to."""
    out: list[list[int]] = []
    for s, e in runs:
        if out and all(unicodedata.category(ch)[0] == "M" for ch in text[out[-1][1]:s]):
            out[-1][1] = e
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _pieces(text: str, s: int, e: int) -> list[tuple[int, int]]:
    """A run split where the script changes: ``MRN0012345`` -> ``MRN``, ``0012345``; ``古橋MRI`` ->
    ``古橋``, ``MRI`` (combining marks stay with the character before them)."""
    if text.isascii():
        return [(m.start(), m.end()) for m in _ASCII_PIECE.finditer(text, s, e)]
    out = []
    start, kind = s, None
    for i in range(s, e):
        ch = text[i]
        k = kind if unicodedata.category(ch)[0] == "M" and kind else _script(ch)
        if kind is not None and k != kind:
            out.append((start, i))
            start = i
        kind = k
    out.append((start, e))
    return out
