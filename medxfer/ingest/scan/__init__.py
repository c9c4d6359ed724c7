"""The header pass: walk a source folder and read every file's header once, classify it, keep a de-identified summary.

It runs in worker processes (``stop_before_pixels``). A :class:`FileRecord` holds no identifier:
patient, study, series and instance identities are kept as keyed digests
(:class:`~medxfer.ingest.deid.Pseudonymizer`), everything else is technical (geometry, pixel
format, view, laterality) that the series grouping and the pixel pass need.

* :mod:`.walker` — the files under SRC (earlier outputs and link loops left out);
* :mod:`.sniff` — one file: DICOM, NIfTI, raster or not an image, from its first bytes;
* :mod:`.header` — ``dcmread`` up to the pixels and :class:`FastHeader`, the raw-element value reader;
* :mod:`.classify` — a DICOM file: an image, or skipped with a reason (DICOMDIR, no pixels, no decoder …);
* :mod:`.summary` — an image's de-identified header summary;
* :mod:`.references` — what a DICOM SEG / RT structure set refers to (keyed digests), for the mask pass;
* :mod:`.record` — :class:`FileRecord`, what the pass keeps per file.

The DICOM vocabularies live in :mod:`medxfer.ingest.vocabulary` and error scrubbing in
:mod:`medxfer.ingest.scrub`; both are re-exported here under their former ``scan`` names.
"""
from ..scrub import describe_error
from ..vocabulary import LABEL_KEYWORDS, NON_IMAGE_WITH_PIXELS, PATH_IDENTIFIERS, PROJECTION_MODALITIES
from .header import FastHeader
from .record import FileRecord
from .sniff import NIFTI_SUFFIXES, RASTER_MAGIC, read_file_record
from .walker import STATE_MARK, Walk, walk

__all__ = ["FastHeader", "FileRecord", "LABEL_KEYWORDS", "NIFTI_SUFFIXES", "NON_IMAGE_WITH_PIXELS", "PATH_IDENTIFIERS",
           "PROJECTION_MODALITIES", "RASTER_MAGIC", "STATE_MARK", "Walk", "describe_error", "read_file_record", "walk"]
