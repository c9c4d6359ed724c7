"""Fast checks that medxfer.synthetic writes valid DICOM whose pixels match what it returns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid as U
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from medxfer import synthetic as S


def _read(path: Path) -> pydicom.Dataset:
    raw = Path(path).read_bytes()
    assert raw[128:132] == b"DICM", f"{path} is not a Part-10 file"
    ds = pydicom.dcmread(path)
    meta = ds.file_meta
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.ImplementationClassUID and meta.TransferSyntaxUID
    return ds


@pytest.fixture
def patient() -> S.FakePatient:
    return S.new_patient(0)


def test_new_patient_distinct_and_deterministic():
    pats = [S.new_patient(i, np.random.default_rng(7)) for i in range(6)]
    for attr in ("name", "patient_id", "birth_date", "accession"):
        assert len({getattr(p, attr) for p in pats}) == 6, attr
    assert S.new_patient(3, np.random.default_rng(7)) == pats[3]
    assert pats[0].patient_id.startswith("MRN") and len(pats[0].patient_id) == 10
    ids = pats[1].identifiers()
    assert {pats[1].name, *pats[1].name.split("^"), pats[1].birth_date, pats[1].institution} <= set(ids)


def test_ct_series_order_positions_and_pixels(tmp_path, patient):
    info = S.ct_series(tmp_path / "ct", patient, n_slices=10, rows=32, cols=40, add_localizer=True,
                       orientation=(1, 0, 0, 0, 0.8, -0.6), rng=np.random.default_rng(1))
    assert len(info.paths) == 11 and info.localizer_path == info.paths[-1]
    dss = [_read(p) for p in info.paths[:-1]]
    normal = np.cross([1, 0, 0], [0, 0.8, -0.6])
    proj = [float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)) for d in dss]
    assert np.all(np.diff(proj) > 0)
    np.testing.assert_allclose(np.diff(proj), 2.5, atol=1e-4)
    numbers = [int(d.InstanceNumber) for d in dss]
    assert sorted(numbers) == list(range(1, 11)) and numbers != sorted(numbers)
    assert numbers != sorted(numbers, reverse=True)
    assert {d.SeriesInstanceUID for d in dss} == {info.series_uid}
    assert {d.StudyInstanceUID for d in dss} == {info.study_uid}
    assert [d.SOPInstanceUID for d in dss] == info.sop_uids
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    np.testing.assert_array_equal(hu, info.volume_hu)
    # each slice has its own disk value; the marker is top-left
    assert len({float(v[16, 20]) for v in info.volume_hu}) == 10
    assert info.volume_hu[0, 0, 0] > info.volume_hu[0, -1, -1]
    d0 = dss[0]
    assert (d0.BitsAllocated, d0.BitsStored, d0.HighBit, d0.PixelRepresentation) == (16, 12, 11, 0)
    assert d0.PatientName == patient.name and d0.AccessionNumber == patient.accession
    loc = _read(info.localizer_path)
    assert list(loc.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert [float(v) for v in loc.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
    assert loc.SeriesInstanceUID == info.series_uid and loc.pixel_array.ndim == 2
    # same rng + same place -> same UIDs; another place -> different UIDs
    again = S.ct_series(tmp_path / "ct", patient, n_slices=10, rows=32, cols=40, add_localizer=True,
                        orientation=(1, 0, 0, 0, 0.8, -0.6), rng=np.random.default_rng(1))
    other = S.ct_series(tmp_path / "ct2", patient, n_slices=10, rows=32, cols=40)
    assert again.sop_uids == info.sop_uids and not set(other.sop_uids) & set(info.sop_uids)


def test_mr_series_missing_numbers_and_signed_volume(tmp_path, patient):
    mr = S.ct_series(tmp_path / "mr", patient, modality="MR", n_slices=4, rows=16, cols=16,
                     missing_instance_number=True, transfer_syntax=U.ImplicitVRLittleEndian)
    d = _read(mr.paths[0])
    assert d.SOPClassUID == U.MRImageStorage and "RescaleSlope" not in d and "InstanceNumber" not in d
    np.testing.assert_array_equal(np.stack([_read(p).pixel_array for p in mr.paths]), mr.volume_hu)
    vol = np.random.default_rng(3).integers(-1500, 1500, (3, 16, 16)).astype(float)
    ct = S.ct_series(tmp_path / "signed", patient, n_slices=3, rows=16, cols=16, volume=vol, rescale=(1.0, 0.0),
                     transfer_syntax=U.RLELossless)
    d = _read(ct.paths[0])
    assert d.PixelRepresentation == 1 and d.BitsStored == 12
    np.testing.assert_array_equal(np.stack([_read(p).pixel_array for p in ct.paths]), vol)


@pytest.mark.parametrize("modality,sop", [
    ("DX", U.DigitalXRayImageStorageForPresentation), ("CR", U.ComputedRadiographyImageStorage),
    ("PX", U.DigitalXRayImageStorageForPresentation), ("IO", U.DigitalIntraOralXRayImageStorageForPresentation),
])
def test_radiograph_modalities(tmp_path, patient, modality, sop):
    info = S.radiograph(tmp_path / "x.dcm", patient, modality=modality, rows=64, cols=80)
    d = _read(info.path)
    assert d.SOPClassUID == sop and d.Modality == modality and "ImagerPixelSpacing" in d
    assert ("PixelSpacing" in d) == (modality == "CR")
    np.testing.assert_array_equal(d.pixel_array, info.image)
    assert info.image[0, 0] == 4095 and info.image[0, 0] > info.image[-1, -1]


def test_radiograph_monochrome1_voi_lut_compressed(tmp_path, patient):
    info = S.radiograph(tmp_path / "m1.dcm", patient, monochrome1=True, voi_lut=True, rows=64, cols=80,
                        transfer_syntax=U.JPEG2000Lossless, extra={"SeriesDescription": "CHEST PA INV"})
    d = _read(info.path)
    assert d.PhotometricInterpretation == "MONOCHROME1" and d.SeriesDescription == "CHEST PA INV"
    np.testing.assert_array_equal(d.pixel_array, info.stored)
    np.testing.assert_array_equal(4095 - d.pixel_array.astype(int), info.image)
    lut = d.VOILUTSequence[0]
    assert len(lut.LUTDescriptor) == 3 and len(lut.LUTData) == 4096 and lut.LUTExplanation
    assert "WindowCenter" in d


def test_mammogram_variants(tmp_path, patient):
    plain = S.mammogram(tmp_path / "cc.dcm", patient, view="CC", laterality="R")
    d = _read(plain.path)
    assert d.SOPClassUID == U.DigitalMammographyXRayImageStorageForPresentation
    assert (d.ViewPosition, d.ImageLaterality, d.Modality) == ("CC", "R", "MG")
    seq = S.mammogram(tmp_path / "mlo.dcm", patient, view="MLO", use_sequences=True, transfer_syntax=U.RLELossless)
    d = _read(seq.path)
    assert "ViewPosition" not in d and "ImageLaterality" not in d
    assert d.ViewCodeSequence[0].CodeValue == "R-10226"
    assert d.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0].FrameLaterality == "L"
    np.testing.assert_array_equal(d.pixel_array, seq.stored)


def test_us_cine_raw_and_jpeg(tmp_path, patient):
    raw = S.us_cine(tmp_path / "rgb.dcm", patient, frames=4)
    d = _read(raw.path)
    assert d.SOPClassUID == U.UltrasoundMultiFrameImageStorage and int(d.NumberOfFrames) == 4
    assert d.PhotometricInterpretation == "RGB" and d.PlanarConfiguration == 0
    region = d.SequenceOfUltrasoundRegions[0]
    assert region.PhysicalUnitsXDirection == 3 and region.PhysicalDeltaX == pytest.approx(0.02)
    np.testing.assert_array_equal(d.pixel_array, raw.image)
    jpg = S.us_cine(tmp_path / "jpg.dcm", patient, frames=3, transfer_syntax=U.JPEGBaseline8Bit)
    d = _read(jpg.path)
    assert d.file_meta.TransferSyntaxUID == U.JPEGBaseline8Bit and d.PhotometricInterpretation == "YBR_FULL_422"
    assert d.pixel_array.shape == jpg.image.shape == (3, 48, 64, 3)
    assert np.abs(d.pixel_array.astype(int) - jpg.image).mean() < 4
    mono = S.us_cine(tmp_path / "mono.dcm", patient, frames=2, rgb=False)
    np.testing.assert_array_equal(_read(mono.path).pixel_array, mono.image)


def test_enhanced_mr_spatial_order(tmp_path, patient):
    info = S.enhanced_mr(tmp_path / "emr.dcm", patient, frames=6)
    d = _read(info.path)
    assert d.SOPClassUID == U.EnhancedMRImageStorage and int(d.NumberOfFrames) == 6
    assert d.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing == [1, 1]
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in d.PerFrameFunctionalGroupsSequence]
    assert z != sorted(z)
    np.testing.assert_array_equal(d.pixel_array, info.stored)
    np.testing.assert_array_equal(d.pixel_array[np.argsort(z)], info.image)


@pytest.mark.parametrize("ts", S.LOSSLESS_SYNTAXES, ids=lambda t: t.name.split(" (")[0][:28])
def test_compress_file_lossless_round_trip(tmp_path, patient, ts):
    ct = S.ct_series(tmp_path / "ct", patient, n_slices=2, rows=32, cols=32, volume=np.full((2, 32, 32), -900.0)
                     + np.arange(32 * 32).reshape(32, 32), rescale=(1.0, 0.0))  # signed 12-bit
    us = S.us_cine(tmp_path / "us.dcm", patient, frames=2, rows=16, cols=24)
    for src in (ct.paths[0], us.path):
        out = S.compress_file(src, tmp_path / f"out_{src.stem}.dcm", ts)
        d, orig = _read(out), _read(src)
        assert d.file_meta.TransferSyntaxUID == ts and d.SOPInstanceUID == orig.SOPInstanceUID
        np.testing.assert_array_equal(d.pixel_array, orig.pixel_array)


@pytest.mark.parametrize("ts", [U.JPEG2000, U.JPEGExtended12Bit, U.JPEGLSNearLossless])
def test_compress_file_lossy(tmp_path, patient, ts):
    src = S.radiograph(tmp_path / "dx.dcm", patient, rows=64, cols=64).path
    d, orig = _read(S.compress_file(src, tmp_path / "lossy.dcm", ts)), _read(src)
    assert d.LossyImageCompression == "01" and d.SOPInstanceUID != orig.SOPInstanceUID
    assert np.abs(d.pixel_array.astype(int) - orig.pixel_array).mean() < 40


def test_compress_file_baseline_rejects_16bit(tmp_path, patient):
    src = S.radiograph(tmp_path / "dx.dcm", patient, rows=16, cols=16).path
    with pytest.raises(ValueError, match="8-bit"):
        S.compress_file(src, tmp_path / "b.dcm", U.JPEGBaseline8Bit)


def test_sr_and_presentation_state(tmp_path, patient):
    dx = S.radiograph(tmp_path / "dx.dcm", patient, rows=16, cols=16)
    sr = _read(S.sr_document(tmp_path / "sr.dcm", patient, study_uid=dx.study_uid))
    assert sr.SOPClassUID == U.BasicTextSRStorage and "PixelData" not in sr and sr.StudyInstanceUID == dx.study_uid
    pr = _read(S.presentation_state(tmp_path / "pr.dcm", patient, referenced=dx))
    assert pr.SOPClassUID == U.GrayscaleSoftcopyPresentationStateStorage and "PixelData" not in pr
    assert pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == dx.sop_uid


def test_broken_files(tmp_path):
    files = S.broken_files(tmp_path)
    assert set(files) == {"zero_byte", "not_dicom", "truncated", "garbage_dcm", "bad_header"}
    assert files["zero_byte"].stat().st_size == 0 and files["not_dicom"].name == "notes.txt"
    for key in ("zero_byte", "not_dicom", "garbage_dcm"):
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(files[key])
    truncated = pydicom.dcmread(files["truncated"])
    assert truncated.Rows == 64
    with pytest.raises(ValueError, match="pixel data is less than expected"):
        _ = truncated.pixel_array
    assert files["bad_header"].read_bytes()[128:132] == b"DICM"
    with pytest.raises(ValueError):  # the header itself does not read: dcmread raises, before any pixel access
        pydicom.dcmread(files["bad_header"])


def test_pacs_export_with_dicomdir(tmp_path):
    labels = tmp_path / "labels.csv"
    info = S.write_pacs_export(tmp_path / "export", n_patients=2, ct_slices=4, labels_csv=labels)
    assert all(p.is_file() for p in info.files) and (info.root / "DICOMDIR") in info.files
    assert not (info.root / ".staging").exists()
    on_disk = {p for p in info.root.rglob("*") if p.is_file()}
    assert on_disk == set(info.files)
    images = [p for p in info.files if p.name != "DICOMDIR"]
    assert all(p.suffix == "" for p in images)
    fs = FileSet(pydicom.dcmread(info.root / "DICOMDIR"))
    assert {Path(inst.path) for inst in fs} == set(images)
    assert len(fs.find(Modality="CT")) == 2 * (4 + 1) and len(fs.find(Modality="MG")) == 2
    syntaxes = {_read(p).file_meta.TransferSyntaxUID for p in images}
    assert {U.RLELossless, U.JPEG2000Lossless, U.JPEGBaseline8Bit} <= syntaxes
    for p in images:
        ds = _read(p)
        if "PixelData" in ds:
            assert ds.pixel_array.size > 0
    assert info.n_items_expected == 2 * 3 + 3
    ids = {p.patient_id for p in info.patients}
    with open(labels) as fh:
        rows = list(csv.DictReader(fh))
    assert {r["PatientID"] for r in rows} == ids and {r["label"] for r in rows} == {"0", "1"}
    blob = b"".join(p.read_bytes() for p in images)
    for ident in info.identifiers:
        assert ident.encode() in blob, ident
    assert S.export_identifiers(info.root) == sorted(info.identifiers)  # the DICOMDIR adds none
    dx = [_read(p) for p in info.kinds["dx"]]
    assert [d.PhotometricInterpretation for d in dx] == ["MONOCHROME2", "MONOCHROME1"]


@pytest.mark.parametrize("layout,suffix", [("cd", ""), ("loose", ".dcm")])
def test_pacs_export_without_dicomdir(tmp_path, layout, suffix):
    info = S.write_pacs_export(tmp_path, n_patients=1, ct_slices=3, with_dicomdir=False, compressed=False,
                               layout=layout)
    assert not (tmp_path / "DICOMDIR").exists() and len(info.files) == 3 + 1 + 1 + 1 + 1 + 2 + 1
    assert {p.suffix for p in info.files} == {suffix}
    assert {_read(p).file_meta.TransferSyntaxUID for p in info.files} == {U.ExplicitVRLittleEndian}


def test_export_identifiers_are_what_the_headers_carry(tmp_path):
    """export_identifiers reads back exactly the identifiers an export wrote, whatever its seed;
    files that are not DICOM or do not read add nothing."""
    info = S.write_dental_export(tmp_path / "a", n_patients=4, rng=np.random.default_rng(2026),
                                 labels_csv=tmp_path / "a" / "labels.csv")
    (tmp_path / "a" / "notes.txt").write_text("not DICOM")
    bad = S.broken_files(tmp_path / "bad")
    (tmp_path / "a" / "bad_header.dcm").write_bytes(bad["bad_header"].read_bytes())
    assert S.export_identifiers(tmp_path / "a") == info.identifiers
    assert {p.patient_id for p in info.patients} <= set(info.identifiers)
    other = S.write_dental_export(tmp_path / "b", n_patients=4, ceph=False)  # another seed: other identifiers
    assert S.export_identifiers(other.root) == other.identifiers
    assert set(other.identifiers) != set(info.identifiers)
