"""Ingest: PACS exports, NIfTI and image folders -> a de-identified manifest and a decoded cache."""
from .cache import DecodeOptions
from .pipeline import IngestError, IngestResult, ingest
from .split import SplitError, split

__all__ = ["DecodeOptions", "IngestError", "IngestResult", "ingest", "split", "SplitError"]
