"""Manifest → fold roles and item lists."""
from __future__ import annotations

import csv

import pytest

from medxfer.engine import CohortError, fold_roles, load_cohort


def test_fold_roles_rotate_test_and_validation():
    assert fold_roles([0, 1, 2, 3], 0) == {"test": [0], "val": [1], "train": [2, 3]}
    assert fold_roles([0, 1, 2, 3], 3) == {"test": [3], "val": [0], "train": [1, 2]}
    with pytest.raises(CohortError, match="at least 3"):
        fold_roles([0, 1], 0)
    with pytest.raises(CohortError, match="fold 7 is not in the manifest"):
        fold_roles([0, 1, 2], 7)


def test_cohort_is_patient_level_and_every_item_is_tested_once(dental_cohort):
    tested = []
    for fold in range(4):
        c = load_cohort(dental_cohort.manifest, "supernumerary", fold=fold, modalities=["PX"])
        assert c.classes == ["0", "1"] and c.counts() == {"train": 8, "val": 4, "test": 4}
        assert {i["fold"] for i in c.test} == {fold} and {i["fold"] for i in c.val} == {(fold + 1) % 4}
        assert c.skipped == {"other_modality": 16}
        assert all(i["modality"] == "PX" and i["label"] in (0, 1) for i in c.train)
        tested += [i["item_id"] for i in c.test]
    assert len(tested) == len(set(tested)) == 16
    both = load_cohort(dental_cohort.manifest, "supernumerary", fold=0)
    assert sum(both.counts().values()) == 32 and "other_modality" not in both.skipped


def test_errors_say_what_to_do(dental_cohort, tmp_path):
    with pytest.raises(CohortError, match="no column 'age'"):
        load_cohort(dental_cohort.manifest, "age")
    rows = list(csv.DictReader(open(dental_cohort.manifest)))
    columns = [c for c in rows[0] if c != "fold"]
    unsplit = tmp_path / "manifest.csv"
    with open(unsplit, "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(CohortError, match="run `medxfer split"):
        load_cohort(unsplit, "supernumerary")
    with pytest.raises(CohortError, match="single class"):
        load_cohort(dental_cohort.manifest, "body_part", modalities=["PX"])
    with pytest.raises(CohortError, match="no such manifest"):
        load_cohort(tmp_path / "nope.csv", "x")


def test_named_classes_leave_other_values_out_and_count_them(mammography_cohort):
    c = load_cohort(mammography_cohort.manifest, "pathology", fold=0, classes=["benign", "malignant"])
    items = c.train + c.val + c.test
    assert c.classes == ["benign", "malignant"] and {i["label_name"] for i in items} == {"benign", "malignant"}
    assert c.skipped == {"other_class": 16} and len(items) == 32  # 48 images, a third normal
    with pytest.raises(CohortError, match="none of classes"):
        load_cohort(mammography_cohort.manifest, "pathology", fold=0, classes=["BENIGN", "MALIGNANT"])


def test_classes_mapping_groups_values_and_leaves_the_rest_out(mammography_cohort):
    # DDTI-style grouping: values -> classes, in the mapping's order; unmatched values left out and counted
    c = load_cohort(mammography_cohort.manifest, "pathology", fold=0,
                    classes={"no_cancer": ["normal", "benign"], "cancer": ["malignant"]})
    items = c.train + c.val + c.test
    assert c.classes == ["no_cancer", "cancer"] and len(items) == 48 and not c.skipped
    assert all(i["label"] == (i["label_name"] == "cancer") for i in items)
    assert sum(i["label"] for i in items) == 16  # a third malignant
    c = load_cohort(mammography_cohort.manifest, "pathology", fold=0,
                    classes={"benign": "benign", "malignant": ["malignant"]})
    assert c.skipped == {"other_class": 16} and c.classes == ["benign", "malignant"]
    with pytest.raises(CohortError, match="in both"):
        load_cohort(mammography_cohort.manifest, "pathology", classes={"a": ["benign"], "b": ["benign", "malignant"]})
    with pytest.raises(CohortError, match="groups no value"):
        load_cohort(mammography_cohort.manifest, "pathology", classes={"a": [], "b": ["malignant"]})


def test_class_values_reads_yaml_numbers_as_the_manifest_text():
    from medxfer.engine.data import class_values

    assert class_values({"benign": [2, 3.0], "suspicious": ["4a", 5]}) == {"2": "benign", "3": "benign",
                                                                          "4a": "suspicious", "5": "suspicious"}
    assert class_values(["benign", "malignant"]) == {"benign": "benign", "malignant": "malignant"}
    with pytest.raises(CohortError, match="twice"):
        class_values(["a", "a"])
