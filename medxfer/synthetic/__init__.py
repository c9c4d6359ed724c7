"""Synthetic, valid DICOM Part-10 files for tests, benchmarks and demos (a fake "PACS export").

Every writer produces a proper file (128-byte preamble, ``DICM``, file meta information with
MediaStorageSOPClassUID / MediaStorageSOPInstanceUID / TransferSyntaxUID / ImplementationClassUID)
that :func:`pydicom.dcmread` reads back and whose ``pixel_array`` decodes. The same ``rng`` seed
and output location give the same bytes.

Which module owns what (everything public is re-exported here: ``from medxfer.synthetic import X``):

* :mod:`~medxfer.synthetic.determinism` — the default random generator and UIDs reproducible
  from rng draws, patient and output path;
* :mod:`~medxfer.synthetic.patients` — :class:`FakePatient`, :func:`new_patient` (fake but realistic
  identifiers, and the list of them de-identification must remove);
* :mod:`~medxfer.synthetic.dicom` — dataset primitives: the common header (file meta, patient,
  study, series, equipment), DS strings, code items, windows;
* :mod:`~medxfer.synthetic.encoding` — transfer syntaxes: pixel encoders per syntax, saving,
  :func:`compress_file`, :data:`LOSSLESS_SYNTAXES`;
* :mod:`~medxfer.synthetic.modalities` — image generators: :func:`ct_series` (CT / MR),
  :func:`radiograph` (DX, CR, PX, IO), :func:`mammogram`, :func:`us_cine`, :func:`enhanced_mr`;
* :mod:`~medxfer.synthetic.non_image` — :func:`sr_document`, :func:`presentation_state`;
* :mod:`~medxfer.synthetic.broken` — :func:`broken_files`, deliberately broken files;
* :mod:`~medxfer.synthetic.export` — :func:`write_pacs_export` (CD layout with DICOMDIR, or loose),
  :class:`ExportInfo`, :func:`export_identifiers` (what an export's headers carry);
* :mod:`~medxfer.synthetic.cohorts` — learnable cohorts: :func:`write_dental_export` /
  :func:`dental_cohort` (the demo's data), :func:`write_mammography_export` /
  :func:`mammography_cohort`, :func:`write_lesion_pngs`.
"""

from .broken import broken_files
from .cohorts import (
    MAMMO_PATHOLOGIES,
    dental_cohort,
    mammography_cohort,
    write_dental_export,
    write_lesion_pngs,
    write_mammography_export,
)
from .dicom import PathLike
from .encoding import LOSSLESS_SYNTAXES, compress_file
from .export import ExportInfo, export_identifiers, write_pacs_export
from .modalities import MG_VIEW_CODES, InstanceInfo, SeriesInfo, ct_series, enhanced_mr, mammogram, radiograph, us_cine
from .non_image import presentation_state, sr_document
from .patients import FakePatient, new_patient

__all__ = [
    "FakePatient",
    "SeriesInfo",
    "InstanceInfo",
    "ExportInfo",
    "PathLike",
    "new_patient",
    "ct_series",
    "radiograph",
    "mammogram",
    "us_cine",
    "enhanced_mr",
    "compress_file",
    "sr_document",
    "presentation_state",
    "broken_files",
    "write_pacs_export",
    "export_identifiers",
    "write_dental_export",
    "dental_cohort",
    "write_mammography_export",
    "mammography_cohort",
    "write_lesion_pngs",
    "LOSSLESS_SYNTAXES",
    "MG_VIEW_CODES",
    "MAMMO_PATHOLOGIES",
]
