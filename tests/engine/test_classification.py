"""predictions.csv as a researcher opens it: class names are label values, so spreadsheet-safe."""
from __future__ import annotations

import csv

import numpy as np

from medxfer.engine.classification import write_predictions
from medxfer.ingest.manifest import read_manifest


def test_class_names_that_look_like_formulas_are_neutralised_and_read_back(tmp_path):
    classes = ["=HYPERLINK(\"http://x\")", "-1"]
    items = [{"item_id": "a", "fold": "0", "label": 0}, {"item_id": "b", "fold": "0", "label": 1}]
    path = write_predictions(tmp_path / "predictions.csv", items, np.array([[0.9, 0.1], [0.2, 0.8]]), classes)
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    assert raw[0]["label"] == "'=HYPERLINK(\"http://x\")"  # a spreadsheet shows text, runs nothing
    assert raw[1]["label"] == "-1"  # a number stays a number
    rows, _ = read_manifest(path)  # medxfer's reader gives the class names back as they were
    assert [r["label"] for r in rows] == classes
    assert [r["y"] for r in rows] == ["0", "1"] and rows[0]["p"] == "0.100000"


def test_predictions_name_each_items_patient_by_its_pseudonym_only(dental_cohort, tmp_path):
    """The study report resamples patients: predictions.csv carries the manifest's patient pseudonym (a keyed
    digest), for a multi-view sample its views', and nothing of the DICOM identifiers it was made from."""
    from medxfer.ingest.manifest import looks_like_identifier_column

    rows, _ = read_manifest(dental_cohort.manifest)
    items = [{"item_id": r["item_id"], "fold": r["fold"], "label": i % 2, "patient": r["patient"],
              "PatientName": "must not be written"} for i, r in enumerate(rows[:4])]
    items.append({"item_id": f"{rows[0]['item_id']}+{rows[1]['item_id']}", "fold": rows[0]["fold"], "label": 0,
                  "views": [{"item_id": rows[0]["item_id"], "patient": rows[0]["patient"]},
                            {"item_id": rows[1]["item_id"], "patient": rows[1]["patient"]}]})
    items.append({"item_id": "no-patient", "fold": "0", "label": 1})  # a manifest without the column
    prob = np.tile([[0.3, 0.7]], (len(items), 1))
    path = write_predictions(tmp_path / "predictions.csv", items, prob, ["a", "b"])
    with open(path, newline="") as f:
        out = list(csv.DictReader(f))
    assert list(out[0])[:2] == ["item_id", "patient"]
    assert [c for c in out[0] if looks_like_identifier_column(c)] == ["item_id"]  # medxfer's own pseudonym
    assert [r["patient"] for r in out] == [r["patient"] for r in rows[:4]] + [rows[0]["patient"], ""]
    assert all(r["patient"].startswith("pat-") for r in rows[:4])  # ingest's keyed digest
    text = path.read_text()
    assert "must not be written" not in text
    assert not any(identifier in text for identifier in dental_cohort.identifiers)
