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
