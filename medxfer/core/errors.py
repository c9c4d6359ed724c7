"""The one base of medxfer's own errors.

Every error medxfer raises on purpose (a bad spec, a broken weights file, an unknown run, a
cohort without a test fold …) derives from :class:`MedxferError`, usually together with the
built-in class it refines (``class SpecError(MedxferError, ValueError)``), so callers catching
``ValueError`` keep working. The CLI prints a :class:`MedxferError` as one line and no traceback;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class MedxferError(Exception):
    """An error whose message is written for the user: what is wrong, where, and what to do."""
