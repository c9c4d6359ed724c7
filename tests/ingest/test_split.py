import csv
from collections import Counter, defaultdict

import pytest

from medxfer.ingest.manifest import MANIFEST_COLUMNS, write_csv
from medxfer.ingest.split import SplitError, assign_folds, split


def _manifest(tmp_path, n_patients=40, seed=1):
    import random

    rnd = random.Random(seed)
    rows = []
    for p in range(n_patients):
        label = "1" if p % 4 == 0 else "0"  # 25 % positives
        for k in range(rnd.randint(1, 4)):
            rows.append({"item_id": f"i{p}_{k}", "patient": f"pat-{p:04d}", "label": label})
    write_csv(tmp_path / "manifest.csv", rows, MANIFEST_COLUMNS + ["label"])
    return rows


def _read(tmp_path):
    with open(tmp_path / "manifest.csv") as f:
        return list(csv.DictReader(f))


def test_patient_level_stratified_deterministic(tmp_path):
    _manifest(tmp_path)
    summary = split(tmp_path, 5, stratify="label", seed=3)
    rows = _read(tmp_path)
    folds_of_patient = defaultdict(set)
    for r in rows:
        folds_of_patient[r["patient"]].add(r["fold"])
    assert all(len(f) == 1 for f in folds_of_patient.values()), "a patient appears in two folds"
    assert {r["fold"] for r in rows} == {"0", "1", "2", "3", "4"}
    # stratified: every fold has positives, and item counts per fold are balanced
    pos = Counter(r["fold"] for r in rows if r["label"] == "1")
    assert len(pos) == 5 and max(pos.values()) - min(pos.values()) <= 4
    sizes = list(summary["items_per_fold"].values())
    assert max(sizes) - min(sizes) <= 4
    first = [r["fold"] for r in rows]
    split(tmp_path, 5, stratify="label", seed=3)
    assert [r["fold"] for r in _read(tmp_path)] == first  # same seed, same folds
    split(tmp_path, 5, stratify="label", seed=4)
    assert [r["fold"] for r in _read(tmp_path)] != first  # another seed, other folds
    assert list(_read(tmp_path)[0].keys()).count("fold") == 1  # replaced, not appended twice


def test_split_errors(tmp_path):
    _manifest(tmp_path, n_patients=3)
    with pytest.raises(SplitError, match="3 patients cannot fill 5 folds"):
        split(tmp_path, 5)
    with pytest.raises(SplitError, match="not in the manifest"):
        split(tmp_path, 2, stratify="nope")
    with pytest.raises(SplitError, match="at least 2"):
        assign_folds(["a", "b"], ["", ""], 1)
    with pytest.raises(SplitError, match="no manifest.csv"):
        split(tmp_path / "empty", 2)
