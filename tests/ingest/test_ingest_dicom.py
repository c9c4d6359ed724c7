"""Ingest on DICOM the tests build: geometry, presentation, multi-frame, codecs, broken files, re-runs, de-id."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import (DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLosslessSV1, JPEGLSLossless, RLELossless)

from medxfer import synthetic
from medxfer.ingest import DecodeOptions, ingest
from medxfer.ingest.manifest import read_manifest

from ..conftest import find_identifiers


def run(src, out, **kw):
    kw.setdefault("workers", 1)
    res = ingest(src, out, **kw)
    rows, _ = read_manifest(res.manifest)
    return rows, json.loads(res.report.read_text()), res


def cached(out: Path, row: dict) -> np.ndarray:
    """The cached array back in DICOM order: (rows, cols) or (slices, rows, cols)."""
    a = np.asanyarray(nib.load(str(out / row["image"])).dataobj)
    return a.T if a.ndim in (2, 3) and row["channels"] == "1" else np.moveaxis(a, (0, 1), (1, 0))


@pytest.fixture
def patient():
    return synthetic.new_patient(1)


def test_ct_sorted_by_position_not_instance_number_localizer_apart(tmp_path, patient):
    info = synthetic.ct_series(tmp_path / "src", patient, n_slices=12, add_localizer=True,
                               shuffle_instance_numbers=True)
    rows, report, res = run(tmp_path / "src", tmp_path / "out")
    vols = [r for r in rows if r["kind"] == "volume"]
    assert len(vols) == 1 and len(rows) == 2
    vol = vols[0]
    assert vol["frames"] == "12" and vol["intensity"] == "HU" and vol["uniform_spacing"] == "1"
    np.testing.assert_array_equal(cached(tmp_path / "out", vol), info.volume_hu)  # spatial order, HU
    loc = next(r for r in rows if r["kind"] == "image")
    assert loc["series"] == vol["series"] and loc["series_part"] == "2/2"
    by = {f["path"]: f for f in report["files"]}
    assert by[info.localizer_path.relative_to(tmp_path / "src").as_posix()]["item_id"] == loc["item_id"]
    # geometry: the affine maps slice k to ImagePositionPatient of the k-th slice in spatial order (LPS->RAS)
    aff = nib.load(str(tmp_path / "out" / vol["image"])).affine
    for k in (0, 11):
        ipp = np.array(pydicom.dcmread(info.paths[k], stop_before_pixels=True).ImagePositionPatient, float)
        np.testing.assert_allclose(aff @ [0, 0, k, 1], [-ipp[0], -ipp[1], ipp[2], 1], atol=1e-4)


def test_missing_instance_numbers_and_gap_reported(tmp_path, patient):
    info = synthetic.ct_series(tmp_path / "src", patient, n_slices=10, missing_instance_number=True)
    os.remove(info.paths[4])  # a missing slice: spacing no longer uniform
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    (vol,) = rows
    assert vol["frames"] == "9" and vol["uniform_spacing"] == "0"
    assert any("non-uniform slice spacing" in w["message"] and "1 slice(s) missing" in w["message"]
               for w in report["warnings"] if w["item_id"] == vol["item_id"])
    np.testing.assert_array_equal(cached(tmp_path / "out", vol), np.delete(info.volume_hu, 4, axis=0))


def test_monochrome1_inverted_window_recorded_not_baked(tmp_path, patient):
    m2 = synthetic.radiograph(tmp_path / "src" / "m2.dcm", patient, modality="CR", monochrome1=False,
                              window=(1000, 2000))
    m1 = synthetic.radiograph(tmp_path / "src" / "m1.dcm", patient, modality="CR", monochrome1=True,
                              window=(1000, 2000))
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    by_file = {f["item_id"]: f["path"] for f in report["files"]}
    r1 = next(r for r in rows if by_file[r["item_id"]] == "m1.dcm")
    r2 = next(r for r in rows if by_file[r["item_id"]] == "m2.dcm")
    np.testing.assert_array_equal(cached(tmp_path / "out", r1), m1.image)  # higher is brighter
    np.testing.assert_array_equal(cached(tmp_path / "out", r2), m2.image)
    assert (r1["voi"], r1["voi_applied"]) == ("window", "0")
    # the window moves with the inversion: same displayed picture as the MONOCHROME2 twin
    assert float(r2["window_center"]) == 1000.0
    assert float(r1["window_center"]) == pytest.approx(4095 - 1000.0)
    assert r1["view"] == "PA" and r1["modality"] == "CR"
    rows_a, _, _ = run(tmp_path / "src", tmp_path / "out_apply", options=DecodeOptions(voi="apply"))
    assert {r["voi_applied"] for r in rows_a} == {"1"} and {r["intensity"] for r in rows_a} == {"voi"}


def test_mammography_view_and_laterality_from_tags_and_sequences(tmp_path, patient):
    synthetic.mammogram(tmp_path / "src" / "lcc.dcm", patient, view="CC", laterality="L")
    synthetic.mammogram(tmp_path / "src" / "rmlo.dcm", patient, view="MLO", laterality="R", use_sequences=True)
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    got = sorted((r["modality"], r["view"], r["laterality"], r["kind"]) for r in rows)
    assert got == [("MG", "CC", "L", "image"), ("MG", "MLO", "R", "image")]


def test_dental_px_io_and_ceph_are_2d_items(tmp_path, patient):
    synthetic.radiograph(tmp_path / "src" / "px.dcm", patient, modality="PX", rows=120, cols=300, body_part="JAW")
    synthetic.radiograph(tmp_path / "src" / "io.dcm", patient, modality="IO", rows=80, cols=60, body_part="TOOTH")
    synthetic.radiograph(tmp_path / "src" / "ceph.dcm", patient, modality="DX", view_position="LL", body_part="SKULL")
    rows, _, _ = run(tmp_path / "src", tmp_path / "out")
    got = sorted((r["modality"], r["kind"], r["shape"], r["view"]) for r in rows)
    assert got == [("DX", "image", "320x256", "LL"), ("IO", "image", "60x80", "PA"), ("PX", "image", "300x120", "PA")]
    assert all(r["spacing"] == "0.15x0.15" for r in rows)


def test_enhanced_mr_frames_sorted_spatially(tmp_path, patient):
    info = synthetic.enhanced_mr(tmp_path / "src" / "emr.dcm", patient, frames=8, shuffle_frames=True)
    rows, _, _ = run(tmp_path / "src", tmp_path / "out")
    (r,) = rows
    assert (r["kind"], r["frames"]) == ("volume", "8")
    np.testing.assert_array_equal(cached(tmp_path / "out", r), info.image)
    assert r["spacing"].endswith("x3")


def test_us_cine_rgb_frames(tmp_path, patient):
    info = synthetic.us_cine(tmp_path / "src" / "cine.dcm", patient, frames=6, rgb=True)
    rows, _, _ = run(tmp_path / "src", tmp_path / "out")
    (r,) = rows
    assert (r["kind"], r["frames"], r["channels"], r["color"], r["modality"]) == ("cine", "6", "3", "rgb", "US")
    a = np.asanyarray(nib.load(str(tmp_path / "out" / r["image"])).dataobj)  # (x, y, t, c)
    np.testing.assert_array_equal(a.transpose(2, 1, 0, 3), info.image)
    assert r["spacing"] == "0.2x0.2x1" and r["spacing_source"] == "UltrasoundRegions"
    assert float(r["frame_time_ms"]) == pytest.approx(33.3)


SYNTAXES = [RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, DeflatedExplicitVRLittleEndian]


@pytest.mark.parametrize("ts", SYNTAXES, ids=lambda t: t.name)
def test_each_lossless_syntax_exact(tmp_path, patient, ts):
    info = synthetic.ct_series(tmp_path / "plain", patient, n_slices=3, rows=40, cols=48)
    for p in info.paths:
        synthetic.compress_file(p, tmp_path / "src" / p.name, ts)
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    assert report["counts"]["used"] == 3, report["files"]
    np.testing.assert_array_equal(cached(tmp_path / "out", rows[0]), info.volume_hu)


@pytest.mark.parametrize("ts,bits", [(JPEGBaseline8Bit, 8), (JPEGExtended12Bit, 12)], ids=["baseline", "extended12"])
def test_lossy_jpeg_close(tmp_path, patient, ts, bits):
    img = (np.add.outer(np.arange(64), np.arange(80)) * ((1 << bits) - 1) / 142).astype(np.uint16)
    plain = synthetic.radiograph(tmp_path / "plain.dcm", patient, rows=64, cols=80, bits_stored=bits, image=img)
    synthetic.compress_file(plain.path, tmp_path / "src" / "x.dcm", ts)
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    assert report["counts"]["used"] == 1, report["files"]
    got = cached(tmp_path / "out", rows[0]).astype(float)
    assert np.abs(got - img).mean() < 0.02 * (1 << bits)


def test_broken_files_reported_and_run_goes_on(tmp_path, patient):
    synthetic.ct_series(tmp_path / "src" / "ct", patient, n_slices=4)
    broken = synthetic.broken_files(tmp_path / "src" / "bad")
    shutil.copy(next((tmp_path / "src" / "ct").iterdir()), tmp_path / "src" / "dup_copy")  # duplicate SOPInstanceUID
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    by = {f["path"]: f for f in report["files"]}
    assert len(by) == len(list(p for p in (tmp_path / "src").rglob("*") if p.is_file()))
    reason = lambda k: by[broken[k].relative_to(tmp_path / "src").as_posix()]["reason"]  # noqa: E731
    assert reason("zero_byte") == "empty file (0 bytes)"
    assert reason("not_dicom").startswith("not an image file")
    assert reason("truncated").startswith("truncated pixel data")
    assert "unreadable DICOM header" in reason("bad_header")
    assert reason("garbage_dcm").startswith("not an image file")
    assert by["dup_copy"]["status"] == "duplicate" and "same SOPInstanceUID" in by["dup_copy"]["reason"]
    assert all(f["status"] == "used" for p, f in by.items() if p.startswith("ct/"))
    assert rows and rows[0]["frames"] == "4"


def test_rerun_decodes_nothing_and_changes_are_picked_up(tmp_path, patient):
    synthetic.ct_series(tmp_path / "src" / "ct", patient, n_slices=5)
    synthetic.radiograph(tmp_path / "src" / "dx.dcm", patient)
    rows1, rep1, _ = run(tmp_path / "src", tmp_path / "out")
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").rglob("*.nii")}
    rows2, rep2, _ = run(tmp_path / "src", tmp_path / "out", workers=2)
    assert rep2["counts"]["decoded"] == 0 and rows2 == rows1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").rglob("*.nii")} == mtimes
    synthetic.radiograph(tmp_path / "src" / "dx.dcm", patient, window=(100, 200))  # rewritten: new content
    rows3, rep3, _ = run(tmp_path / "src", tmp_path / "out")
    assert rep3["counts"]["decoded"] == 1
    os.remove(tmp_path / "src" / "dx.dcm")
    rows4, rep4, _ = run(tmp_path / "src", tmp_path / "out")
    assert len(rows4) == 1 and len(list((tmp_path / "out" / "images").rglob("*.nii"))) == 1  # stale cache pruned


def test_workers_give_identical_output(tmp_path):
    exp = synthetic.write_pacs_export(tmp_path / "src", n_patients=2, ct_slices=6)
    rows1, rep1, _ = run(exp.root, tmp_path / "o1", workers=1)
    rows2, rep2, _ = run(exp.root, tmp_path / "o2", workers=2)
    assert rows1 == rows2 and rep1["files"] == rep2["files"]


@pytest.mark.parametrize("layout", ["cd", "loose"])  # loose: folders named <PatientID>/...
def test_pacs_export_labels_and_no_identifier_anywhere(tmp_path, caplog, capfd, layout):
    labels = tmp_path / "labels.csv"
    exp = synthetic.write_pacs_export(tmp_path / "src", n_patients=3, ct_slices=6, labels_csv=labels,
                                      with_dicomdir=layout == "cd", layout=layout)
    # a file without headers beside the DICOM: in the loose layout it sits in a folder named by PatientID
    notes = (exp.root / exp.patients[0].patient_id if layout == "loose" else exp.root) / "notes.txt"
    notes.write_text("not an image")
    with open(labels, "a") as f:
        f.write("NOT-A-PATIENT,1\n")
    caplog.set_level(logging.DEBUG)
    rows, report, res = run(exp.root, tmp_path / "out", labels=labels, key="PatientID", workers=2,
                            options=DecodeOptions(compress=True), progress=True)
    assert report["counts"]["files"] == len(exp.files) + 1
    assert any(f["path"].startswith("[id-") and f["path"].endswith("/notes.txt")
               for f in report["files"]) == (layout == "loose")
    assert report["counts"]["labels"]["unmatched_rows"] == 1
    assert report["counts"]["labels"]["items_without_label"] == 0
    assert all(r["label"] in ("0", "1") for r in rows)
    assert len({r["patient"] for r in rows}) == 3
    assert "PatientID" not in rows[0]
    # nothing identifying in any output file (incl. inside .nii.gz), nor in logs or the terminal
    assert find_identifiers(tmp_path / "out", exp.identifiers) == []
    out, err = capfd.readouterr()
    text = (out + err + caplog.text + res.summary()).lower()
    assert [i for i in exp.identifiers if len(i) >= 4 and i.lower() in text] == []
    # labels join on the same pseudonyms under the same secret; another secret gives other pseudonyms
    rows_again, _, _ = run(exp.root, tmp_path / "out2", labels=labels, key="PatientID")
    assert sorted(r["patient"] for r in rows_again) == sorted(r["patient"] for r in rows)
    assert sorted(r["item_id"] for r in rows_again) == sorted(r["item_id"] for r in rows)
    other = tmp_path / "other_secret"
    other.write_text("x" * 64)
    rows_other, _, _ = run(exp.root, tmp_path / "out3", secret_file=other)
    assert not {r["patient"] for r in rows_other} & {r["patient"] for r in rows}
    # item ids (file names, MLflow artifacts) are keyed too: not a plain hash of the SOP UID
    assert not {r["item_id"] for r in rows_other} & {r["item_id"] for r in rows}


def test_loadimage_reads_every_kind_with_spacing(tmp_path, patient):
    from monai.transforms import LoadImage

    synthetic.ct_series(tmp_path / "src" / "ct", patient, n_slices=4, spacing=(0.5, 0.8), slice_thickness=2.0)
    synthetic.radiograph(tmp_path / "src" / "dx.dcm", patient, pixel_spacing=(0.1, 0.2))
    rows, _, _ = run(tmp_path / "src", tmp_path / "out")
    for r in rows:
        img = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "out" / r["image"]))
        spacing = [float(x) for x in r["spacing"].split("x")]
        np.testing.assert_allclose(img.pixdim.numpy()[: len(spacing)], spacing, rtol=1e-5)
        assert list(img.shape[1:]) == [int(x) for x in r["shape"].split("x")]


@pytest.mark.parametrize("compress", [False, True], ids=["streamed", "in-memory"])
def test_undecodable_slice_is_reported_and_left_out_of_the_volume(tmp_path, patient, compress):
    info = synthetic.ct_series(tmp_path / "src", patient, n_slices=6)
    data = info.paths[2].read_bytes()
    info.paths[2].write_bytes(data[: len(data) - 1000])  # pixel data cut short
    rows, report, _ = run(tmp_path / "src", tmp_path / "out", options=DecodeOptions(compress=compress))
    (vol,) = rows
    assert vol["frames"] == "5" and vol["n_files"] == "5" and vol["uniform_spacing"] == "0"
    bad = next(f for f in report["files"] if f["path"] == info.paths[2].name)
    assert bad["status"] == "skipped" and bad["reason"].startswith("truncated pixel data")
    np.testing.assert_array_equal(cached(tmp_path / "out", vol), np.delete(info.volume_hu, 2, axis=0))
    assert any("could not be decoded" in w["message"] for w in report["warnings"])


def test_labels_never_copy_identifiers(tmp_path, patient):
    from medxfer.ingest.manifest import looks_like_identifier_column

    synthetic.ct_series(tmp_path / "src", patient, n_slices=3)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        " PatientID , label,accession_number,patient_mrn,Patient-Name,date_of_birth,study_uid,pleural_fluid,free_text\n"
        f"{patient.patient_id},1,{patient.accession},MRN0012345,{patient.name},{patient.birth_date},1.2.3,yes,{patient.name}\n")
    rows, report, _ = run(tmp_path / "src", tmp_path / "out", labels=labels, key="PatientID")
    (row,) = rows
    assert (row["label"], row["pleural_fluid"]) == ("1", "yes")  # header names are stripped
    for gone in ("accession_number", "patient_mrn", "Patient-Name", "date_of_birth", "study_uid", "free_text"):
        assert gone not in row  # free_text holds the patient's name: dropped by value
    assert any("dropped" in w["message"] for w in report["warnings"])
    assert find_identifiers(tmp_path / "out", patient.identifiers()) == []
    assert not looks_like_identifier_column("pleural_fluid") and looks_like_identifier_column("Patient ID")


def test_labels_errors_never_quote_the_file(tmp_path, patient):
    from medxfer.ingest import IngestError

    synthetic.ct_series(tmp_path / "src", patient, n_slices=2)
    headerless = tmp_path / "h.csv"
    headerless.write_text(f"{patient.patient_id},{patient.name},1\n")
    with pytest.raises(IngestError) as err:
        run(tmp_path / "src", tmp_path / "out", labels=headerless, key="PatientID")
    assert patient.patient_id not in str(err.value) and "first row" in str(err.value)
    latin = tmp_path / "l.csv"
    latin.write_bytes("PatientID,label\nX,\xe9\n".encode("cp1252"))
    with pytest.raises(IngestError, match="UTF-8"):
        run(tmp_path / "src", tmp_path / "out", labels=latin, key="PatientID")


def test_output_and_secret_placement(tmp_path, patient):
    from medxfer.ingest import IngestError

    synthetic.ct_series(tmp_path / "src", patient, n_slices=3)
    with pytest.raises(IngestError, match="must not be the source"):
        run(tmp_path / "src", tmp_path / "src")
    (tmp_path / "src" / "secret").write_text("s" * 64)
    with pytest.raises(IngestError, match="secret file must not be inside"):
        run(tmp_path / "src", tmp_path / "out", secret_file=tmp_path / "src" / "secret")
    (tmp_path / "src" / "secret").unlink()
    # OUT inside SRC: its files are listed as excluded, never ingested, run after run
    for _ in range(3):
        rows, report, _ = run(tmp_path / "src", tmp_path / "src" / "cohort")
        assert len(rows) == 1 and report["counts"]["used"] == 3
    assert all(f["category"] == "excluded" for f in report["files"] if f["path"].startswith("cohort/"))


def test_symlinked_folders_walked_once(tmp_path, patient):
    synthetic.ct_series(tmp_path / "real" / "ct", patient, n_slices=3)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")  # a link loop
    rows, report, _ = run(tmp_path / "src", tmp_path / "out", follow_links=True)  # the link leaves SRC: asked for
    assert [r["frames"] for r in rows] == ["3"]
    assert report["counts"]["used"] == 3


def test_missing_decoder_is_retried_on_the_next_run(tmp_path, patient, monkeypatch):
    info = synthetic.ct_series(tmp_path / "plain", patient, n_slices=2, rows=40, cols=40)
    for p in info.paths:
        synthetic.compress_file(p, tmp_path / "src" / p.name, JPEG2000Lossless)
    from medxfer.ingest.scan import classify

    with monkeypatch.context() as m:
        m.setattr(classify, "_codec_problem", lambda ts: f"cannot decode {ts.name}: no decoder installed (test)")
        rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    assert rows == [] and {f["category"] for f in report["files"]} == {"no_decoder"}
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")  # the decoder is installed now
    assert len(rows) == 1 and report["counts"]["used"] == 2


def _retag(paths, **values):
    for p in paths:
        ds = pydicom.dcmread(p)
        for k, v in values.items():
            setattr(ds, k, v)
        ds.save_as(p)


@pytest.mark.parametrize("acquisition_numbers", [True, False], ids=["by-AcquisitionNumber", "by-repeat-order"])
def test_repeated_acquisitions_become_separate_volumes(tmp_path, patient, acquisition_numbers):
    a = synthetic.ct_series(tmp_path / "src" / "a", patient, n_slices=4, volume=np.full((4, 64, 64), 100.0))
    b = synthetic.ct_series(tmp_path / "src" / "b", patient, n_slices=4, volume=np.full((4, 64, 64), 900.0))
    uid = pydicom.dcmread(a.paths[0]).SeriesInstanceUID
    _retag(b.paths, SeriesInstanceUID=uid, StudyInstanceUID=pydicom.dcmread(a.paths[0]).StudyInstanceUID)
    if acquisition_numbers:
        _retag(a.paths, AcquisitionNumber=1)
        _retag(b.paths, AcquisitionNumber=2)
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    assert len(rows) == 2 and {r["frames"] for r in rows} == {"4"} and len({r["series"] for r in rows}) == 1
    means = sorted(float(cached(tmp_path / "out", r).mean()) for r in rows)
    assert means == [100.0, 900.0]  # never a mix of the two acquisitions


def test_orientation_jitter_does_not_split_a_series(tmp_path, patient):
    info = synthetic.ct_series(tmp_path / "src", patient, n_slices=6)
    for k, p in enumerate(info.paths):  # scanner rounding noise across the 1e-3 rounding boundary
        _retag([p], ImageOrientationPatient=[1, 0, 0.0005001 if k % 2 else 0.0004999, 0, 1, 0])
    rows, _, _ = run(tmp_path / "src", tmp_path / "out")
    assert [r["frames"] for r in rows] == ["6"]


def test_enhanced_per_frame_rescale(tmp_path, patient):
    info = synthetic.enhanced_mr(tmp_path / "src" / "e.dcm", patient, frames=4, shuffle_frames=False)
    ds = pydicom.dcmread(info.path)
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pvt = pydicom.Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = k + 1, 10 * k, "US"
        item.PixelValueTransformationSequence = pydicom.Sequence([pvt])
    ds.save_as(info.path)
    rows, _, _ = run(tmp_path / "src", tmp_path / "out")
    got = cached(tmp_path / "out", rows[0])
    expected = np.stack([info.image[k].astype(np.float32) * (k + 1) + 10 * k for k in range(4)])
    np.testing.assert_allclose(got, expected)
    assert rows[0]["intensity"] == "rescaled"


def test_a_broken_copy_falls_back_to_its_intact_duplicate(tmp_path, patient):
    dx = synthetic.radiograph(tmp_path / "src" / "b_copy" / "dx.dcm", patient)
    (tmp_path / "src" / "a_copy").mkdir()
    data = dx.path.read_bytes()
    (tmp_path / "src" / "a_copy" / "dx.dcm").write_bytes(data[:-2000])  # sorts first, is kept, fails
    rows, report, _ = run(tmp_path / "src", tmp_path / "out")
    assert len(rows) == 1
    np.testing.assert_array_equal(cached(tmp_path / "out", rows[0]), dx.image)
    for _ in range(2):  # the same on a re-run
        by = {f["path"]: f for f in report["files"]}
        assert by["b_copy/dx.dcm"]["status"] == "used"
        assert by["a_copy/dx.dcm"]["status"] == "skipped" and "was used instead" in by["a_copy/dx.dcm"]["reason"]
        rows, report, _ = run(tmp_path / "src", tmp_path / "out")
        assert len(rows) == 1
