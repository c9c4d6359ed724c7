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


def _export(src, patients):
    from medxfer import synthetic

    for i in patients:
        synthetic.radiograph(src / f"p{i}" / "dx.dcm", synthetic.new_patient(i), rows=24, cols=20)


def _folds(out):
    return {r["patient"]: r["fold"] for r in _read(out)}


def test_reingest_keeps_the_folds_of_a_split_cohort(tmp_path):
    import json

    from medxfer.ingest import ingest

    src, out = tmp_path / "src", tmp_path / "out"
    _export(src, range(6))
    ingest(src, out, workers=1)
    split(out, 3, seed=1)
    folds = _folds(out)
    assert json.loads((out / "split.json").read_text())["assignment"] == {p: int(f) for p, f in folds.items()}
    res = ingest(src, out, workers=1)  # unchanged source: the same folds, no warning
    assert _folds(out) == folds and not any("fold" in w["message"] for w in res.warnings)

    # a new patient: known patients keep their fold; the newcomer has none, and the user is told what to run
    _export(src, [6])
    res = ingest(src, out, workers=1)
    now = _folds(out)
    assert {p: f for p, f in now.items() if p in folds} == folds
    assert [f for p, f in now.items() if p not in folds] == [""]
    msg = next(w["message"] for w in res.warnings if "no fold" in w["message"])
    assert "1 patient(s)" in msg and f"medxfer split {out} --folds 3 --seed 1" in msg
    assert json.loads((out / "split.json").read_text())["folds"] == 3  # the split record is left as made


def test_split_json_without_assignment_recovers_folds_from_the_manifest(tmp_path):
    import json

    from medxfer.ingest.split import SPLIT_FILE, reapply_folds

    rows = _manifest(tmp_path, n_patients=6)
    split(tmp_path, 2)
    doc = json.loads((tmp_path / SPLIT_FILE).read_text())
    del doc["assignment"]  # as written before split.json recorded one
    (tmp_path / SPLIT_FILE).write_text(json.dumps(doc))
    folds = _folds(tmp_path)
    new = [{"item_id": r["item_id"], "patient": r["patient"]} for r in rows]
    columns = list(MANIFEST_COLUMNS)
    assert reapply_folds(tmp_path, new, columns) == []
    assert columns[-1] == "fold" and {r["patient"]: str(r["fold"]) for r in new} == folds
    # nothing to recover from: every fold empty, and the warning says so
    (tmp_path / "manifest.csv").unlink()
    warns = reapply_folds(tmp_path, new, list(MANIFEST_COLUMNS))
    assert len(warns) == 1 and "could not be recovered" in warns[0] and "medxfer split" in warns[0]
    assert {r["fold"] for r in new} == {""}
    # a cohort never split: nothing added
    (tmp_path / SPLIT_FILE).unlink()
    columns = list(MANIFEST_COLUMNS)
    assert reapply_folds(tmp_path, [dict(r) for r in rows], columns) == [] and "fold" not in columns


def test_folds_from_an_official_split_column_keep_its_assignment(tmp_path):
    from click.testing import CliRunner

    from medxfer.cli import main
    from medxfer.engine.data import fold_roles
    from medxfer.ingest.split import split_from_column

    rows = [{"item_id": f"i{k}", "patient": f"pat-{k}", "label": "0", "split": s}
            for k, s in enumerate(["train"] * 6 + ["val"] * 2 + ["test"] * 3 + ["extra"])]
    write_csv(tmp_path / "manifest.csv", rows, MANIFEST_COLUMNS + ["label", "split"])
    summary = split_from_column(tmp_path, "split", ["test", "val", "train"])
    got = {r["item_id"]: (r["split"], r["fold"]) for r in _read(tmp_path)}
    assert {s: f for s, f in got.values()} == {"test": "0", "val": "1", "train": "2", "extra": ""}
    assert summary["items_per_fold"] == {"0": 3, "1": 2, "2": 6} and summary["items_without_fold"] == 1
    # fold 0 of a study then tests on the official test set and selects on the official validation set
    assert fold_roles([0, 1, 2], 0) == {"test": [0], "val": [1], "train": [2]}
    # the command line, and a column that would split a patient
    result = CliRunner().invoke(main, ["split", str(tmp_path), "--from-column", "split", "--order", "test,val,train"])
    assert result.exit_code == 0, result.output
    rows[0]["patient"] = rows[-2]["patient"]  # one patient in train and test
    write_csv(tmp_path / "manifest.csv", rows, MANIFEST_COLUMNS + ["label", "split"])
    with pytest.raises(SplitError, match="keep a patient's items together"):
        split_from_column(tmp_path, "split", ["test", "val", "train"])
    result = CliRunner().invoke(main, ["split", str(tmp_path), "--from-column", "split"])
    assert result.exit_code == 2 and "--order" in result.output
