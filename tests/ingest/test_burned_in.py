"""BurnedInAnnotation (0028,0301): images with text in their pixels are skipped unless ``--burned-in keep``,
the manifest says what each image's header says, and header values outside the DICOM defined terms are
counted in the report without being quoted anywhere."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydicom.uid import DigitalXRayImageStorageForPresentation, SecondaryCaptureImageStorage, UltrasoundImageStorage

from medxfer.cli import main
from medxfer.ingest import ingest
from medxfer.ingest import pipeline as pipeline_module
from medxfer.ingest.manifest import read_manifest

from ..conftest import find_identifiers
from .dicom_builders import image_dataset

PIXELS = np.arange(64, dtype=np.uint16).reshape(8, 8)
DX = {"modality": "DX", "sop_class": DigitalXRayImageStorageForPresentation}


def _save(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_dataset(PIXELS, **kw).save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def src(tmp_path) -> Path:
    """A DX that says YES, one that says NO, an ultrasound that says nothing, a secondary capture that says NO."""
    src = tmp_path / "src"
    _save(src / "dx_yes.dcm", BurnedInAnnotation="YES", **DX)
    _save(src / "dx_no.dcm", BurnedInAnnotation="NO", **DX)
    _save(src / "us.dcm", modality="US", sop_class=UltrasoundImageStorage)
    _save(src / "sc.dcm", modality="OT", sop_class=SecondaryCaptureImageStorage, BurnedInAnnotation="NO")
    return src


def _run(src: Path, out: Path, **kw):
    res = ingest(src, out, workers=1, **kw)
    rows, _ = read_manifest(res.manifest)
    return rows, json.loads(res.report.read_text())


def _by_path(report: dict) -> dict[str, dict]:
    return {f["path"]: f for f in report["files"]}


def test_burned_in_images_are_skipped_by_default_with_the_reason(src, tmp_path):
    rows, report = _run(src, tmp_path / "out")
    assert sorted(r["burned_in"] for r in rows) == ["NO", "NO", "unknown"]  # dx_no, sc, us
    assert {r["modality"]: r["burned_in"] for r in rows} == {"DX": "NO", "OT": "NO", "US": "unknown"}
    skipped = _by_path(report)["dx_yes.dcm"]
    assert (skipped["status"], skipped["category"]) == ("skipped", "burned_in")
    assert skipped["reason"].startswith("BurnedInAnnotation (0028,0301) is YES: text, often the patient's name")
    assert report["counts"]["not_used_by_reason"]["burned_in"] == 1
    messages = [w["message"] for w in report["warnings"]]
    assert [m for m in messages if "BurnedInAnnotation" in m] == [
        "1 ultrasound / secondary-capture image file(s) do not say whether text is burned into their pixels "
        "(no BurnedInAnnotation); such images often show the patient's name: check them before the cohort "
        "leaves the hospital"]


def test_keep_uses_them_without_reading_a_header_again(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(src, out)

    def no_header_reads(*args, **kw):
        raise AssertionError("a header was read again")

    monkeypatch.setattr(pipeline_module, "read_file_record", no_header_reads)
    rows, report = _run(src, out, burned_in="keep")
    assert sorted(r["burned_in"] for r in rows) == ["NO", "NO", "YES", "unknown"]
    assert _by_path(report)["dx_yes.dcm"]["status"] == "used"
    assert any(w["message"].startswith("1 image file(s) whose header says BurnedInAnnotation=YES were used "
                                       "(--burned-in keep)") for w in report["warnings"])
    rows, report = _run(src, out)  # and back: skipped again, still without reading a header
    assert len(rows) == 3 and _by_path(report)["dx_yes.dcm"]["category"] == "burned_in"


def test_the_command_line_flag_keeps_them(src, tmp_path):
    result = CliRunner().invoke(main, ["ingest", str(src), "--out", str(tmp_path / "out"), "--workers", "1",
                                       "--burned-in", "keep"])
    assert result.exit_code == 0, result.output
    rows, _ = read_manifest(tmp_path / "out" / "manifest.csv")
    assert "YES" in {r["burned_in"] for r in rows}


def test_an_unknown_policy_is_refused(src, tmp_path):
    with pytest.raises(pipeline_module.IngestError, match="--burned-in must be one of skip, keep"):
        ingest(src, tmp_path / "out", burned_in="maybe")


@pytest.mark.filterwarnings("ignore:.*for VR CS:UserWarning")
def test_header_values_outside_the_defined_terms_are_counted_never_written(tmp_path):
    """A name in BodyPartExamined / ViewPosition / RescaleType reaches no manifest, report or index."""
    src = tmp_path / "src"
    _save(src / "a.dcm", BodyPartExamined="YAMADA", ViewPosition="TARO", BurnedInAnnotation="NO", **DX)
    _save(src / "b.dcm", BodyPartExamined="CHEST", ViewPosition="PA", RescaleType="SUZUKI", BurnedInAnnotation="NO",
          RescaleSlope=1, RescaleIntercept=0, **DX)
    out = tmp_path / "out"
    rows, report = _run(src, out)
    assert sorted((r["body_part"], r["view"]) for r in rows) == [("", ""), ("CHEST", "PA")]
    messages = {w["message"] for w in report["warnings"]}
    assert {"1 image file(s) hold a BodyPartExamined outside the DICOM defined terms, not copied "
            "(body_part column left empty)",
            "1 image file(s) hold a ViewPosition outside the DICOM defined terms, not copied (view column left empty)",
            "1 image file(s) hold a RescaleType outside the DICOM defined terms, not copied "
            "(intensity reported as rescaled, not HU)"} <= messages
    assert find_identifiers(out, ["YAMADA", "TARO", "SUZUKI"]) == []
    assert (out / ".medxfer" / "index.json").is_file()  # searched too
