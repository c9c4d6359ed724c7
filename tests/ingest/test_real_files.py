"""Ingest on real DICOM shipped with pydicom: a CD export with DICOMDIR and compressed files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest

from medxfer.ingest import ingest
from medxfer.ingest.manifest import read_manifest


def _ingest_files(tmp_path, files: list[Path], **kw):
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for f in files:
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    res = ingest(src, out, workers=1, **kw)
    rows, _ = read_manifest(res.manifest)
    report = json.loads(res.report.read_text())
    return rows, report, out


def _cached(out: Path, row: dict) -> np.ndarray:
    return np.asanyarray(nib.load(str(out / row["image"])).dataobj)


def test_cd_export_with_dicomdir_every_file_accounted(pydicom_test_files, tmp_path):
    src = pydicom_test_files / "dicomdirtests"
    res = ingest(src, tmp_path / "out", workers=2)
    report = json.loads(res.report.read_text())
    on_disk = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert len(report["files"]) == len(on_disk)  # every file exactly once
    # One patient's folder is named after their PatientID (77654033/CR1/6154): the report hides it.
    shown = {f["path"] for f in report["files"]}
    assert len(shown) == len(on_disk)
    assert not [p for p in shown if "77654033" in p]
    assert any(p.startswith("[id-") and p.endswith("/CR1/6154") for p in shown)
    assert {p for p in on_disk if not p.startswith("77654033")} <= shown  # other paths unchanged
    by_path = {f["path"]: f for f in report["files"]}
    assert by_path["DICOMDIR"]["status"] == "skipped" and "DICOMDIR" in by_path["DICOMDIR"]["reason"]
    assert all(f["reason"] for f in report["files"] if f["status"] != "used")
    rows, _ = read_manifest(res.manifest)
    assert len(rows) == report["counts"]["items"] > 0
    assert {r["modality"] for r in rows} >= {"CT", "MR", "CR"}
    # the CR images (projection X-ray) are one 2D item each
    assert all(r["kind"] == "image" for r in rows if r["modality"] == "CR")
    # images are readable by MONAI with their spacing
    from monai.transforms import LoadImage

    row = next(r for r in rows if r["kind"] == "volume")
    img = LoadImage(image_only=True)(str(tmp_path / "out" / row["image"]))
    assert list(img.shape) == [int(x) for x in row["shape"].split("x")]
    assert np.allclose(img.pixdim[:2].numpy(), [float(x) for x in row["spacing"].split("x")][:2], atol=1e-4)


LOSSLESS_PAIRS = [
    ("MR_small.dcm", "MR_small_RLE.dcm"),              # RLE
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),     # JPEG 2000 lossless
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"), # JPEG-LS lossless
    ("MR_small.dcm", "MR_small_bigendian.dcm"),        # explicit VR big endian
    ("MR_small.dcm", "MR_small_implicit.dcm"),         # implicit VR little endian
    ("SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm"),        # JPEG lossless process 14 SV1 (RGB)
]


@pytest.mark.parametrize("reference,compressed", LOSSLESS_PAIRS)
def test_lossless_syntaxes_decode_exactly(pydicom_test_files, tmp_path, reference, compressed):
    ref = pydicom.dcmread(pydicom_test_files / reference)
    expected = (ref.pixel_array.astype(np.float64) * float(ref.get("RescaleSlope", 1))
                + float(ref.get("RescaleIntercept", 0)))
    rows, report, out = _ingest_files(tmp_path, [pydicom_test_files / compressed])
    assert report["counts"]["used"] == 1, report["files"]
    got = _cached(out, rows[0])
    got = np.moveaxis(got, (0, 1), (1, 0))  # (x, y[, c]) -> (rows, cols[, c])
    np.testing.assert_array_equal(got, expected)


def test_jpeg_baseline_ybr_to_rgb(pydicom_test_files, tmp_path):
    """YBR_FULL JPEG baseline decodes to RGB close to the lossless RLE original."""
    rows, report, out = _ingest_files(tmp_path, [pydicom_test_files / "SC_rgb_jpeg_dcmtk.dcm"])
    assert rows[0]["channels"] == "1" or rows[0]["channels"] == "3"
    got = np.moveaxis(_cached(out, rows[0]), (0, 1), (1, 0)).astype(float)
    ref = pydicom.dcmread(pydicom_test_files / "SC_rgb_rle.dcm").pixel_array.astype(float)
    assert got.shape == ref.shape == (100, 100, 3)
    assert np.abs(got - ref).mean() < 3.0  # lossy, but RGB (not YBR) and in the right place


def test_deflate_and_jpeg_extended_and_j2k(pydicom_test_files, tmp_path):
    rows, report, out = _ingest_files(tmp_path, [pydicom_test_files / n
                                                 for n in ("image_dfl.dcm", "JPGExtended.dcm", "693_J2KI.dcm")])
    assert report["counts"]["used"] == 3, [f for f in report["files"] if f["status"] != "used"]
    ct = next(r for r in rows if r["modality"] == "CT")
    assert ct["intensity"] == "HU"
    arr = _cached(out, ct)
    assert arr.min() < -500  # air in HU (the file stores rescale intercept -1024)


def test_ultrasound_cine_keeps_frames_and_rgb(pydicom_test_files, tmp_path):
    rows, report, out = _ingest_files(tmp_path, [pydicom_test_files / "examples_ybr_color.dcm"])
    (row,) = rows
    assert (row["kind"], row["frames"], row["channels"], row["color"]) == ("cine", "30", "3", "rgb")
    arr = _cached(out, row)
    assert arr.shape == (320, 240, 30, 3)
    assert row["spacing_source"] == "UltrasoundRegions"
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True, ensure_channel_first=True)(str(out / row["image"]))
    assert tuple(img.shape) == (3, 320, 240, 30)
    # converted to gray on request, documented in the color column
    rows2, _, out2 = _ingest_files(tmp_path / "gray", [pydicom_test_files / "examples_ybr_color.dcm"],
                                   options=__import__("medxfer.ingest",
                                                      fromlist=["DecodeOptions"]).DecodeOptions(color="gray"))
    assert (rows2[0]["channels"], rows2[0]["color"]) == ("1", "rgb->gray")


def test_broken_real_files_are_reported_not_fatal(pydicom_test_files, tmp_path):
    names = ["JPEG-lossy.dcm", "rtplan_truncated.dcm", "reportsi.dcm", "waveform_ecg.dcm", "rtstruct.dcm",
             "CT_small.dcm"]
    rows, report, out = _ingest_files(tmp_path, [pydicom_test_files / n for n in names])
    by = {f["path"]: f for f in report["files"]}
    assert by["CT_small.dcm"]["status"] == "used"
    assert "cannot decode" in by["JPEG-lossy.dcm"]["reason"] and "JPEG Extended" in by["JPEG-lossy.dcm"]["reason"]
    assert "Basic Text SR" in by["reportsi.dcm"]["reason"]
    assert "Waveform" in by["waveform_ecg.dcm"]["reason"]
    assert "RT Structure Set" in by["rtstruct.dcm"]["reason"]
    assert len(rows) == 1


def test_folders_named_in_iso2022_scripts_are_redacted(tmp_path):
    """Japanese and Korean exports declare several character sets (``ISO 2022 IR 87``, ``IR 149``):
    a folder named after the patient exactly as the header spells it, or after a part of the name,
    is hidden in the report like a Latin one (the names were read as latin-1 escape codes before,
    so no such folder was ever recognised)."""
    charsets = Path(pydicom.data.__file__).parent / "charset_files"
    src = tmp_path / "src"
    layout = {"やまだ^たろう": "chrJapMulti.dcm", "やまだ": "chrJapMulti.dcm", "김희중": "chrKoreanMulti.dcm",
              "Yamada^Tarou=山田^太郎=やまだ^たろう": "chrH31.dcm", "たろう_scans": "chrH31.dcm"}
    for folder, name in layout.items():
        (src / folder).mkdir(parents=True)
        shutil.copy(charsets / name, src / folder / name)
    res = ingest(src, tmp_path / "out", workers=1)
    report = json.loads(res.report.read_text(encoding="utf-8"))
    text = json.dumps(report, ensure_ascii=False)  # the names as a reader sees them, not \u escapes
    assert len(report["files"]) == len(layout)  # every file accounted for
    for shown in ("やまだ", "たろう", "김희중", "Yamada", "Tarou"):
        assert shown not in text, shown
    assert all(f["path"].startswith("[id-") for f in report["files"]), [f["path"] for f in report["files"]]
