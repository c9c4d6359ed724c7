"""DICOM SEG and RT structure sets become label volumes on their image item's grid (medxfer.ingest.masks)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medxfer.ingest import ingest
from medxfer.ingest.manifest import read_manifest

from ..conftest import find_identifiers
from .dicom_builders import ct_series, patient_points, rtstruct, seg_object, write_image

SEG_DATA = "dicom_seg_ct"


def _run(src: Path, out: Path):
    res = ingest(src, out, workers=1)
    rows, columns = read_manifest(res.manifest)
    report = json.loads(res.report.read_text())
    return rows, columns, report


def _files(report: dict) -> dict[str, dict]:
    return {f["path"]: f for f in report["files"]}


def _mask(out: Path, row: dict) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(out / row["mask"]))
    return np.asarray(img.dataobj), img


def _nrrd(path: Path) -> np.ndarray:
    """A NRRD labelmap in x, y, z order (SimpleITK, an ingest dependency, reads NRRD; its arrays are z, y, x)."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def _copy(src_root: Path, dst: Path, *names: str) -> Path:
    for name in names:
        p = src_root / name
        (shutil.copytree if p.is_dir() else shutil.copy)(p, dst / name)
    return dst


# ---------------------------------------------------------------- real SEG objects (dcmqi, highdicom)
def _ingest_real_seg(shared_data: Path, tmp_path: Path, seg: str):
    """Ingest the 3 real CT slices with one of the dcmqi SEG objects: (data folder, rows, columns, report)."""
    data = shared_data / SEG_DATA
    (tmp_path / "src" / "seg").mkdir(parents=True)
    src = _copy(data, tmp_path / "src", "ct", seg)
    return (data, *_run(src, tmp_path / "out"))


@pytest.mark.shared_data
def test_real_liver_seg_is_the_ct_items_mask_voxel_for_voxel(shared_data, tmp_path):
    data, rows, columns, report = _ingest_real_seg(shared_data, tmp_path, "seg/liver.dcm")
    assert columns[-2:] == ["mask", "segments"] and len(rows) == 1
    row = rows[0]
    assert row["mask"] == f"masks/{row['item_id']}.nii.gz" and row["segments"] == "1=Liver"
    mask, img = _mask(tmp_path / "out", row)
    image = nib.load(str(tmp_path / "out" / row["image"]))
    assert mask.shape == image.shape == (512, 512, 3) and mask.dtype == np.uint8
    assert np.array_equal(img.affine, image.affine)
    assert img.header.get_intent()[0] == "label"
    expected = _nrrd(data / "labelmaps" / "liver_seg.nrrd")
    assert np.array_equal(mask, expected) and int(mask.sum()) == 107098
    # the NRRD's first slice is the CT item's first (both run along +z): same world origin
    assert np.allclose(sitk.ReadImage(str(data / "labelmaps" / "liver_seg.nrrd")).GetOrigin(),
                       (-image.affine[0, 3], -image.affine[1, 3], image.affine[2, 3]), atol=1e-3)
    entry = _files(report)["seg/liver.dcm"]
    assert entry["status"] == "used" and entry["item_id"] == row["item_id"] and entry["overlap_voxels"] == 0
    assert report["counts"]["masks"] == {"objects": 1, "written": 1, "skipped": 0, "overlap_voxels": 0}
    assert report["counts"]["files"] == 4  # every input file accounted for


@pytest.mark.shared_data
def test_real_overlapping_segments_the_highest_segment_number_wins(shared_data, tmp_path):
    data, rows, _, report = _ingest_real_seg(shared_data, tmp_path, "seg/partial_overlaps.dcm")
    row = rows[0]
    assert row["segments"] == "1=GREEN;2=ORANGE;3=PURPLE;4=LIGHT_BLUE;5=DARK_BLUE"
    mask, _ = _mask(tmp_path / "out", row)
    groups = [_nrrd(data / "labelmaps" / f"partial_overlaps-{k}.nrrd") for k in (1, 2, 3)]
    # each group holds non-overlapping segments labelled by segment number: the highest number present wins
    assert np.array_equal(mask, np.maximum.reduce(groups))
    overlap = int(np.count_nonzero(sum((g > 0).astype(int) for g in groups) >= 2))
    assert overlap > 0
    entry = _files(report)["seg/partial_overlaps.dcm"]
    assert entry["status"] == "used" and entry["overlap_voxels"] == overlap
    assert any(f"{overlap} voxel(s) lie in more than one segment" in w["message"] for w in report["warnings"])


@pytest.mark.shared_data
def test_a_second_mask_object_on_the_same_image_is_reported_as_duplicate(shared_data, tmp_path):
    data = shared_data / SEG_DATA
    src = _copy(data, tmp_path / "src", "ct", "seg")
    rows, _, report = _run(src, tmp_path / "out")
    assert rows[0]["segments"] == "1=Liver"  # the first in path order
    files = _files(report)
    dup = files["seg/partial_overlaps.dcm"]
    assert (dup["status"], dup["category"], dup["item_id"]) == ("skipped", "duplicate_mask", rows[0]["item_id"])
    assert "seg/liver.dcm" in dup["reason"]
    assert report["counts"]["not_used_by_reason"] == {"duplicate_mask": 1}


def _frames_expected(seg_path: Path, ct_paths: list[Path]) -> np.ndarray:
    """The label volume a SEG should give, worked out from its frames with pydicom alone: each frame's
    source slice (by SOPInstanceUID), the CT slices in ascending z; fractions >= 0.5 count; the highest
    segment number wins. In cache order (x, y, z)."""
    cts = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in ct_paths),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    slice_of = {d.SOPInstanceUID: k for k, d in enumerate(cts)}
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = np.zeros((len(cts), seg.Rows, seg.Columns), dtype=np.uint8)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        inside = (frame.astype(float) / float(seg.MaximumFractionalValue) >= 0.5
                  if seg.SegmentationType == "FRACTIONAL" else frame > 0)
        k = slice_of[uid]
        out[k] = np.where(inside, np.maximum(out[k], number), out[k])
    return out.transpose(2, 1, 0)


@pytest.mark.shared_data
@pytest.mark.parametrize("name,segments,inside", [
    ("seg_image_ct_binary.dcm", "1=first segment", 638),
    ("seg_image_ct_binary_fractional.dcm", "1=first segment", 638),
    ("seg_image_ct_true_fractional.dcm", "1=first segment", 638),  # 0.502 is in, 0.251 is out
    ("seg_image_ct_binary_overlap.dcm", "1=first segment;2=second segment", 64),
])
def test_highdicom_fixtures_binary_fractional_and_overlap(shared_data, tmp_path, name, segments, inside):
    toy = shared_data / SEG_DATA / "highdicom_toy"
    src = _copy(toy, tmp_path / "src", "ct2", name)
    rows, _, report = _run(src, tmp_path / "out")
    assert len(rows) == 1 and rows[0]["kind"] == "volume" and rows[0]["segments"] == segments
    mask, _ = _mask(tmp_path / "out", rows[0])
    expected = _frames_expected(toy / name, sorted((toy / "ct2").iterdir()))
    assert mask.shape == (16, 16, 4) and np.array_equal(mask, expected)
    assert int(np.count_nonzero(mask)) == inside
    if "overlap" in name:
        assert _files(report)[name]["overlap_voxels"] == 16 and set(np.unique(mask)) == {0, 1, 2}


# ---------------------------------------------------------------- synthetic SEG: 2D item, fractional, missing
def test_seg_on_a_single_slice_image_gives_a_2d_mask_and_fractions_at_one_half(tmp_path):
    src = tmp_path / "src"
    (ct,) = ct_series(src / "ct", 1)
    fractions = np.zeros((1, 24, 32, 2), np.float32)
    fractions[0, 2:6, 3:9, 0] = 0.5  # exactly one half: in
    fractions[0, 10:12, 3:9, 0] = 0.45  # under: out
    fractions[0, 4:8, 5:15, 1] = 1.0  # overlaps segment 1 on rows 4-5, columns 5-8
    seg_object(src / "seg" / "s.dcm", [ct], fractions, ["Kidney", "Cyst"], fractional=True)
    rows, _, report = _run(src, tmp_path / "out")
    (row,) = rows
    assert row["kind"] == "image" and row["segments"] == "1=Kidney;2=Cyst"
    mask, img = _mask(tmp_path / "out", row)
    assert mask.shape == (32, 24)  # x = columns, y = rows, as the cached 2D image
    expected = np.zeros((24, 32), np.uint8)
    expected[2:6, 3:9] = 1
    expected[4:8, 5:15] = 2
    assert np.array_equal(mask, expected.T)
    assert _files(report)["seg/s.dcm"]["overlap_voxels"] == 2 * 4


def test_mask_objects_whose_images_are_missing_are_reported_and_the_run_goes_on(tmp_path):
    src = tmp_path / "src"
    ct_series(src / "ct", 3)
    absent = ct_series(tmp_path / "elsewhere", 2)  # never copied into the export
    m = np.zeros((2, 24, 32, 1), bool)
    m[:, 5:9, 5:9] = True
    seg_object(src / "masks_in" / "other_series.dcm", absent, m, ["Liver"])
    three = ct_series(tmp_path / "three", 3)
    (src / "part").mkdir()
    for k in (0, 1):  # the export holds two of the three slices the SEG is drawn on
        shutil.copy(tmp_path / "three" / f"s{k}.dcm", src / "part" / f"s{k}.dcm")
    seg_object(src / "masks_in" / "partial.dcm", three, np.ones((3, 24, 32, 1), bool), ["Liver"])
    square = patient_points(absent[0], [(4.5, 4.5), (9.5, 4.5), (9.5, 9.5), (4.5, 9.5)])
    rtstruct(src / "masks_in" / "rt_other.dcm", absent, {"GTV": [(square, "CLOSED_PLANAR")]})
    write_image(src / "bad" / "broken.dcm", np.zeros((4, 4), np.int16))  # an unrelated image
    (src / "notes.txt").write_text("hello")
    rows, columns, report = _run(src, tmp_path / "out")
    files = _files(report)
    assert len(files) == 3 + 2 + 3 + 1 + 1 == report["counts"]["files"]  # every file accounted for
    for name, why in (("masks_in/other_series.dcm", "its referenced series is not in the export"),
                      ("masks_in/partial.dcm", "1 of the 3 images it references are not in the export"),
                      ("masks_in/rt_other.dcm", "its referenced series is not in the export")):
        entry = files[name]
        assert (entry["status"], entry["category"]) == ("skipped", "mask_without_image"), name
        assert why in entry["reason"], entry["reason"]
    assert "RT Structure Set Storage" in files["masks_in/rt_other.dcm"]["reason"]
    assert "mask" in columns and all(r["mask"] == "" for r in rows)
    assert report["counts"]["not_used_by_reason"]["mask_without_image"] == 3
    assert report["counts"]["masks"]["written"] == 0 and not (tmp_path / "out" / "masks").exists()


def test_an_unreadable_mask_object_is_reported_and_the_run_goes_on(tmp_path, monkeypatch):
    """A SEG the ingest cannot open (permissions, a file gone between passes) is one skipped entry with its
    path and reason; only a full disk (the output's fault) stops the run."""
    import errno

    import highdicom

    src = tmp_path / "src"
    cts = ct_series(src / "ct", 2)
    seg_object(src / "seg" / "liver.dcm", cts, np.ones((2, 24, 32, 1), bool), ["Liver"])

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(highdicom.seg, "segread", denied)
    rows, _, report = _run(src, tmp_path / "out")
    entry = _files(report)["seg/liver.dcm"]
    assert (entry["status"], entry["category"]) == ("skipped", "mask_unusable")
    assert "cannot read it" in entry["reason"] and "Permission denied" in entry["reason"]
    assert len(rows) == 1 and rows[0]["mask"] == ""


def test_masks_of_images_that_were_not_ingested_say_so(tmp_path):
    src = tmp_path / "src"
    cts = ct_series(src / "ct", 2, BurnedInAnnotation="YES")  # skipped by the burned-in policy
    seg_object(src / "seg.dcm", cts, np.ones((2, 24, 32, 1), bool), ["Liver"])
    _, _, report = _run(src, tmp_path / "out")
    entry = _files(report)["seg.dcm"]
    assert entry["category"] == "mask_without_image" and "were not ingested" in entry["reason"]


def test_an_export_without_mask_objects_keeps_its_manifest_columns(tmp_path):
    ct_series(tmp_path / "src", 2)
    _, columns, report = _run(tmp_path / "src", tmp_path / "out")
    assert "mask" not in columns and "masks" not in report["counts"]


def test_a_mask_column_from_the_labels_csv_is_kept(tmp_path):
    src = tmp_path / "src"
    cts = ct_series(src / "ct", 2)
    seg_object(src / "seg.dcm", cts, np.ones((2, 24, 32, 1), bool), ["Liver"])
    labels = tmp_path / "labels.csv"
    labels.write_text(f"PatientID,mask,grade\n{cts[0].PatientID},my/own_mask.nii.gz,2\n")
    res = ingest(src, tmp_path / "out", workers=1, labels=labels, key="PatientID")
    rows, columns = read_manifest(res.manifest)
    assert columns.count("mask") == 1 and rows[0]["mask"] == "my/own_mask.nii.gz" and rows[0]["grade"] == "2"
    report = json.loads(res.report.read_text())
    assert any("mask from the labels CSV" in w["message"] for w in report["warnings"])
    assert (tmp_path / "out" / "masks").is_dir()


# ---------------------------------------------------------------- RT structure sets
def _square(ds, c0, r0, c1, r1):
    """A rectangle whose edges run half a pixel outside pixel centres c0..c1, r0..r1 (no edge case)."""
    return patient_points(ds, [(c0 - 0.5, r0 - 0.5), (c1 + 0.5, r0 - 0.5), (c1 + 0.5, r1 + 0.5), (c0 - 0.5, r1 + 0.5)])


@pytest.mark.parametrize("contour_images", [False, True])
def test_rtstruct_polygons_are_rasterised_on_the_series_grid(tmp_path, contour_images):
    src = tmp_path / "src"
    # files named against the slice order: the item is stacked by position, and so is the mask
    cts = ct_series(src / "ct", 5, names=[f"img{9 - k}.dcm" for k in range(5)])
    body = [(_square(cts[k], 2, 3, 29, 20), "CLOSED_PLANAR") for k in (1, 2, 3)]
    ring = [(_square(cts[2], 8, 4, 23, 15), "CLOSED_PLANAR"), (_square(cts[2], 12, 7, 19, 11), "CLOSED_PLANAR")]
    lesion = [(patient_points(cts[3], [(4, 10), (6, 10), (6, 14), (4, 14)]), "CLOSED_PLANAR"),  # vertices on centres
              (patient_points(cts[3], [(5, 5)]), "POINT")]
    off = [(list(np.asarray(_square(cts[0], 1, 1, 3, 3)).reshape(-1, 3).__add__([0, 0, 40.0]).ravel()),
            "CLOSED_PLANAR")]  # 40 mm above the series: on no slice
    rtstruct(src / "rt" / "rs.dcm", cts, {"Body": body, "Ring": ring, "Lesion": lesion, "Far": off},
             contour_images=contour_images)
    rows, _, report = _run(src, tmp_path / "out")
    (row,) = rows
    assert row["segments"] == "1=Body;2=Ring;3=Lesion;4=Far"
    mask, img = _mask(tmp_path / "out", row)
    assert np.array_equal(img.affine, nib.load(str(tmp_path / "out" / row["image"])).affine)
    expected = np.zeros((32, 24, 5), np.uint8)  # x = column, y = row, z = slice
    expected[2:30, 3:21, 1:4] = 1
    expected[8:24, 4:16, 2] = 2
    expected[12:20, 7:12, 2] = 1  # the ring's hole shows the body beneath
    expected[4:7, 10:15, 3] = 3  # vertices on pixel centres: the edge pixels are in
    assert np.array_equal(mask, expected)
    entry = _files(report)["rt/rs.dcm"]
    ring_voxels, lesion_voxels = 16 * 12 - 8 * 5, 3 * 5
    assert entry["status"] == "used" and entry["overlap_voxels"] == ring_voxels + lesion_voxels
    messages = " ".join(w["message"] for w in report["warnings"])
    assert "1 contour(s) lie on no slice" in messages and "1 POINT contour(s) left out" in messages


# ---------------------------------------------------------------- identifiers
def test_no_identifier_from_a_seg_header_or_its_folder_leaves_ingest(tmp_path):
    """The CT was anonymised, the SEG was not: its header names the patient (UTF-8 kanji) and it lies in a
    folder named after the patient; a segment label holds the name too."""
    src = tmp_path / "src"
    cts = ct_series(src / "ct", 2, PatientName="ANON^", PatientID="ANON01", PatientBirthDate="")
    m = np.zeros((2, 24, 32, 3), bool)
    m[:, 2:5, 2:5, 0] = m[:, 10:12, 10:12, 1] = m[:, 15:17, 15:17, 2] = True
    # the third label holds a plan date that is in no header: date-like free text is not kept either
    seg_object(src / "山田太郎" / "seg.dcm", cts, m, ["山田 liver", "Spleen", "PTV 12/03/2021"],
               SpecificCharacterSet="ISO_IR 192",
               PatientName="山田^太郎", PatientID="YMD0077123", PatientBirthDate="19580214")
    (src / "山田太郎" / "山田_太郎_notes.txt").write_text("x")
    # an RT structure set of another (made-up) name, in a folder named after it: a second mask of the item
    square = patient_points(cts[0], [(1, 1), (4, 1), (4, 4)])
    rtstruct(src / "鈴木花子" / "rs.dcm", cts, {"鈴木": [(square, "CLOSED_PLANAR")]},
             SpecificCharacterSet="ISO_IR 192", PatientName="鈴木^花子", PatientID="SZK55501")
    rows, _, report = _run(src, tmp_path / "out")
    assert rows[0]["segments"] == "1=segment1;2=Spleen;3=segment3"
    paths = [f["path"] for f in report["files"]]
    assert len(paths) == 5 and not any(n in p for p in paths for n in ("山田", "太郎", "鈴木", "花子"))
    rt_entry = next(f for f in report["files"] if f["path"].endswith("/rs.dcm"))
    assert rt_entry["path"].startswith("[id-") and rt_entry["category"] == "duplicate_mask"
    seg_entry = next(f for f in report["files"] if f["path"].endswith("/seg.dcm"))
    assert seg_entry["status"] == "used"
    assert any("segment name(s) held an identifier" in w["message"] for w in report["warnings"])
    assert find_identifiers(tmp_path / "out", ["山田", "太郎", "山田太郎", "YMD0077123", "19580214", "鈴木", "花子",
                                               "SZK55501"]) == []


def test_a_rerun_keeps_the_masks_and_a_removed_seg_takes_its_mask_along(tmp_path):
    src = tmp_path / "src"
    cts = ct_series(src / "ct", 2)
    m = np.zeros((2, 24, 32, 1), bool)
    m[1, 3:7, 4:9] = True
    seg_object(src / "seg.dcm", cts, m, ["Liver"])
    out = tmp_path / "out"
    first, _, _ = _run(src, out)
    again, _, report = _run(src, out)
    assert again == first and report["counts"]["decoded"] == 0
    assert np.array_equal(_mask(out, again[0])[0], m[..., 0].transpose(2, 1, 0))
    (src / "seg.dcm").unlink()
    rows, columns, _ = _run(src, out)
    assert "mask" not in columns and not (out / "masks").exists()


def test_an_index_from_before_masks_reads_its_non_image_records_again(tmp_path):
    src = tmp_path / "src"
    cts = ct_series(src / "ct", 2)
    seg_object(src / "seg.dcm", cts, np.ones((2, 24, 32, 1), bool), ["Liver"])
    out = tmp_path / "out"
    _run(src, out)
    index_file = out / ".medxfer" / "index.json"
    doc = json.loads(index_file.read_text())
    for rec in doc["files"].values():  # as an earlier version wrote a SEG: a non-image skip without its SOP class
        if rec["kind"] == "mask":
            rec.update(kind="skip", category="non_image", reason="non-image DICOM", header={})
    index_file.write_text(json.dumps(doc))
    rows, _, _ = _run(src, out)
    assert rows[0]["segments"] == "1=Liver"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rt-utils saves with pydicom 2 attributes
def test_rtstruct_written_by_rt_utils_gives_back_its_masks(tmp_path):
    """rt-utils traces each mask through its border pixels' centres (holes as inner contours): ingest gives
    the same voxels back. Square pixels: rt-utils swaps the two PixelSpacing values."""
    rt_utils = pytest.importorskip("rt_utils")
    src = tmp_path / "src"
    ct_series(src / "ct", 4, spacing=(0.7, 0.7))
    rt = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(src / "ct"))
    a = np.zeros((24, 32, 4), bool)  # rt-utils: (rows, columns, slices in position order)
    a[5:15, 3:20, 1] = True
    a[8:11, 8:12, 1] = False  # a hole
    yy, xx = np.mgrid[:24, :32]
    a[..., 2] = (yy - 12) ** 2 / 49 + (xx - 16) ** 2 / 100 <= 1  # an ellipse
    b = np.zeros_like(a)
    b[2:6, 2:6, 3] = True
    b[4:10, 4:9, 2] = True  # overlaps the ellipse: B (the higher ROI number) wins
    rt.add_roi(mask=a, name="A")
    rt.add_roi(mask=b, name="B")
    (src / "rt").mkdir()
    rt.save(str(src / "rt" / "rs.dcm"))
    rows, _, report = _run(src, tmp_path / "out")
    assert rows[0]["segments"] == "1=A;2=B"
    mask, _ = _mask(tmp_path / "out", rows[0])
    assert np.array_equal(mask, np.where(b, 2, a.astype(np.uint8)).transpose(1, 0, 2))
    assert _files(report)["rt/rs.dcm"]["overlap_voxels"] == int(np.count_nonzero(a & b))
