"""Issue 17 items 2 and 3 on the real Japanese CD: an export whose folders and files are named after the
patient in the spellings exports use (2-character kanji parts, GIVEN.FAMILY, FAMILY_GIVEN, prefixed and
zero-padded ID, DD.MM.YYYY birth date, the institution with ``_``, study dates); none reaches the output."""
from __future__ import annotations

import json
import shutil
import unicodedata

import pydicom
import pytest

from medxfer.ingest import ingest

from ..conftest import all_output_bytes, find_identifiers

ORDINARY = ("series_001", "IMG0001.dcm", "T2_axial", "DICOM", "2 mm")


def _spellings(header: pydicom.Dataset) -> list[str]:
    """Folder/file-name spellings of the header's identifiers (computed, never written into the repo)."""
    kana, kanji = str(header.PatientName).split("=")
    fam_k, giv_k = kana.split("^")
    fam, giv = kanji.split("^")
    pid = str(header.PatientID)
    digits = pid.lstrip("0")
    b, s = str(header.PatientBirthDate), str(header.StudyDate)
    institution = str(header.InstitutionName)
    return [
        fam, giv, f"{fam}_{giv}", f"{fam}{giv}", f"{giv}.{fam}", f"{fam} {giv}",  # item 2: 2-character parts
        f"{giv_k}.{fam_k}", f"{fam_k}_{giv_k}", unicodedata.normalize("NFKC", fam_k), giv_k,
        f"MRN{digits}", f"ID_{digits}", f"00{digits}", pid,
        f"{b[6:]}.{b[4:6]}.{b[:4]}", f"{b[6:]}-{b[4:6]}-{b[:4]}", f"MR{b}", f"{b[:4]}-{b[4:6]}-{b[6:]}",
        institution.replace(" ", "_"), institution.title().replace(" ", "-") + "_MR",
        s, f"{s[:4]}-{s[4:6]}-{s[6:]}", f"{s[6:]}.{s[4:6]}.{s[:4]}",
    ]


def _occurrences(root, needles: list[str]) -> list[tuple[str, str]]:
    """Short (2-character) spellings, which find_identifiers leaves out: as UTF-8 and as JSON escapes."""
    found = []
    for p, data in all_output_bytes(root):
        for s in needles:
            if s.encode() in data or json.dumps(s)[1:-1].encode() in data:
                found.append((str(p.relative_to(root)), s))
    return found


@pytest.mark.shared_data
def test_real_cd_in_folders_named_after_the_patient_in_every_spelling(shared_data, tmp_path):
    src = shared_data / "dicom_mr_lspine_dicomdir"
    files = sorted((src / "DCMDT").iterdir())
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    spellings = _spellings(header)
    export = tmp_path / "export"
    for i, f in enumerate(files):
        s = spellings[i % len(spellings)]
        # first round: a folder named after each spelling; then file names that start with one
        if i < len(spellings):
            dest = export / s / ORDINARY[i % 4] / f"IM{i:04d}"
        else:
            dest = export / "series_001" / f"{s}_{i}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    study = str(header.StudyDate)
    hierarchy = f"{study[:4]}/{study[4:6]}/{study[6:]}"  # the study date as a folder hierarchy
    (export / hierarchy / spellings[2] / "2 mm").mkdir(parents=True)
    shutil.copyfile(src / "README_upstream.md", export / hierarchy / spellings[2] / "2 mm" / "IMG0001.dcm")  # not DICOM

    for run in (1, 2):  # the second run takes the identifiers' tokens from the index
        res = ingest(export, tmp_path / "out", workers=1)
        report = json.loads(res.report.read_text(encoding="utf-8"))
        assert report["counts"]["used"] == 67, run
        paths = [f["path"] for f in report["files"]]
        assert len(paths) == 68
        for p in paths:
            assert not any(s.lower() in p.lower() for s in spellings), (run, p)
        # ordinary names beside the redacted ones are kept as they are
        named = [p for p in paths if p.startswith("series_001/")]
        assert len(named) == 67 - len(spellings) and all("[id-" in p for p in named)
        (readme,) = [p for p in paths if p.endswith("/2 mm/IMG0001.dcm")]
        assert readme.startswith("[id-") and readme.count("/") == 5 and hierarchy not in readme
        assert any("/T2_axial/IM" in p for p in paths) and any("/DICOM/IM" in p for p in paths)
        long_ones = [s for s in spellings if len(s) >= 4]
        assert find_identifiers(tmp_path / "out", long_ones) == []
        assert _occurrences(tmp_path / "out", [s for s in spellings if len(s) < 4]) == []
