"""Where medxfer keeps per-user state: ``$MEDXFER_HOME`` (default ``~/.medxfer``)."""
from __future__ import annotations

import os
from pathlib import Path


def medxfer_home() -> Path:
    """``$MEDXFER_HOME`` or ``~/.medxfer``: the pseudonymisation secret and the weights registry."""
    return Path(os.environ.get("MEDXFER_HOME") or Path.home() / ".medxfer")
