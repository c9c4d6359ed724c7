"""The error of weights that cannot be used as asked."""
from __future__ import annotations

from ...core.errors import MedxferError


class WeightsError(MedxferError, ValueError):
    """Weights that cannot be used as asked; the message says which file or source and why."""
