"""Where medxfer keeps per-user state: ``$MEDXFER_HOME`` (default ``~/.medxfer``).

It holds the pseudonymisation secret (``secret``), the weights registry (``weights/``) and, unless
``$MLFLOW_TRACKING_URI`` says otherwise, the MLflow store (``mlruns/``: see :mod:`medxfer.tracking.store`)."""
from __future__ import annotations

import os
from pathlib import Path


def medxfer_home() -> Path:
    """``$MEDXFER_HOME`` or ``~/.medxfer``: the pseudonymisation secret, the weights registry, the default MLflow
    store."""
    return Path(os.environ.get("MEDXFER_HOME") or Path.home() / ".medxfer")
