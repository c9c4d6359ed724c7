"""Ingest on the real datasets in ../shared/data (skipped with a message when absent)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest

from medxfer.ingest import DecodeOptions, ingest
from medxfer.ingest.manifest import read_manifest

from ..conftest import find_identifiers


def _identifiers(folder) -> list[str]:
    """Identifier strings of the real headers: name (and its parts), ID, birth date, UIDs, institution."""
    ids = set()
    for p in folder.rglob("*"):
        if not p.is_file() or p.name == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        name = str(ds.get("PatientName", ""))
        ids.update({name, *name.replace("=", "^").split("^")})
        for kw in ("PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyInstanceUID",
                   "SeriesInstanceUID", "SOPInstanceUID", "ReferringPhysicianName"):
            ids.add(str(ds.get(kw, "") or ""))
    return sorted(i for i in ids if len(i.strip()) >= 4)


@pytest.mark.shared_data
def test_real_mr_cd_export(shared_data, tmp_path):
    src = shared_data / "dicom_mr_lspine_dicomdir"
    identifiers = _identifiers(src)
    assert any(len(i) > 4 for i in identifiers)
    out = tmp_path / "out"
    res = ingest(src, out, workers=2, options=DecodeOptions(compress=True))
    rows, _ = read_manifest(res.manifest)
    report = json.loads(res.report.read_text())
    assert report["counts"]["used"] == 67
    # 5 series; the 3 sagittal ones are single 11-slice volumes; each axial series was acquired as
    # one oblique slab per disc level, and every slab is its own volume (never stacked across angles).
    assert len({r["series"] for r in rows}) == 5
    per_series = {}
    for r in rows:
        per_series.setdefault(r["series"], []).append(r)
    slices = sorted(sum(int(r["frames"]) for r in rs) for rs in per_series.values())
    assert slices == [11, 11, 11, 17, 17]
    assert sorted(len(rs) for rs in per_series.values()) == [1, 1, 1, 5, 5]
    assert all(r["kind"] == "volume" for r in rows)
    # no identifier anywhere in the output (manifest, report, index, decompressed NIfTI)
    assert find_identifiers(out, identifiers) == []


@pytest.mark.shared_data
def test_real_ct_series_reference_image_kept_out(shared_data, tmp_path):
    src = shared_data / "dicom_ct_lspine" / "series6"
    res = ingest(src, tmp_path / "out", workers=1)
    rows, _ = read_manifest(res.manifest)
    vols = [r for r in rows if r["kind"] == "volume"]
    assert len(vols) == 1 and vols[0]["frames"] == "33" and vols[0]["shape"].endswith("x33")
    others = [r for r in rows if r["kind"] != "volume"]
    assert len(others) == 1 and others[0]["frames"] == "1"  # the sagittal reference image, on its own
    assert vols[0]["series"] == others[0]["series"] and vols[0]["intensity"] == "HU"
    import nibabel as nib

    img = nib.load(str(tmp_path / "out" / vols[0]["image"]))
    z = img.affine[:3, 2]
    # slices sorted along the normal: the affine's slice axis is a positive step of ~3 mm
    assert 2.5 < np.linalg.norm(z) < 3.5


@pytest.mark.shared_data
def test_real_japanese_cd_in_folders_named_after_the_patient(shared_data, tmp_path):
    """The real CD declares ``ISO 2022 IR 13\\ISO 2022 IR 87``: a folder named after the patient as the
    header spells it (half-width katakana and kanji), or after the katakana family name, is hidden in
    the report, and no spelling of the name is written anywhere (JSON escapes included)."""
    src = shared_data / "dicom_mr_lspine_dicomdir"
    header = pydicom.dcmread(src / "DCMDT" / "D0000000", stop_before_pixels=True)
    name = str(header.PatientName)
    family_kana = name.split("^")[0]
    assert len(header.SpecificCharacterSet) == 2 and "=" in name  # the multi-valued case
    export = tmp_path / "export"
    for folder in (name, family_kana):
        shutil.copytree(src / "DCMDT", export / folder / "DCMDT")
    res = ingest(export, tmp_path / "out", workers=2)
    report = json.loads(res.report.read_text(encoding="utf-8"))
    assert len(report["files"]) == 2 * 67
    assert all(f["path"].startswith("[id-") for f in report["files"])
    assert find_identifiers(tmp_path / "out", [name, family_kana, *name.split("=")]) == []
