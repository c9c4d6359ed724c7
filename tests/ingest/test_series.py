"""Grouping files into items: what becomes a volume, in which slice order, and what stays a 2D item."""
from __future__ import annotations

import numpy as np
import pytest

from medxfer.ingest.scan.record import FileRecord
from medxfer.ingest.series import group_records, slice_spacing

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
