"""The header pass file by file: the skip reasons a user reads in the report, the header columns of the
manifest, and that no identifier survives in a file record."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, DigitalMammographyXRayImageStorageForPresentation, UltrasoundImageStorage

from medxfer import synthetic
from medxfer.ingest.deid import Pseudonymizer, identifier_token
from medxfer.ingest.scan.sniff import read_file_record
from medxfer.ingest.scan.walker import STATE_MARK, walk
from medxfer.ingest.scrub import describe_error

from .dicom_builders import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, image_dataset, write_image

PSEUDO = Pseudonymizer(b"unit-test-secret-0123456789abcdef")
CT_PIXELS = np.arange(12, dtype=np.uint16).reshape(3, 4)


def _record(path: Path):
    return read_file_record(path.parent, path.name, PSEUDO)


def _save(tmp_path: Path, name: str, ds: Dataset) -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------- what kind of file
def test_kind_comes_from_the_first_bytes_not_the_name(tmp_path):
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "photo.png").rename(tmp_path / "scan.dat")
    write_image(tmp_path / "notes.txt", CT_PIXELS)  # a DICOM file with a misleading extension
    (tmp_path / "image.dcm").write_text("Export notes: nothing here is DICOM\n")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "t1.nii.gz")

    raster = _record(tmp_path / "scan.dat")
    assert (raster.kind, raster.header["format"]) == ("raster", "PNG")
    assert raster.header["path_key"] == PSEUDO.digest("FilePath", "scan.dat")
    assert _record(tmp_path / "notes.txt").kind == "dicom"
    text = _record(tmp_path / "image.dcm")
    assert (text.kind, text.category) == ("skip", "not_image")
    assert "no DICOM 'DICM' marker" in text.reason
    assert _record(tmp_path / "t1.nii.gz").kind == "nifti"


def test_bids_subject_label_becomes_a_path_token(tmp_path):
    src = tmp_path / "src"
    (src / "sub-MRN777" / "anat").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), src / "sub-MRN777" / "anat" / "t1.nii")
    rec = read_file_record(src, "sub-MRN777/anat/t1.nii", PSEUDO)
    assert rec.kind == "nifti" and identifier_token("MRN777", PSEUDO) in rec.id_tokens


def test_dicom_without_preamble_or_meta_is_read_with_its_inferred_syntax(tmp_path):
    ds = image_dataset(CT_PIXELS)
    raw = Dataset()
    raw.update(ds)  # the dataset alone: no preamble, no 'DICM', no file meta (ACR-NEMA style)
    raw.save_as(tmp_path / "old.img", implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (tmp_path / "old.img").read_bytes()[128:132] != b"DICM"
    rec = _record(tmp_path / "old.img")
    assert rec.kind == "dicom", rec.reason
    assert rec.header["ts"] == pydicom.uid.ImplicitVRLittleEndian
    data = (tmp_path / "old.img").read_bytes()
    offset = rec.header["pixel_offset"]
    assert data[offset:offset + rec.header["pixel_length"]] == ds.PixelData


# ---------------------------------------------------------------- why a file is skipped
def test_broken_files_are_skipped_with_a_reason_naming_the_problem(tmp_path):
    paths = synthetic.broken_files(tmp_path)
    by_kind = {kind: _record(p) for kind, p in paths.items()}
    assert (by_kind["zero_byte"].category, by_kind["zero_byte"].reason) == ("empty", "empty file (0 bytes)")
    assert by_kind["not_dicom"].category == "not_image"
    assert by_kind["garbage_dcm"].category == "not_image"
    bad = by_kind["bad_header"]
    assert (bad.kind, bad.category) == ("skip", "unreadable")
    assert bad.reason.startswith("unreadable DICOM header: ")
    # Pixel data cut short: the header reads; the pixel pass, which knows the length, reports it.
    truncated = by_kind["truncated"]
    assert truncated.kind == "dicom"
    assert truncated.header["pixel_offset"] + truncated.header["pixel_length"] > paths["truncated"].stat().st_size


def test_a_file_cut_inside_its_header_is_skipped_as_having_no_pixel_data(tmp_path):
    good = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(good[:700])
    rec = _record(tmp_path / "cut.dcm")
    assert (rec.kind, rec.category) == ("skip", "non_image")
    assert rec.reason.startswith("CT Image Storage file without pixel data (no PixelData element")


def test_index_and_non_image_objects_are_skipped_with_their_kind_named(tmp_path):
    dicomdir = Path(get_testdata_file("DICOMDIR"))
    n_records = len(pydicom.dcmread(dicomdir).DirectoryRecordSequence)
    rec = _record(dicomdir)
    assert (rec.kind, rec.category) == ("skip", "dicomdir")
    assert rec.reason.startswith(f"DICOMDIR index ({n_records} directory records, no pixels)")

    for name, reason in (("reportsi.dcm", "non-image DICOM: Basic Text SR Storage (no pixel data)"),
                         ("rtdose.dcm", "non-image DICOM: RT Dose grid (RT Dose Storage) is not ingested as an image")):
        shutil.copy(get_testdata_file(name), tmp_path / name)
        rec = _record(tmp_path / name)
        assert (rec.kind, rec.category, rec.reason) == ("skip", "non_image", reason)

    stripped = image_dataset(CT_PIXELS)
    del stripped.PixelData
    rec = _record(_save(tmp_path, "stripped.dcm", stripped))
    assert rec.category == "non_image" and rec.reason.startswith("CT Image Storage file without pixel data")


@pytest.mark.parametrize("change,reason", [
    ("no_rows", "broken header: Rows (0028,0010) is missing"),
    ("zero_columns", "broken header: Columns (0028,0011) is not positive"),
    ("no_bits", "broken header: BitsAllocated (0028,0100) is missing"),
    ("no_sop_instance", "broken header: SOPInstanceUID (0008,0018) is missing"),
])
def test_missing_image_elements_are_named_with_their_tag(tmp_path, change, reason):
    ds = image_dataset(CT_PIXELS)
    if change == "no_rows":
        del ds.Rows
    elif change == "zero_columns":
        ds.Columns = 0
    elif change == "no_bits":
        ds["PixelData"].VR = "OW"  # pydicom needs BitsAllocated to pick OB or OW itself
        del ds.BitsAllocated
    else:
        del ds.SOPInstanceUID
        del ds.file_meta.MediaStorageSOPInstanceUID
    path = tmp_path / "broken.dcm"
    ds.save_as(path, enforce_file_format=False)
    rec = _record(path)
    assert (rec.kind, rec.category, rec.reason) == ("skip", "broken_header", reason)


def test_an_unknown_transfer_syntax_is_skipped_saying_so(tmp_path):
    ds = image_dataset(CT_PIXELS)
    ds.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.8.498.77")  # private: no codec knows it
    path = tmp_path / "private.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    rec = _record(path)
    # pydicom refuses to say whether a non-transfer-syntax UID is compressed: the file is a broken header
    assert (rec.kind, rec.category) == ("skip", "broken_header")
    assert rec.reason == "broken DICOM header: ValueError: UID is not a transfer syntax."


# ---------------------------------------------------------------- the header summary
def test_identifiers_are_kept_only_as_keyed_digests(tmp_path):
    ds = image_dataset(CT_PIXELS, AccessionNumber="ACC991", InstitutionName="St Elsewhere")
    rec = _record(_save(tmp_path, "ct.dcm", ds))
    text = json.dumps(rec.to_json())
    for value in (PATIENT_ID, "DOE", "JANE", BIRTH_DATE, "ACC991", "Elsewhere", ds.StudyInstanceUID,
                  ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert value not in text
    keys = rec.header["keys"]
    assert keys["PatientID"] == rec.header["patient"] == PSEUDO.digest("PatientID", PATIENT_ID)
    assert keys["AccessionNumber"] == PSEUDO.digest("AccessionNumber", "ACC991")
    assert rec.header["sop"] == PSEUDO.digest("SOPInstanceUID", ds.SOPInstanceUID)
    # the same values turn up redacted wherever a folder or file is named after them
    for shown in (PATIENT_ID, "doe", "jane", PATIENT_NAME, "1970-01-01", "ACC991"):
        assert identifier_token(shown, PSEUDO) in rec.id_tokens


def test_patient_without_id_is_name_and_birth_date_else_the_study(tmp_path):
    def patient_of(name: str, **attrs) -> str:
        ds = image_dataset(CT_PIXELS, **attrs)
        del ds.PatientID
        return _record(_save(tmp_path, name, ds)).header["patient"]

    a = patient_of("a.dcm")
    assert a == patient_of("b.dcm")  # same name and birth date: one patient
    assert a != patient_of("c.dcm", PatientBirthDate="19800101")
    anon1 = patient_of("d.dcm", PatientName="")
    anon2 = patient_of("e.dcm", PatientName="", StudyInstanceUID="1.2.826.0.1.3680043.8.498.3")
    assert anon1 != anon2 and anon1 == PSEUDO.digest("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1")


@pytest.mark.filterwarnings("ignore:.*for VR CS:UserWarning")  # pydicom warns on the invalid values written here
def test_copied_header_columns_must_be_code_strings(tmp_path):
    ds = image_dataset(CT_PIXELS, modality="dx", ViewPosition="pa", ImageLaterality="X")
    ds.BodyPartExamined = "Chest of Doe^Jane"  # free text where a code string belongs
    rec = _record(_save(tmp_path, "dx.dcm", ds))
    h = rec.header
    assert (h["modality"], h["view"], h["body_part"], h["laterality"]) == ("DX", "PA", "", "")


PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.4242"  # valid, but no registered name: free text to ingest


@pytest.mark.filterwarnings("ignore:.*for VR CS:UserWarning")
def test_header_values_outside_the_defined_terms_are_not_kept_only_their_keyword(tmp_path):
    """A name where a code belongs ("YAMADA" passes the code-string alphabet) never reaches the record."""
    ds = image_dataset(CT_PIXELS, modality="YAMADA", sop_class=PRIVATE_SOP_CLASS, ViewPosition="YAMADA",
                       BodyPartExamined="YAMADA", ImageLaterality="YAMADA", RescaleType="YAMADA",
                       ImageType=["ORIGINAL", "PRIMARY", "YAMADA TARO"], RescaleSlope=1, RescaleIntercept=0)
    rec = _record(_save(tmp_path, "x.dcm", ds))
    assert rec.kind == "dicom", rec.reason
    h = rec.header
    assert (h["modality"], h["body_part"], h["view"], h["laterality"], h["sop_class"]) == ("", "", "", "", "")
    assert h["image_type"] == ["ORIGINAL", "PRIMARY"] and h["rescale_type"] == "unrecognised"
    assert h["unrecognised"] == ["BodyPartExamined", "ImageLaterality", "Modality", "RescaleType", "ViewPosition"]
    text = json.dumps(rec.to_json())
    assert "YAMADA" not in text.upper() and PRIVATE_SOP_CLASS not in text


@pytest.mark.filterwarnings("ignore:.*for VR CS:UserWarning")
@pytest.mark.parametrize("attrs,expected", [
    ({"BodyPartExamined": "lspine", "ViewPosition": "ap", "Modality": "cr"}, ("LSPINE", "AP", "CR")),
    ({"BodyPartExamined": "L SPINE", "ViewPosition": "MLO", "Modality": "MG"}, ("LSPINE", "MLO", "MG")),
    ({"BodyPartExamined": "CHEST_ABDOMEN", "ViewPosition": "LL", "Modality": "DX"}, ("CHESTABDOMEN", "LL", "DX")),
])
def test_defined_terms_are_kept_in_their_standard_spelling(tmp_path, attrs, expected):
    rec = _record(_save(tmp_path, "x.dcm", image_dataset(CT_PIXELS, **attrs)))
    h = rec.header
    assert (h["body_part"], h["view"], h["modality"]) == expected and h["unrecognised"] == []


@pytest.mark.filterwarnings("ignore:.*for VR CS:UserWarning")
def test_an_odd_photometric_interpretation_is_skipped_without_quoting_it(tmp_path):
    path = write_image(tmp_path / "odd.dcm", CT_PIXELS, photometric="YAMADA^TARO")
    rec = _record(path)
    assert (rec.kind, rec.category) == ("skip", "broken_header")
    assert rec.reason == "broken header: an unrecognised PhotometricInterpretation (0028,0004)"
    missing = image_dataset(CT_PIXELS)
    del missing.PhotometricInterpretation  # missing: read as MONOCHROME2, as before
    assert _record(_save(tmp_path, "m.dcm", missing)).header["photometric"] == "MONOCHROME2"


@pytest.mark.filterwarnings("ignore:.*for VR CS:UserWarning")
@pytest.mark.parametrize("value,kept", [("YES", "YES"), ("NO", "NO"), ("no ", "NO"), (None, ""), ("MAYBE", "")])
def test_burned_in_annotation_is_recorded(tmp_path, value, kept):
    attrs = {} if value is None else {"BurnedInAnnotation": value}
    h = _record(_save(tmp_path, "x.dcm", image_dataset(CT_PIXELS, modality="US", **attrs))).header
    assert h["burned_in"] == kept
    assert ("BurnedInAnnotation" in h["unrecognised"]) == (value == "MAYBE")


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


@pytest.mark.parametrize("code,meaning,view", [
    ("399368009", "whatever the modality wrote", "MLO"),  # SNOMED CT code
    ("R-10242", "", "CC"),  # SNOMED RT code
    ("99LOCAL", "Cranio-caudal exaggerated lateral", "XCCL"),  # unknown code: the meaning, longest first
])
def test_mammography_view_from_the_view_code_sequence(tmp_path, code, meaning, view):
    ds = image_dataset(CT_PIXELS, modality="MG", sop_class=DigitalMammographyXRayImageStorageForPresentation)
    ds.ViewCodeSequence = [_code(code, meaning)]
    assert _record(_save(tmp_path, "mg.dcm", ds)).header["view"] == view


def test_laterality_from_the_functional_groups(tmp_path):
    ds = image_dataset(CT_PIXELS, modality="MG", sop_class=DigitalMammographyXRayImageStorageForPresentation)
    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    shared = Dataset()
    shared.FrameAnatomySequence = [anatomy]
    ds.SharedFunctionalGroupsSequence = [shared]
    assert _record(_save(tmp_path, "mg.dcm", ds)).header["laterality"] == "R"


def test_pixel_spacing_and_where_it_came_from(tmp_path):
    dx = _record(_save(tmp_path, "dx.dcm", image_dataset(CT_PIXELS, modality="DX", ImagerPixelSpacing=[0.2, 0.1])))
    assert (dx.header["spacing"], dx.header["spacing_source"]) == ([0.2, 0.1], "ImagerPixelSpacing")

    us = image_dataset(CT_PIXELS, modality="US", sop_class=UltrasoundImageStorage)
    region = Dataset()
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.01, 0.02  # cm per pixel
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    us.SequenceOfUltrasoundRegions = [region]
    rec = _record(_save(tmp_path, "us.dcm", us))
    assert rec.header["spacing_source"] == "UltrasoundRegions"
    np.testing.assert_allclose(rec.header["spacing"], [0.2, 0.1])  # (rows, columns) in mm

    bare = _record(_save(tmp_path, "bare.dcm", image_dataset(CT_PIXELS)))
    assert (bare.header["spacing"], bare.header["spacing_source"]) == (None, "none")


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_implicit.dcm"])
def test_native_pixel_data_offset_and_length_match_the_file(name):
    """The pixel pass reads native pixels at this offset without a second parse: it must be exact."""
    path = Path(get_testdata_file(name))
    h = _record(path).header
    assert not h["encapsulated"]
    ds = pydicom.dcmread(path)
    assert h["pixel_length"] == len(ds.PixelData)
    assert path.read_bytes()[h["pixel_offset"]:h["pixel_offset"] + h["pixel_length"]] == ds.PixelData


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_RLE.dcm"])
def test_no_pixel_offset_where_pixels_need_a_decoder(name):
    h = _record(Path(get_testdata_file(name))).header
    assert h["pixel_offset"] is None and h["encapsulated"] == (name == "MR_small_RLE.dcm")


def test_enhanced_multiframe_keeps_per_frame_positions(tmp_path):
    path = synthetic.enhanced_mr(tmp_path / "emr.dcm", synthetic.new_patient(1), frames=4, rows=8, cols=8).path
    h = _record(path).header
    ds = pydicom.dcmread(path)
    expected = [[float(x) for x in f.PlanePositionSequence[0].ImagePositionPatient]
                for f in ds.PerFrameFunctionalGroupsSequence]
    assert h["frames"] == 4 and h["frame_ipp"] == expected and len(h["frame_iop"]) == 4
    assert h["iop"] == h["frame_iop"][0]


# ---------------------------------------------------------------- the walk
def test_walk_lists_every_file_once_and_leaves_outputs_out(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "1.dcm").write_bytes(b"x")
    (src / "b.dcm").write_bytes(b"x")
    (src / "a" / "loop").symlink_to(src)  # a link back up: walked once
    (src / "out" / ".medxfer").mkdir(parents=True)
    (src / "out" / "manifest.csv").write_text("")
    (src / STATE_MARK).parent.mkdir(exist_ok=True)
    (src / "old" / STATE_MARK).parent.mkdir(parents=True)
    (src / "old" / STATE_MARK).write_text("{}")  # an earlier ingest output inside SRC
    (src / "old" / "images").mkdir()
    (src / "old" / "images" / "x.nii").write_bytes(b"x")
    walked = walk(src, outputs=(src / "out",))
    assert walked.files == ["a/1.dcm", "b.dcm"]
    assert set(walked.excluded) == {"out/manifest.csv", "old/.medxfer/index.json", "old/images/x.nii"}
    assert all("inside a medxfer output folder" in r for r in walked.excluded.values())


# ---------------------------------------------------------------- error texts
def test_error_texts_drop_quoted_values():
    exc = ValueError("Invalid value 'DOE^JANE' for PN\n  in element \"MRN0042\"")
    assert describe_error(exc) == "ValueError: Invalid value '…' for PN in element '…'"
    assert describe_error(KeyError()) == "KeyError"


def test_decoder_errors_keep_codec_names_but_drop_paths_and_names():
    exc = RuntimeError("pylibjpeg: 'openjpeg' failed on '/data/DOE^JANE/1.dcm'\ngdcm: cannot read /data/MRN0042/x.dcm")
    text = describe_error(exc, scrub="paths")
    assert text == "RuntimeError: pylibjpeg: 'openjpeg' failed on '…' gdcm: cannot read …"
    long = describe_error(RuntimeError("x" * 1000))
    assert long == "RuntimeError: " + "x" * 400 + "…"
