"""The walk of a source folder and the names it finds: symbolic links, and names that are not ASCII or not UTF-8."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from medxfer.ingest import ingest
from medxfer.ingest.manifest import read_manifest
from medxfer.ingest.scan.walker import LINK_OUTSIDE, display_path, walk

from ..conftest import find_identifiers
from .dicom_builders import write_image


def _dx(path: Path, value: int = 7, **kw) -> Path:
    return write_image(path, np.full((4, 4), value, np.uint16), modality="DX", **kw)


def _run(src: Path, out: Path, **kw):
    res = ingest(src, out, workers=1, **kw)
    rows, _ = read_manifest(res.manifest)
    return rows, json.loads(res.report.read_text(encoding="utf-8")), res


# ---------------------------------------------------------------- symbolic links (item 10)
def test_links_leaving_the_source_are_listed_not_followed(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.dcm").write_bytes(b"x")
    (outside / "y.dcm").write_bytes(b"y")
    (src / "a").mkdir(parents=True)
    (src / "a" / "1.dcm").write_bytes(b"1")
    (src / "to_outside").symlink_to(outside)  # a folder link out of SRC
    (src / "a" / "file_link.dcm").symlink_to(outside / "y.dcm")  # a file link out of SRC
    (src / "root").symlink_to("/")  # would walk the whole machine
    (src / "inside").symlink_to(src / "a")  # stays inside SRC: followed (once)
    (src / "a" / "same.dcm").symlink_to(src / "a" / "1.dcm")  # a file link inside SRC: a file like any other
    walked = walk(src)
    assert walked.files == ["a/1.dcm", "a/same.dcm"]
    assert set(walked.links) == {"to_outside/", "root/", "a/file_link.dcm"}
    assert all("outside the source folder: not followed (--follow-links follows it)" in r
               for r in walked.links.values())
    assert "symbolic link to a folder" in walked.links["root/"]
    assert "symbolic link to a file" in walked.links["a/file_link.dcm"]
    assert walked.excluded == {}


def test_follow_links_walks_outside_once_even_through_loops(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.dcm").write_bytes(b"x")
    (outside / "deep" / "back").symlink_to(outside)  # a loop outside SRC
    (outside / "deep" / "src_again").symlink_to(src)  # and one back into SRC
    src.mkdir()
    (src / "b.dcm").write_bytes(b"b")
    (src / "to_outside").symlink_to(outside)
    walked = walk(src, follow_links=True)
    assert walked.files == ["b.dcm", "to_outside/deep/x.dcm"] and walked.links == {}


def test_ingest_reports_a_link_out_of_the_source_and_follows_it_when_asked(tmp_path):
    _dx(tmp_path / "elsewhere" / "outside.dcm")
    _dx(tmp_path / "src" / "inside.dcm", value=9)
    (tmp_path / "src" / "linked").symlink_to(tmp_path / "elsewhere")
    rows, report, _ = _run(tmp_path / "src", tmp_path / "out")
    assert len(rows) == 1
    by = {f["path"]: f for f in report["files"]}
    assert by["linked/"]["status"] == "skipped" and by["linked/"]["category"] == LINK_OUTSIDE == "link_outside_source"
    assert "--follow-links" in by["linked/"]["reason"]
    assert report["counts"]["not_used_by_reason"][LINK_OUTSIDE] == 1
    rows, report, _ = _run(tmp_path / "src", tmp_path / "out2", follow_links=True)
    assert len(rows) == 2 and {f["path"] for f in report["files"]} == {"inside.dcm", "linked/outside.dcm"}


# ---------------------------------------------------------------- names (items 7 and 9)
def test_the_report_is_utf8_text_a_grep_finds(tmp_path):
    _dx(tmp_path / "src" / "Tōkyō 写真" / "röntgen.dcm")
    _, report, res = _run(tmp_path / "src", tmp_path / "out")
    data = res.report.read_bytes()
    assert "Tōkyō 写真/röntgen.dcm".encode() in data and b"\\u" not in data
    assert [f["path"] for f in report["files"]] == ["Tōkyō 写真/röntgen.dcm"]


def test_display_path_escapes_bytes_that_are_not_utf8():
    assert display_path(os.fsdecode(b"a\xff/b\xe9.dcm")) == "a\\xff/b\\xe9.dcm"
    assert display_path("ok/ünïcode.dcm") == "ok/ünïcode.dcm"


def test_names_that_are_not_utf8_are_ingested_and_shown_escaped(tmp_path):
    src = tmp_path / "src"
    odd_dir, odd_file = os.fsdecode(b"scans\xe9"), os.fsdecode(b"im\xff\xfe.dcm")
    _dx(src / odd_dir / odd_file)
    _dx(src / "plain.dcm", value=9)
    broken = src / os.fsdecode(b"broken\xff.dcm")
    broken.write_bytes(b"not an image")
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], ["plain.dcm", "1"]])
    rows, report, res = _run(src, tmp_path / "out", labels=labels, key="path")  # the path join must not fail
    assert len(rows) == 2 and sorted(r["label"] for r in rows) == ["", "1"]
    res.report.read_bytes().decode("utf-8")  # strict UTF-8
    by = {f["path"]: f for f in report["files"]}
    assert by["scans\\xe9/im\\xff\\xfe.dcm"]["status"] == "used"
    assert by["broken\\xff.dcm"]["category"] == "not_image"
    for p in (tmp_path / "out").rglob("*"):  # index, manifest, images: written, readable
        if p.is_file() and p.suffix in (".json", ".csv", ".jsonl"):
            p.read_bytes().decode("utf-8")
    again = ingest(src, tmp_path / "out", workers=1, labels=labels, key="path")
    assert again.counts["decoded"] == 0  # the index remembers them


def test_a_folder_named_after_the_patient_in_latin1_is_redacted_not_escaped(tmp_path):
    src = tmp_path / "src"
    folder = os.fsdecode("MÜLLER".encode("latin-1"))
    _dx(src / folder / "dx.dcm", PatientName="MÜLLER^HANS", SpecificCharacterSet="ISO_IR 100")
    _, report, _ = _run(src, tmp_path / "out")
    [entry] = report["files"]
    assert entry["status"] == "used" and entry["path"].startswith("[id-") and entry["path"].endswith("]/dx.dcm")
    assert find_identifiers(tmp_path / "out", ["MÜLLER", "M\\xdcLLER", "M\\\\xdcLLER"]) == []
