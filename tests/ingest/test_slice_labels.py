"""Per-slice labels: a labels CSV keyed by SOPInstanceUID on CT series (intracranial-haemorrhage style)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medxfer import synthetic
from medxfer.ingest import DecodeOptions, ingest
from medxfer.ingest.manifest import SLICE_LABELS_FILE, read_manifest, read_slice_labels

from ..conftest import find_identifiers

N = 8
MARKERS = [-700 + 150 * ((5 * k) % N) for k in range(N)]  # HU of spatial slice k: distinct, not monotone
NAME_ORDER = [3, 7, 0, 5, 1, 6, 2, 4]  # file name number of spatial slice k
LABELLED = {1: "1", 4: "0", 6: "+subdural"}  # spatial slice -> label ("+…" is escaped in the CSV)
UTF8_NAME = "山田^太郎"  # the CT series is re-written in UTF-8 (ISO_IR 192) under this patient name


def _patient_folder(patient) -> str:
    """The folder a PACS export might name after the patient: name and ID (the leak scans search both)."""
    return f"{UTF8_NAME.replace('^', ' ')} {patient.patient_id}"


def _export(src: Path, patient) -> tuple[synthetic.modalities.SeriesInfo, dict[str, str]]:
    """A CT series whose InstanceNumbers, file names and positions are in three different orders, plus a
    radiograph and an Enhanced MR (one SOP each). Returns the series and ``{SOPInstanceUID: kind}``."""
    vol = np.stack([np.full((16, 16), float(m)) for m in MARKERS])
    info = synthetic.ct_series(src / "ct", patient, n_slices=N, rows=16, cols=16, volume=vol,
                               shuffle_instance_numbers=True)
    for k, p in enumerate(info.paths):
        ds = pydicom.dcmread(p)
        ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", UTF8_NAME
        ds.save_as(p.with_name(f"img_{NAME_ORDER[k]:02d}.dcm"), enforce_file_format=True)
        p.unlink()
    assert str(pydicom.dcmread(src / "ct" / "img_00.dcm").PatientName) == UTF8_NAME  # non-Latin, in UTF-8
    spatial = list(range(N))
    assert info.instance_numbers != [k + 1 for k in spatial] and NAME_ORDER != spatial
    assert np.argsort(info.instance_numbers).tolist() != np.argsort(NAME_ORDER).tolist()
    folder = src / _patient_folder(patient)  # a patient-named folder, as exports have them
    xr = synthetic.radiograph(folder / "xr.dcm", patient, rows=32, cols=32)
    mr = synthetic.enhanced_mr(folder / "mr.dcm", patient, frames=4, rows=16, cols=16)
    return info, {xr.sop_uid: "image", mr.sop_uid: "multiframe"}


def _labels_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["SOPInstanceUID", "haemorrhage", "marker_hu"])
        for sop, value in rows:
            w.writerow([sop, value[0], value[1]])
    return path


def _run(src: Path, out: Path, **kw):
    res = ingest(src, out, workers=1, **kw)
    rows, _ = read_manifest(res.manifest)
    return rows, json.loads(res.report.read_text()), res


@pytest.fixture
def patient():
    return synthetic.new_patient(3)


def test_each_label_sits_on_the_slice_of_its_instance(tmp_path, patient):
    src, out = tmp_path / "src", tmp_path / "out"
    info, single = _export(src, patient)
    rows_in = [(info.sop_uids[k], (v, str(MARKERS[k]))) for k, v in LABELLED.items()]
    rows_in += [(sop, ("1", kind)) for sop, kind in single.items()]
    rows_in.append(("1.2.3.4.5.6.7.8.9", ("1", "nowhere")))  # no such instance
    labels = _labels_csv(tmp_path / "labels.csv", rows_in)
    rows, report, res = _run(src, out, labels=labels, key="SOPInstanceUID")

    vol = next(r for r in rows if r["kind"] == "volume" and r["frames"] == str(N))
    assert vol["haemorrhage"] == "" and vol["marker_hu"] == ""  # no label of one slice on the whole volume
    one_sop = {r["marker_hu"]: r for r in rows if r["item_id"] != vol["item_id"]}
    assert set(one_sop) == {"image", "multiframe"}  # a 2D image and a multi-frame volume: labelled as before
    assert one_sop["multiframe"]["kind"] == "volume" and all(r["haemorrhage"] == "1" for r in one_sop.values())

    by_slice = read_slice_labels(out / SLICE_LABELS_FILE)
    assert list(by_slice) == [vol["item_id"]]
    cached = np.asanyarray(nib.load(str(out / vol["image"])).dataobj)  # (x, y, slice)
    assert cached.shape == (16, 16, N)
    got = {}
    for s, values in by_slice[vol["item_id"]].items():
        pixels = np.unique(cached[:, :, s])
        assert pixels.tolist() == [float(values["marker_hu"])]  # the slice holds that instance's pixels
        got[int(pixels[0])] = values["haemorrhage"]
    assert got == {MARKERS[k]: v for k, v in LABELLED.items()}  # every labelled instance, its own value
    text = (out / SLICE_LABELS_FILE).read_text()
    assert text.splitlines()[0] == "item_id,slice,haemorrhage,marker_hu" and ",'+subdural," in text

    assert report["counts"]["labels"] == {
        "rows": 6, "matched_rows": 5, "unmatched_rows": 1, "ambiguous_rows": 0, "items_labelled": 2,
        "items_without_label": 0, "volumes_with_slice_labels": 1, "slices_labelled": 3}
    ids = [*info.sop_uids, *single, info.study_uid, info.series_uid, patient.patient_id,
           *patient.name.split("^"), patient.birth_date, patient.accession, *UTF8_NAME.split("^"),
           _patient_folder(patient)]
    assert find_identifiers(out, ids) == []

    # a re-run decodes nothing (the slice order comes from the index) and writes the same file
    before = (out / SLICE_LABELS_FILE).read_bytes()
    _, report2, _ = _run(src, out, labels=labels, key="SOPInstanceUID")
    assert report2["counts"]["decoded"] == 0
    assert (out / SLICE_LABELS_FILE).read_bytes() == before


def test_slice_index_counts_only_the_slices_that_decoded(tmp_path, patient):
    src, out = tmp_path / "src", tmp_path / "out"
    info, _ = _export(src, patient)
    bad = src / "ct" / f"img_{NAME_ORDER[2]:02d}.dcm"  # spatial slice 2, unlabelled: not in the cached volume
    bad.write_bytes(bad.read_bytes()[:-100])
    labels = _labels_csv(tmp_path / "labels.csv",
                         [(info.sop_uids[k], (v, str(MARKERS[k]))) for k, v in LABELLED.items()])
    for compress in (False, True):  # streamed slice by slice, and stacked in memory (.nii.gz)
        o = out / str(compress)
        rows, report, _ = _run(src, o, labels=labels, key="SOPInstanceUID", options=DecodeOptions(compress=compress))
        vol = next(r for r in rows if r["kind"] == "volume" and r["frames"] == str(N - 1))
        cached = np.asanyarray(nib.load(str(o / vol["image"])).dataobj)
        by_slice = read_slice_labels(o / SLICE_LABELS_FILE)[vol["item_id"]]
        assert sorted(by_slice) == [1, 3, 5]  # spatial 1, 4, 6 with spatial slice 2 missing
        for s, values in by_slice.items():
            assert np.unique(cached[:, :, s]).tolist() == [float(values["marker_hu"])]
        assert report["counts"]["labels"]["slices_labelled"] == 3


def test_a_stale_slice_labels_file_is_removed(tmp_path, patient):
    src, out = tmp_path / "src", tmp_path / "out"
    info, single = _export(src, patient)
    labels = _labels_csv(tmp_path / "labels.csv", [(info.sop_uids[1], ("1", "x"))])
    _run(src, out, labels=labels, key="SOPInstanceUID")
    assert (out / SLICE_LABELS_FILE).is_file()
    only_2d = _labels_csv(tmp_path / "only_2d.csv", [(next(iter(single)), ("1", "x"))])
    _, report, _ = _run(src, out, labels=only_2d, key="SOPInstanceUID")  # no slice labelled now
    assert not (out / SLICE_LABELS_FILE).exists() and report["counts"]["labels"]["slices_labelled"] == 0
    _run(src, out, labels=labels, key="SOPInstanceUID")
    _run(src, out)  # no labels at all
    assert not (out / SLICE_LABELS_FILE).exists()


def test_a_patient_column_names_the_volume_when_its_slices_agree(tmp_path, patient):
    src, out = tmp_path / "src", tmp_path / "out"
    info, single = _export(src, patient)
    xr_sop = next(sop for sop, kind in single.items() if kind == "image")
    labels = tmp_path / "labels.csv"

    def run_with(cases: list[str]) -> tuple[dict, dict]:
        labels.write_text("SOPInstanceUID,case,haemorrhage\n" + "".join(
            f"{info.sop_uids[k]},{c},1\n" for k, c in zip(LABELLED, cases)) + f"{xr_sop},C1,0\n")
        rows, report, _ = _run(src, out, labels=labels, key="SOPInstanceUID", patient_column="case")
        by = {"series" if r["frames"] == str(N) else "mr" if r["kind"] == "volume" else r["kind"]: r["patient"]
              for r in rows}
        return by, report["counts"]["labels"]

    by, counts = run_with(["C1", "C1", "C1"])
    assert by["series"] == by["image"]  # the same case: one patient pseudonym
    assert counts["patient_from_labels"] == 2 and "volumes_with_conflicting_patients" not in counts
    header_patient = by["mr"]  # not in the CSV: the patient of its header (the same person)
    assert header_patient != by["image"]
    by, counts = run_with(["C1", "C2", "C1"])  # the slices disagree: the header's patient stays
    assert by["series"] == header_patient and counts["volumes_with_conflicting_patients"] == 1
    assert counts["patient_from_labels"] == 1
