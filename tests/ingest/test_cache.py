"""The decoded cache: what a cached item holds, when it is rebuilt, and that an unchanged re-run decodes nothing."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medxfer import synthetic
from medxfer.ingest import DecodeOptions, ingest, pipeline
from medxfer.ingest.cache import build_item, image_path, item_key
from medxfer.ingest.deid import Pseudonymizer
from medxfer.ingest.manifest import read_manifest
from medxfer.ingest.scan.sniff import read_file_record
from medxfer.ingest.series import ItemPlan, group_records

from .dicom_builders import write_image

PSEUDO = Pseudonymizer(b"unit-test-secret-0123456789abcdef")


@pytest.fixture
def ct(tmp_path):
    """Five 16x16 CT slices (shuffled InstanceNumbers, HU rescale) and their volume plan."""
    src = tmp_path / "src"
    info = synthetic.ct_series(src / "ct", synthetic.new_patient(3), n_slices=5, rows=16, cols=16)
    records = [read_file_record(src, p.relative_to(src).as_posix(), PSEUDO) for p in info.paths]
    [plan] = group_records(records).items
    headers = {r.path: r.header for r in records}
    return src, info, plan, headers


def _load(out: Path, image: str) -> nib.Nifti1Image:
    return nib.load(str(out / image))


@pytest.mark.parametrize("compress", [False, True], ids=["streamed", "in-memory"])
def test_a_volume_holds_the_slices_in_space_with_the_scanner_affine(tmp_path, ct, compress):
    src, info, plan, headers = ct
    res = build_item(plan, src, tmp_path / "out", DecodeOptions(compress=compress), headers)
    assert not res.failed and res.image.endswith(".nii.gz" if compress else ".nii")
    img = _load(tmp_path / "out", res.image)
    np.testing.assert_array_equal(np.asarray(img.dataobj).T, info.volume_hu)  # (x, y, z) <-> (slices, rows, cols)
    for k, ipp in enumerate(info.positions):
        np.testing.assert_allclose(img.affine @ [0, 0, k, 1], [-ipp[0], -ipp[1], ipp[2], 1], atol=1e-4)  # LPS->RAS
    assert (res.intensity, res.dtype, res.shape, res.frames) == ("HU", "int16", [16, 16, 5], 5)
    assert res.spacing == pytest.approx([0.7, 0.7, 2.5]) and res.uniform_spacing is True
    assert res.used_files == plan.files


def test_an_undecodable_slice_is_left_out_and_reported(tmp_path, ct):
    src, info, plan, headers = ct
    bad = src / plan.files[2]
    bad.write_bytes(bad.read_bytes()[:-100])
    res = build_item(plan, src, tmp_path / "out", DecodeOptions(), headers)
    assert list(res.failed) == [plan.files[2]] and res.failed[plan.files[2]].startswith("truncated pixel data")
    assert res.frames == 4 and res.used_files == [f for f in plan.files if f != plan.files[2]]
    assert "1 slice(s) could not be decoded and are missing from the volume" in res.notes
    kept = np.delete(info.volume_hu, 2, axis=0)
    np.testing.assert_array_equal(np.asarray(_load(tmp_path / "out", res.image).dataobj).T, kept)


def test_an_image_too_large_for_nifti1_is_reported_not_decoded(tmp_path):
    h = {"rows": 2, "cols": 40000, "frames": 1, "spp": 1, "photometric": "MONOCHROME2", "bits_allocated": 16,
         "bits_stored": 16, "pixel_representation": 0, "slope": 1.0, "intercept": 0.0, "modality": "CT"}
    plan = ItemPlan("big", "volume", ["a.dcm", "b.dcm"], h, positions=[[0, 0, 0], [0, 0, 1]])
    res = build_item(plan, tmp_path / "no-such-source", tmp_path / "out", DecodeOptions(), {"a.dcm": h, "b.dcm": h})
    assert res.image is None and set(res.failed) == {"a.dcm", "b.dcm"}
    assert res.failed["a.dcm"].startswith("image too large for NIfTI-1: a dimension of 40000 exceeds 32767")


def test_a_cache_that_cannot_be_written_is_reported_per_file(tmp_path):
    src = tmp_path / "src"
    write_image(src / "dx.dcm", np.zeros((4, 4), np.uint16), modality="DX")
    rec = read_file_record(src, "dx.dcm", PSEUDO)
    [plan] = group_records([rec]).items
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images").write_text("a file where the images folder belongs")
    res = build_item(plan, src, tmp_path / "out", DecodeOptions(), {})
    assert res.image is None and res.failed["dx.dcm"].startswith("cannot write the cached image: ")


def test_cache_keys_follow_the_files_and_only_the_options_that_apply(ct):
    _, _, plan, headers = ct
    prints = {f: (1000, 5) for f in plan.files}
    key = item_key(plan, prints, DecodeOptions())
    # The index holds these keys: a different construction would rebuild every cached item.
    assert key == item_key(plan, dict(prints), DecodeOptions()) and len(key) == 64
    assert item_key(plan, {**prints, plan.files[0]: (1000, 6)}, DecodeOptions()) != key  # touched
    assert item_key(plan, {**prints, plan.files[0]: (999, 5)}, DecodeOptions()) != key  # rewritten
    assert item_key(plan, prints, DecodeOptions(compress=True)) != key
    assert item_key(plan, prints, DecodeOptions(color="gray", voi="apply")) == key  # grey CT: neither applies
    assert item_key(replace(plan, files=plan.files[::-1]), prints, DecodeOptions()) != key  # another stacking
    dx = ItemPlan("dx", "image", ["dx.dcm"], {"modality": "DX", "spp": 1, "photometric": "MONOCHROME2"})
    rgb = ItemPlan("us", "image", ["us.dcm"], {"modality": "US", "spp": 3, "photometric": "RGB"})
    one = {"dx.dcm": (1, 1), "us.dcm": (1, 1)}
    assert item_key(dx, one, DecodeOptions(voi="apply")) != item_key(dx, one, DecodeOptions())
    assert item_key(dx, one, DecodeOptions(color="gray")) == item_key(dx, one, DecodeOptions())
    assert item_key(rgb, one, DecodeOptions(color="gray")) != item_key(rgb, one, DecodeOptions())


def test_cache_key_digest_does_not_change():
    plan = ItemPlan("x", "volume", ["a/1.dcm", "a/2.dcm"], {"modality": "CT", "spp": 1, "photometric": "MONOCHROME2"})
    key = item_key(plan, {"a/1.dcm": (10, 20), "a/2.dcm": (11, 21)}, DecodeOptions())
    assert key == "7864239d9f3b56348850f21ea6e4235d6a9a9ec8e867916d6bcd3279a8c5fc06"


def test_an_unchanged_rerun_reads_and_decodes_nothing_and_a_touched_file_rebuilds_its_item(tmp_path, ct, monkeypatch):
    src, _, plan, _ = ct
    write_image(src / "dx" / "dx.dcm", np.arange(16, dtype=np.uint16).reshape(4, 4), modality="DX")
    first = ingest(src, tmp_path / "out", workers=1)
    manifest = first.manifest.read_bytes()
    images = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").rglob("*.nii")}
    assert len(images) == 2
    assert first.counts["decoded"] == first.counts["items"] == 2

    def must_not_run(*args, **kwargs):
        raise AssertionError("an unchanged re-run read or decoded a file")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "build_item", must_not_run)
        m.setattr(pipeline, "read_file_record", must_not_run)
        again = ingest(src, tmp_path / "out", workers=1)
    assert (again.counts["decoded"], again.counts["reused"]) == (0, 2)
    assert again.manifest.read_bytes() == manifest
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").rglob("*.nii")} == images

    touched = src / plan.files[0]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    built = []
    with monkeypatch.context() as m:
        m.setattr(pipeline, "build_item", lambda plan, *a: built.append(plan.files) or build_item(plan, *a))
        third = ingest(src, tmp_path / "out", workers=1)
    assert built == [plan.files] and third.counts["decoded"] == 1
    rows, _ = read_manifest(third.manifest)
    assert len(rows) == 2


def test_a_crash_leftover_in_the_cache_is_removed_by_the_next_run(tmp_path):
    src = tmp_path / "src"
    write_image(src / "dx.dcm", np.zeros((4, 4), np.uint16), modality="DX")
    ingest(src, tmp_path / "out", workers=1)
    leftovers = [tmp_path / "out" / "images" / "01" / "0123456789abcdef.part.nii",
                 tmp_path / "out" / "images" / "fedcba9876543210.nii"]  # the flat layout of index version 1
    for p in leftovers:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half a file")
    res = ingest(src, tmp_path / "out", workers=1)
    assert not any(p.exists() for p in leftovers) and not (tmp_path / "out" / "images" / "01").exists()
    rows, _ = read_manifest(res.manifest)
    images = tmp_path / "out" / "images"
    assert [p.relative_to(tmp_path / "out").as_posix() for p in images.rglob("*")] == [
        Path(rows[0]["image"]).parent.as_posix(), rows[0]["image"]]
    assert json.loads(res.report.read_text())["counts"]["reused"] == 1


def test_images_live_in_sub_folders_named_by_the_start_of_the_item_id(tmp_path, ct):
    src, _, plan, headers = ct
    assert image_path("0123456789abcdef", DecodeOptions()) == "images/01/0123456789abcdef.nii"
    assert image_path("0123456789abcdef", DecodeOptions(compress=True)) == "images/01/0123456789abcdef.nii.gz"
    res = ingest(src, tmp_path / "out", workers=1)
    [row], _ = read_manifest(res.manifest)
    assert row["image"] == f"images/{row['item_id'][:2]}/{row['item_id']}.nii"
    assert (tmp_path / "out" / row["image"]).is_file()


def test_a_file_name_that_is_not_utf8_has_a_cache_key(ct):
    # os.walk gives such a name with surrogate escapes; encoding it for the key used to abort the whole run
    _, _, plan, _ = ct
    name = os.fsdecode(b"ct/slice-\xff\xfe.dcm")
    odd = replace(plan, files=[name, *plan.files[1:]])
    prints = {f: (1000, 5) for f in odd.files}
    key = item_key(odd, prints, DecodeOptions())
    assert len(key) == 64 and key != item_key(replace(odd, files=["ct/slice-.dcm", *plan.files[1:]]),
                                              {**prints, "ct/slice-.dcm": (1000, 5)}, DecodeOptions())


@pytest.mark.parametrize("compress", [False, True], ids=["streamed", "in-memory"])
def test_a_full_disk_stops_the_ingest_naming_the_image_and_leaves_no_part_file(tmp_path, ct, monkeypatch, compress):
    """Every later item would fail alike: ENOSPC is raised (naming the cached image), not reported per file."""
    import errno

    from medxfer.ingest import cache

    src, info, plan, headers = ct
    def full(*args):
        path = next(a for a in args if isinstance(a, (str, Path)) or hasattr(a, "write"))
        if isinstance(path, (str, Path)):  # nibabel's save: a partial file, then the disk is full
            Path(path).write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    opts = DecodeOptions(compress=compress)
    if compress:  # in memory, written by nibabel
        monkeypatch.setattr(cache.nib, "save", lambda img, path: full(path))
    else:  # streamed slice by slice: the header is written last
        monkeypatch.setattr(cache, "_write_header", lambda f, hdr: full(f))
    with pytest.raises(OSError) as info_exc:
        build_item(plan, src, tmp_path / "out", opts, headers)
    assert info_exc.value.errno == errno.ENOSPC
    assert info_exc.value.filename == str(tmp_path / "out" / image_path(plan.item_id, opts))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # no half-written image, no .part
