"""Smoke test on the real CT and MR CD exports in ../shared/data (skipped when absent): ingest, a labels
CSV keyed by SeriesInstanceUID, one epoch of 2.5D training through ``medxfer train``, and ``medxfer
predict`` with one row per volume (issue 13, acceptance 2)."""
from __future__ import annotations

import csv
import json
import re
import shutil
from types import SimpleNamespace

import mlflow
import pydicom
import pytest
import torch
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.engine.predict import predict
from medxfer.ingest import ingest
from medxfer.ingest.manifest import read_manifest, write_csv

from ..conftest import find_identifiers
from ..ingest.test_shared_data import _identifiers


def _series_uids(folder) -> list[str]:
    uids = set()
    for p in folder.rglob("*"):
        if p.is_file() and p.name != "DICOMDIR":
            try:
                uids.add(str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID))
            except Exception:  # LICENSE, README, SOURCE.txt
                continue
    return sorted(uids)


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.shared_data
def test_real_ct_and_mr_exports_train_in_2_5d_and_predict_one_row_per_volume(shared_data, tmp_path, store):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # restored below; a tiny run on a shared CPU
    data = tmp_path / "data"
    ct, mr = shared_data / "dicom_ct_lspine" / "series6", shared_data / "dicom_mr_lspine_dicomdir"
    shutil.copytree(ct, data / "src" / "ct")
    shutil.copytree(mr, data / "src" / "mr")
    # a 4-digit accession number ("3964") turns up inside hex digests by chance: numbers under 6 digits are
    # left out of the byte search (names, IDs, dates, UIDs and the institution stay in it)
    identifiers = [i for i in _identifiers(data / "src") if not (i.isdigit() and len(i) < 6)]
    series = _series_uids(data / "src")
    assert len(series) == 6  # the CT series (33 slices + its sagittal reference image) and 5 MR series
    labels = data / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["SeriesInstanceUID", "grade"])
        w.writerows((uid, ["low", "high"][i % 2]) for i, uid in enumerate(series))
    res = ingest(data / "src", data / "out", labels=labels, key="SeriesInstanceUID", workers=1)
    shutil.rmtree(data / "src")
    labels.unlink()
    rows, columns = read_manifest(res.manifest)
    volumes = [r for r in rows if r["kind"] == "volume"]
    images = [r for r in rows if r["kind"] != "volume"]
    assert len(volumes) == 1 + 3 + 2 * 5 and all(r["grade"] for r in rows)
    assert sorted(int(r["frames"]) for r in volumes if r["modality"] == "CT") == [33]
    # the CT's sagittal reference image is not stacked into the volume: a 2D item of the same series
    assert len(images) == 1 and images[0]["modality"] == "CT" and images[0]["series"] == next(
        r["series"] for r in volumes if r["modality"] == "CT")
    # one patient: no patient-level split is possible, so the test writes folds round-robin per class
    # (every fold holds both grades), as a smoke test of the geometry, not a study
    seen = {"low": 0, "high": 0}
    for r in sorted(rows, key=lambda r: (r["grade"], r["kind"], r["item_id"])):
        r["fold"] = str(seen[r["grade"]] % 3)
        seen[r["grade"]] += 1
    write_csv(res.manifest, rows, columns + ["fold"])

    try:  # `medxfer train`, the command a user types
        result = CliRunner().invoke(main, [
            "train", "classification", "--manifest", str(res.manifest), "--label", "grade", "--encoder", "resnet18",
            "--fold", "0", "--classes", '["low", "high"]', "--input", "2.5d", "--epochs", "1", "--image_size", "32",
            "--batch_size", "16", "--output_dir", str(tmp_path / "runs" / "fold0")])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"^run \S+ \((\w+)\)", result.output, re.M).group(1)
    run = SimpleNamespace(run_id=run_id, output_dir=tmp_path / "runs" / "fold0")
    test_items = {r["item_id"] for r in rows if r["fold"] == "0" and r["kind"] == "volume"}
    trained = _rows(run.output_dir / "predictions.csv")
    assert sorted(r["item_id"] for r in trained) == sorted(test_items)  # one row per test item, never per slice
    summary = json.loads((run.output_dir / "metrics.json").read_text())
    by_id = {r["item_id"]: r for r in rows}
    assert summary["sample_counts"]["test"] == sum(int(by_id[i]["frames"]) for i in test_items)
    params = mlflow.MlflowClient(store).get_run(run.run_id).data.params
    assert params["input"] == "2.5d" and params["slices"] == "all" and params["in_channels"] == "3"
    # the sagittal reference image beside the CT stack is left out of a sliced cohort, and counted
    assert json.loads(params["data.left_out"]) == {"reference_image": 1}

    out = predict(run.run_id, data / "out", tmp_path / "predicted")
    predicted = _rows(out)
    assert sorted(r["item_id"] for r in predicted) == sorted(r["item_id"] for r in volumes)  # every volume once
    for r in predicted:
        p = [float(v) for k, v in r.items() if k.startswith("p_")]
        assert len(p) == 2 and abs(sum(p) - 1) < 1e-4
    assert find_identifiers(tmp_path, identifiers, (".png",)) == []  # cache, runs, MLflow store, predictions
