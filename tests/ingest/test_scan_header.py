"""The raw-element header reader returns what pydicom returns, on every file pydicom ships.

:class:`FastHeader` decodes element values itself (for speed); whatever it reads ends up hashed
into pseudonyms and path tokens, so a value read differently from pydicom would give a patient
another pseudonym or leave a folder named after them unredacted. Known deviations are pinned as
strict xfails: fixing one changes stored digests and must be a deliberate change.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from medxfer.ingest.scan.header import FastHeader, read_header

from .dicom_builders import write_image

DATA = Path(pydicom.data.__file__).parent
CHARSETS = DATA / "charset_files"


def _readable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return True
    except Exception:
        return False


FILES = [p for d in ("test_files", "charset_files") for p in sorted((DATA / d).rglob("*.dcm")) if _readable(p)]


def _norm(v):
    """Compare values, not types: text stripped of padding, tags as ints, empty as None."""
    if isinstance(v, (list, tuple, MultiValue)):
        return [_norm(x) for x in v] or None
    if v is None or v == "" or v == b"":
        return None
    if isinstance(v, BaseTag):
        return int(v)
    if type(v) in (int, float, bytes):
        return v
    return str(v).strip(" \x00")


def _multi_valued_charset(ds: pydicom.Dataset) -> bool:
    return isinstance(ds.get("SpecificCharacterSet"), MultiValue)


def _known_deviation(ds: pydicom.Dataset, elem, ours, theirs) -> bool:
    """Pinned below by strict xfails; everything else must match."""
    if elem.VR == "AT":
        return True  # test_at_values_match_pydicom
    if _multi_valued_charset(ds) and elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC"):
        return True  # test_iso2022_multi_valued_charset_text_matches_pydicom
    return elem.VR == "PN" and isinstance(ours, str) and ours == f"{theirs}="  # test_utf8_person_name_...


def _compare(path: Path) -> tuple[int, list]:
    ref = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    fh = FastHeader(read_header(path, force=True).ds)
    checked, mismatches = 0, []
    for elem in ref:
        if not elem.keyword or elem.VR == "SQ":
            continue
        ours, theirs = _norm(fh.get(elem.keyword)), _norm(elem.value)
        checked += 1
        if ours != theirs and not _known_deviation(ref, elem, ours, theirs):
            mismatches.append((elem.keyword, elem.VR, ours, theirs))
    return checked, mismatches


@pytest.mark.filterwarnings("ignore")
def test_every_element_of_every_shipped_file_reads_as_pydicom_reads_it():
    assert len(FILES) > 80  # pydicom's test and charset files, all of them
    checked, mismatches = 0, {}
    for path in FILES:
        n, bad = _compare(path)
        checked += n
        if bad:
            mismatches[path.name] = bad
    assert not mismatches
    assert checked > 3000


@pytest.mark.parametrize("name,patient_name", [
    ("chrRuss.dcm", "Люкceмбypг"),  # ISO_IR 144 (Cyrillic)
    ("chrGreek.dcm", "Διονυσιος"),  # ISO_IR 126
    ("chrArab.dcm", "قباني^لنزار"),  # ISO_IR 127
    ("chrFrenMulti.dcm", "Buc^Jérôme"),  # ISO_IR 100
])
def test_single_byte_character_sets_decode_names(name, patient_name):
    fh = FastHeader(read_header(CHARSETS / name, force=True).ds)
    assert fh.get("PatientName") == patient_name == str(pydicom.dcmread(CHARSETS / name).PatientName)


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_binary_numbers_in_every_byte_order(name):
    path = DATA / "test_files" / name
    fh, ds = FastHeader(read_header(path, force=True).ds), pydicom.dcmread(path)
    values = [fh.get(kw) for kw in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel")]
    assert values == [ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation, ds.SamplesPerPixel]
    assert fh.get("ImagePositionPatient") == [str(x) for x in ds.ImagePositionPatient]
    assert "Rows" in fh and "PatientComments" not in fh and fh.get("PatientComments", "-") == "-"


@pytest.mark.parametrize("name", ["chrH31.dcm", "chrH32.dcm", "chrI2.dcm", "chrJapMulti.dcm",
                                  "chrJapMultiExplicitIR6.dcm", "chrKoreanMulti.dcm"])
def test_iso2022_multi_valued_charset_text_matches_pydicom(name):
    """Japanese and Korean exports declare several character sets (ISO 2022 code extensions): names
    are decoded as pydicom decodes them, not as latin-1 escape sequences (which would hide the name
    from path redaction)."""
    fh = FastHeader(read_header(CHARSETS / name, force=True).ds)
    assert fh.get("PatientName") == str(pydicom.dcmread(CHARSETS / name).PatientName)
    assert "\x1b" not in fh.get("PatientName")


@pytest.mark.xfail(strict=True, reason="KNOWN BUG: a UTF-8 PN keeps an empty trailing component group ('=') "
                   "that pydicom drops; fixing it changes name-based pseudonyms")
def test_utf8_person_name_without_empty_trailing_group():
    fh = FastHeader(read_header(CHARSETS / "chrX1.dcm", force=True).ds)
    assert fh.get("PatientName") == str(pydicom.dcmread(CHARSETS / "chrX1.dcm").PatientName)


@pytest.mark.xfail(strict=True, reason="KNOWN BUG: AT is unpacked as one 32-bit number (element, group swapped) "
                   "instead of a (group, element) tag; ingest reads no AT element today")
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # rtdose.dcm's own UIDs
def test_at_values_match_pydicom():
    path = DATA / "test_files" / "rtdose.dcm"
    fh = FastHeader(read_header(path, force=True).ds)
    assert fh.get("FrameIncrementPointer") == pydicom.dcmread(path).FrameIncrementPointer


def test_padding_is_stripped_from_each_value(tmp_path):
    """Spaces and NULs around a value (and around each of several values) are padding, not content."""
    path = write_image(tmp_path / "x.dcm", np.zeros((2, 2), np.uint16), ImageType=["DERIVED ", " PRIMARY"],
                       StudyDescription="  Chest  ")
    fh = FastHeader(read_header(path, force=True).ds)
    assert fh.get("ImageType") == ["DERIVED", "PRIMARY"]
    assert fh.get("StudyDescription") == "Chest"
