"""A DICOMDIR checked against the files next to it: an incomplete copy of a medium is reported with counts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from medxfer.ingest import ingest, pipeline
from medxfer.ingest.scan.dicomdir import DicomdirError, check_dicomdir, count_present, referenced_files


@pytest.fixture
def cd(pydicom_test_files, tmp_path) -> Path:
    """A copy of pydicom's CD export (a DICOMDIR listing 31 files in patient folders)."""
    root = tmp_path / "cd"
    shutil.copytree(pydicom_test_files / "dicomdirtests", root)
    return root


def test_a_complete_medium_has_every_referenced_file(cd):
    refs = referenced_files(cd / "DICOMDIR")
    assert len(refs) == 31 and all((cd / r).is_file() for r in refs)
    check = check_dicomdir(cd / "DICOMDIR")
    assert (check.referenced, check.present, check.missing) == (31, 31, 0)


def test_missing_folders_are_counted(cd):
    gone = [r for r in referenced_files(cd / "DICOMDIR") if r.startswith("98892003/")]
    shutil.rmtree(cd / "98892003")
    check = check_dicomdir(cd / "DICOMDIR")
    assert check.missing == len(gone) > 0 and check.present == 31 - len(gone)


def test_names_lowered_by_a_copy_still_count(cd):
    for p in sorted(cd.rglob("*"), key=lambda p: -len(p.parts)):  # deepest first
        if p.name != "DICOMDIR":
            p.rename(p.with_name(p.name.lower()))  # CR1 -> cr1 (a CD copied by a tool that lowers names)
    assert not (cd / "77654033" / "CR1").exists()
    assert check_dicomdir(cd / "DICOMDIR").missing == 0


def test_file_ids_leaving_the_folder_never_count(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"x")
    (tmp_path / "outside").write_bytes(b"x")
    assert count_present(tmp_path / "a", ["x", "../outside", "/etc/passwd"]) == 1


def test_a_file_that_is_no_dicomdir_is_an_error_naming_nothing(tmp_path):
    (tmp_path / "DICOMDIR").write_bytes(b"\x00" * 10)
    with pytest.raises(DicomdirError) as err:
        check_dicomdir(tmp_path / "DICOMDIR")
    assert str(tmp_path) not in str(err.value)


def test_ingest_warns_with_counts_only_and_checks_again_only_when_files_change(cd, tmp_path, monkeypatch,
                                                                             pydicom_test_files):
    gone = [r for r in referenced_files(cd / "DICOMDIR") if r.startswith("98892003/")]
    shutil.rmtree(cd / "98892003")
    res = ingest(cd, tmp_path / "out", workers=1)
    report = json.loads(res.report.read_text())
    warned = [w for w in report["warnings"] if w["message"].startswith("DICOMDIR")]
    # the folder holds the DICOMDIR and five variants of it (big endian, implicit …), all listing the same files
    assert len(warned) == 6
    [warning] = [w["message"] for w in warned if w["message"].startswith("DICOMDIR DICOMDIR ")]
    assert warning.startswith(f"DICOMDIR DICOMDIR lists 31 files; {len(gone)} of them are missing from its folder "
                              f"({31 - len(gone)} present)")
    assert not any(part in w["message"] for w in warned for r in gone for part in r.split("/"))  # names: never

    def must_not_run(*a, **k):
        raise AssertionError("an unchanged re-run read the DICOMDIR again")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "check_dicomdir", must_not_run)
        again = ingest(cd, tmp_path / "out", workers=1)
    assert [w for w in again.warnings if w["message"].startswith("DICOMDIR")] == warned
    shutil.copytree(pydicom_test_files / "dicomdirtests" / "98892003", cd / "98892003")
    third = ingest(cd, tmp_path / "out", workers=1)  # the rest of the medium arrived: checked again, complete
    assert not [w for w in third.warnings if w["message"].startswith("DICOMDIR")]


@pytest.mark.shared_data
def test_real_mr_medium_with_a_missing_series(shared_data, tmp_path):
    src = tmp_path / "cd"
    shutil.copytree(shared_data / "dicom_mr_lspine_dicomdir", src)
    series = {}
    for p in sorted((src / "DCMDT").iterdir()):
        series.setdefault(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID, []).append(p)
    removed = max(series.values(), key=len)  # a whole slab of the CD not copied
    for p in removed:
        p.unlink()
    res = ingest(src, tmp_path / "out", workers=2)
    report = json.loads(res.report.read_text())
    [warning] = [w["message"] for w in report["warnings"] if w["message"].startswith("DICOMDIR")]
    assert f"lists 67 files; {len(removed)} of them are missing from its folder ({67 - len(removed)} present)" \
        in warning
    assert not any(p.name in warning for p in removed)
    assert report["counts"]["used"] == 67 - len(removed)
