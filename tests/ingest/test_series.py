"""Grouping files into items: what becomes a volume, in which slice order, and what stays a 2D item."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medxfer.ingest import ingest, pipeline
from medxfer.ingest.manifest import read_manifest
from medxfer.ingest.scan.record import FileRecord
from medxfer.ingest.series import compare_copies, group_records, shared_sop_paths, slice_spacing

from ..conftest import find_identifiers
from .dicom_builders import PATIENT_ID, write_image

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
TILTED = [1.0, 0.0, 0.0, 0.0, float(np.cos(0.3)), float(np.sin(0.3))]  # rotated 0.3 rad about x


def _normal(iop):
    return np.cross(iop[:3], iop[3:])


def _slice(path: str, along: float, *, iop=AXIAL, series: str = "ser1", modality: str = "CT", sop: str | None = None,
           localizer: bool = False, acquisition: float | None = None, **header) -> FileRecord:
    """A CT slice at ``along`` mm along its normal (plus a sideways offset that sorting must ignore)."""
    ipp = list(np.asarray([10.0, -5.0, 0.0]) + along * _normal(iop))
    h = {"sop": sop or f"sop-{path}", "patient": "p1", "series": series, "modality": modality, "frames": 1,
         "iop": list(iop), "ipp": [float(x) for x in ipp], "rows": 4, "cols": 4, "echo": None, "temporal": None,
         "localizer": localizer, "spp": 1, "bits_allocated": 16, "pixel_representation": 0,
         "photometric": "MONOCHROME2", "spacing": [0.5, 0.5], "acquisition": acquisition}
    h.update(header)
    return FileRecord(path, 100, 1, "dicom", header=h)


def test_slices_are_ordered_by_position_along_the_normal_not_by_name_or_instance_number():
    # names (and InstanceNumbers, which the header pass does not even keep) run against the positions
    positions = [6.0, -3.0, 0.0, 9.0, 3.0]
    records = [_slice(f"IM{k}.dcm", z, iop=TILTED) for k, z in enumerate(positions)]
    g = group_records(records)
    [vol] = g.items
    assert vol.kind == "volume" and vol.series_part == "1/1"
    order = np.argsort(positions)
    assert vol.files == [f"IM{k}.dcm" for k in order]
    base = float(np.dot([10.0, -5.0, 0.0], _normal(TILTED)))
    assert [float(np.dot(p, _normal(TILTED))) - base for p in vol.positions] == pytest.approx(sorted(positions))


def test_an_oblique_two_slab_series_gives_two_volumes_of_one_series():
    slab1 = [_slice(f"a{k}.dcm", k * 3.0) for k in range(4)]
    slab2 = [_slice(f"b{k}.dcm", k * 3.0, iop=TILTED) for k in range(3)]
    g = group_records(slab1 + slab2)
    assert sorted((it.kind, len(it.files), it.series_part) for it in g.items) == [
        ("volume", 3, "2/2"), ("volume", 4, "1/2")]  # larger volume first
    assert {tuple(sorted(it.files)) for it in g.items} == {tuple(r.path for r in slab1), tuple(r.path for r in slab2)}


def test_a_localizer_is_kept_apart_as_a_2d_item():
    stack = [_slice(f"s{k}.dcm", k * 2.0) for k in range(5)]
    scout = _slice("scout.dcm", 0.0, iop=[0.0, 1.0, 0.0, 0.0, 0.0, -1.0], localizer=True)
    g = group_records(stack + [scout])
    kinds = {it.files[0]: (it.kind, it.series_part) for it in g.items}
    assert kinds["scout.dcm"] == ("image", "2/2")
    assert [it.kind for it in g.items].count("volume") == 1
    assert g.notes["scout.dcm"] == "localizer kept as its own 2D item"


def test_orientation_jitter_below_the_tolerance_does_not_split_a_volume():
    jittered = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0004]
    g = group_records([_slice(f"s{k}.dcm", k * 2.0, iop=jittered if k % 2 else AXIAL) for k in range(6)])
    assert [(it.kind, len(it.files)) for it in g.items] == [("volume", 6)]


@pytest.mark.parametrize("numbered", [True, False], ids=["by-AcquisitionNumber", "by-repeat-order"])
def test_repeated_acquisitions_at_the_same_positions_become_separate_volumes(numbered):
    first = [_slice(f"a{k}.dcm", k * 2.0, acquisition=1.0 if numbered else None) for k in range(3)]
    second = [_slice(f"b{k}.dcm", k * 2.0, acquisition=2.0 if numbered else None) for k in range(3)]
    g = group_records(first + second)
    assert sorted(sorted(it.files) for it in g.items) == [[r.path for r in first], [r.path for r in second]]
    assert all(it.kind == "volume" for it in g.items)
    assert "repeated acquisition at the same positions: stack 1 of 2" in g.notes.values()


def test_duplicates_keep_the_first_path_and_projection_images_are_one_item_each():
    a = _slice("a.dcm", 0.0, modality="DX", sop="same")
    b = _slice("b.dcm", 0.0, modality="DX", sop="same")
    c = _slice("c.dcm", 2.0, modality="DX")
    g = group_records([b, c, a])
    assert g.duplicates == {"b.dcm": "a.dcm"}
    assert sorted((it.kind, it.files[0]) for it in g.items) == [("image", "a.dcm"), ("image", "c.dcm")]


def test_multiframe_with_parallel_frame_geometry_is_a_volume_else_a_cine():
    frame_ipp = [[0.0, 0.0, z] for z in (4.0, 0.0, 8.0, 2.0)]
    h = {"sop": "mf", "patient": "p1", "series": "s", "modality": "MR", "frames": 4, "iop": AXIAL,
         "frame_iop": [AXIAL] * 4, "frame_ipp": frame_ipp}
    [vol] = group_records([FileRecord("mr.dcm", 1, 1, "dicom", header=h)]).items
    assert vol.kind == "volume" and vol.frame_order == [1, 3, 0, 2]
    assert vol.positions == [frame_ipp[i] for i in (1, 3, 0, 2)]
    us = dict(h, sop="us", modality="US")
    [cine] = group_records([FileRecord("us.dcm", 1, 1, "dicom", header=us)]).items
    assert cine.kind == "cine" and cine.frame_order is None


def test_item_ids_do_not_change():
    """Item ids name cached images and manifest rows: a different digest would re-key every cohort."""
    g = group_records([_slice("s0.dcm", 0.0, sop="1.2.3"), _slice("s1.dcm", 2.0, sop="1.2.4"),
                       _slice("dx.dcm", 0.0, modality="DX", sop="1.2.5", series="ser2")])
    assert {it.kind: it.item_id for it in g.items} == {"volume": "c43b41f3b758ca02", "image": "a4a46beb3e24712c"}


def test_slice_spacing_reports_gaps_and_tilt():
    even = [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 6.0)]
    assert slice_spacing(even, AXIAL) == (2.0, [])
    gap = [[0.0, 0.0, z] for z in (0.0, 2.0, 6.0, 8.0)]
    mean, notes = slice_spacing(gap, AXIAL)
    assert mean == pytest.approx(8 / 3)
    assert notes == ["non-uniform slice spacing: steps from 2 to 4 mm (median 2); about 1 slice(s) missing"]
    tilted = [[0.0, 0.5 * k, 2.0 * k] for k in range(4)]  # drifting 1.5 mm sideways: gantry tilt
    _, notes = slice_spacing(tilted, AXIAL)
    assert notes == ["slice positions drift 1.5 mm off the slice normal (gantry tilt?); stored as sheared affine"]


# ---------------------------------------------------------------- copies of one SOPInstanceUID (issue 17 item 12)
@pytest.mark.parametrize("change,differs", [
    ({}, []),
    ({"pixel_digest": None}, []),  # a copy whose pixels could not be read: compared on its header only
    ({"pixel_digest": "other"}, ["pixel content"]),
    ({"rows": 8}, ["rows"]),
    ({"frames": 2}, ["frames"]),
    ({"bits_allocated": 8, "bits_stored": 8}, ["bits allocated", "bits stored"]),
], ids=["same", "unreadable", "altered-pixels", "other-matrix", "other-frames", "other-bit-depth"])
def test_copies_are_one_image_only_when_format_and_pixels_agree(change, differs):
    a = _slice("a.dcm", 0.0, modality="DX", sop="same", pixel_digest="d1")
    b = _slice("b.dcm", 0.0, modality="DX", sop="same", **{"pixel_digest": "d1", **change})
    other = _slice("c.dcm", 2.0, modality="DX")
    assert compare_copies([a, b]) == differs
    g = group_records([b, other, a])
    if not differs:  # the first path in sort order is used
        assert g.duplicates == {"b.dcm": "a.dcm"} and g.conflicts == []
        assert sorted(it.files[0] for it in g.items) == ["a.dcm", "c.dcm"]
    else:  # neither copy is used: which is right cannot be told (an altered copy sorting first must not win)
        assert g.duplicates == {} and [(c.files, c.differs) for c in g.conflicts] == [(["a.dcm", "b.dcm"], differs)]
        assert [it.files for it in g.items] == [["c.dcm"]]


def test_only_files_sharing_a_sop_need_a_pixel_digest():
    recs = [_slice("a.dcm", 0.0, sop="s1"), _slice("b.dcm", 0.0, sop="s1"), _slice("c.dcm", 2.0, sop="s2")]
    assert shared_sop_paths(recs) == ["a.dcm", "b.dcm"]


def _dx_file(path, pixels, sop, **kw):
    return write_image(path, pixels, modality="DX", SOPInstanceUID=sop, **kw)


def test_ingest_uses_agreeing_copies_once_and_no_conflicting_copy(tmp_path):
    src = tmp_path / "src"
    base = np.arange(16, dtype=np.uint16).reshape(4, 4)
    _dx_file(src / "b_original" / "agree.dcm", base, "1.2.3.1")
    _dx_file(src / "c_copy" / "agree.dcm", base, "1.2.3.1", InstitutionName="X")  # other bytes, same image
    _dx_file(src / "b_original" / "altered.dcm", base, "1.2.3.2")
    _dx_file(src / "a_edited" / "altered.dcm", base + 1, "1.2.3.2")  # sorts first, different pixels
    _dx_file(src / "b_original" / "shape.dcm", base, "1.2.3.3")
    _dx_file(src / "a_thumb" / "shape.dcm", base[:2], "1.2.3.3")  # another matrix
    res = ingest(src, tmp_path / "out", workers=1)
    rows, _ = read_manifest(res.manifest)
    report = json.loads(res.report.read_text())
    by = {f["path"]: f for f in report["files"]}
    assert len(rows) == 1 and by["b_original/agree.dcm"]["status"] == "used"
    assert by["c_copy/agree.dcm"]["status"] == "duplicate"
    for a, b, what in (("a_edited/altered.dcm", "b_original/altered.dcm", "pixel content"),
                       ("a_thumb/shape.dcm", "b_original/shape.dcm", "rows")):
        assert by[a]["category"] == by[b]["category"] == "duplicate_conflict" and by[a]["status"] == "skipped"
        assert by[a]["reason"] == f"same SOPInstanceUID as {b} but different {what}: no copy is used (see warnings)"
        [msg] = [w["message"] for w in report["warnings"] if a in w["message"]]
        assert msg.startswith(f"conflicting copies of one image (same SOPInstanceUID, different {what}): {a} and {b}; "
                              "none of them is used (copies with one SOPInstanceUID are used only when they agree")
    assert report["counts"]["not_used_by_reason"]["duplicate_conflict"] == 4


def test_pixel_digests_are_remembered_and_folder_names_stay_redacted(tmp_path, monkeypatch):
    src = tmp_path / "src"
    base = np.arange(16, dtype=np.uint16).reshape(4, 4)
    _dx_file(src / PATIENT_ID / "x.dcm", base, "1.2.3.9")
    _dx_file(src / "other" / "x.dcm", base + 1, "1.2.3.9")
    first = ingest(src, tmp_path / "out", workers=1)
    [msg] = [w["message"] for w in first.warnings if w["message"].startswith("conflicting")]
    assert PATIENT_ID not in msg and "[id-" in msg
    assert find_identifiers(tmp_path / "out", [PATIENT_ID]) == []
    monkeypatch.setattr(pipeline, "_digest_task", lambda *a: pytest.fail("a pixel digest was computed again"))
    again = ingest(src, tmp_path / "out", workers=1)
    assert again.warnings == first.warnings
