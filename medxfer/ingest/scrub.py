"""Error messages safe to report: pydicom and decoder errors quote element values and paths.

Every exception text that reaches the ingest report goes through :func:`describe_error`, which
drops quoted values (they may be identifiers) or, for decoder errors, only quoted paths and names.
"""
from __future__ import annotations

import re

_QUOTED = re.compile(r"""(['"]).*?\1""")
_UNQUOTED_PATH = re.compile(r"(/[^\s'\"]+)+")
MAX_MESSAGE = 400


def describe_error(exc: BaseException, *, scrub: bool | str = True) -> str:
    """A short, person-readable error text.

    ``scrub=True`` removes every quoted value: header-parsing errors quote element values, which
    may be identifiers. ``scrub="paths"`` (decoder errors, which quote codec names worth keeping)
    removes quoted values that look like paths or hold a ``^`` (a DICOM name)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    msg = " ".join(lines)  # decoder plugins list one failure per line: keep them all
    if scrub == "paths":
        msg = _QUOTED.sub(lambda m: "'…'" if any(c in m.group(0) for c in "/\\^") else m.group(0), msg)
        msg = _UNQUOTED_PATH.sub("…", msg)  # unquoted absolute paths too
    elif scrub:
        msg = _QUOTED.sub("'…'", msg)
    if len(msg) > MAX_MESSAGE:
        msg = msg[:MAX_MESSAGE] + "…"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
