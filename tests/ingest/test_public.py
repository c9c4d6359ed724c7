"""Public datasets' layouts → ingest: MedMNIST .npz and DDTI's header-less diagnosis.csv."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medxfer.cli import main
from medxfer.engine import load_cohort
from medxfer.ingest import ingest
from medxfer.ingest.manifest import read_manifest
from medxfer.ingest.public import ConvertError, convert_ddti, convert_medmnist
from medxfer.ingest.split import split


def _npz(path, rng, counts=(("train", 12), ("val", 4), ("test", 4))):
    arrays = {}
    for name, n in counts:
        arrays[f"{name}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{name}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz_becomes_pngs_that_ingest_reads_with_their_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = _npz(tmp_path / "pneumonia.npz", rng)
    res = convert_medmnist(tmp_path / "pneumonia.npz", tmp_path / "png", ["normal", "pneumonia"])
    assert res.counts == {"train": 12, "val": 4, "test": 4}
    rows = list(csv.DictReader(open(res.labels)))
    assert len(rows) == 20 and rows[1] == {"image": "images/train/train_00001.png", "label": "pneumonia",
                                           "split": "train"}
    # pixels are the array's, byte for byte
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / rows[13]["image"])), arrays["val_images"][1])

    out = ingest(tmp_path / "png" / "images", tmp_path / "cohort", labels=res.labels, key="image", modality="CR",
                 workers=1)
    assert out.counts["items"] == 20 and out.counts["labels"]["items_labelled"] == 20
    manifest, _ = read_manifest(out.manifest)
    assert sorted(r["label"] for r in manifest) == ["normal"] * 10 + ["pneumonia"] * 10
    assert {r["split"] for r in manifest} == {"train", "val", "test"}


def test_medmnist_errors_name_the_problem(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ConvertError, match="no <split>_images"):
        convert_medmnist(tmp_path / "x.npz", tmp_path / "o")
    np.savez(tmp_path / "m.npz", train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 3), np.uint8))
    with pytest.raises(ConvertError, match="multi-label"):
        convert_medmnist(tmp_path / "m.npz", tmp_path / "o")
    _npz(tmp_path / "p.npz", np.random.default_rng(0))
    with pytest.raises(ConvertError, match="no name"):
        convert_medmnist(tmp_path / "p.npz", tmp_path / "o", ["only_one"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    r = CliRunner().invoke(main, ["convert", "medmnist", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "bad.npz" in r.output and "Traceback" not in r.output


def _ddti(root, rng):
    """A DDTI-layout folder: 4 cases, one with two images and one image with two nodule crops."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = {"1_1": "", "2_1": "3", "2_2": "4a", "3_1(1)": "5", "3_1(2)": "5", "4_1": "2", "5_1": "4c", "6_1": "2"}
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray((rng.random((40, 40)) > 0.5).astype(np.uint8) * 255).save(root / "masks" / f"{name}.gif")
    (root / "diagnosis.csv").write_text("".join(f"{n},{t}\n" for n, t in names.items()))
    return names


def test_ddti_labels_group_a_case_into_one_patient_and_one_fold(tmp_path):
    rng = np.random.default_rng(1)
    names = _ddti(tmp_path / "DDTI", rng)
    r = CliRunner().invoke(main, ["convert", "ddti", str(tmp_path / "DDTI"), "--out", str(tmp_path / "labels")])
    assert r.exit_code == 0, r.output
    rows = {row["image"]: row for row in csv.DictReader(open(tmp_path / "labels" / "labels.csv"))}
    assert rows["images/3_1(2).png"] == {"image": "images/3_1(2).png", "tirads": "5", "case": "3",
                                         "mask": "masks/3_1(2).gif"}
    assert rows["images/1_1.png"]["tirads"] == ""  # unlabelled, kept blank

    r = CliRunner().invoke(main, ["ingest", str(tmp_path / "DDTI" / "images"), "--out", str(tmp_path / "thyroid"),
                                  "--labels", str(tmp_path / "labels" / "labels.csv"), "--key", "image",
                                  "--patient-column", "case", "--modality", "US", "--workers", "1"])
    assert r.exit_code == 0, r.output
    manifest, columns = read_manifest(tmp_path / "thyroid" / "manifest.csv")
    assert "case" not in columns and len(manifest) == len(names)  # the patient column is hashed, never copied
    patients = {r["mask"]: r["patient"] for r in manifest}
    assert patients["masks/2_1.gif"] == patients["masks/2_2.gif"]  # one case, two images
    assert patients["masks/3_1(1).gif"] == patients["masks/3_1(2).gif"] != patients["masks/2_1.gif"]
    assert len(set(patients.values())) == 6
    report = json.loads((tmp_path / "thyroid" / "ingest_report.json").read_text())
    assert report["counts"]["patients"] == 6 and report["counts"]["labels"]["patient_from_labels"] == 8

    split(tmp_path / "thyroid", 3, stratify="tirads")
    manifest, _ = read_manifest(tmp_path / "thyroid" / "manifest.csv")
    folds = {}
    for row in manifest:
        folds.setdefault(row["patient"], set()).add(row["fold"])
    assert all(len(f) == 1 for f in folds.values())  # a case never straddles folds
    # TI-RADS 2–3 vs 4a–5; the unlabelled case is left out and counted
    c = load_cohort(tmp_path / "thyroid" / "manifest.csv", "tirads", fold=0,
                    classes={"benign": [2, 3], "suspicious": ["4a", "4b", "4c", 5]})
    items = c.train + c.val + c.test
    assert c.skipped == {"no_label": 1} and len(items) == 7
    assert sorted(i["label_name"] for i in items) == ["benign"] * 3 + ["suspicious"] * 4


def test_ddti_errors_and_patient_column_misuse(tmp_path):
    rng = np.random.default_rng(2)
    _ddti(tmp_path / "DDTI", rng)
    (tmp_path / "DDTI" / "images" / "5_1.png").unlink()
    with pytest.raises(ConvertError, match=r"1 diagnosis rows have no image .*5_1\.png"):
        convert_ddti(tmp_path / "DDTI", tmp_path / "labels")
    with pytest.raises(ConvertError, match="no diagnosis.csv"):
        convert_ddti(tmp_path, tmp_path / "labels")
    (tmp_path / "labels.csv").write_text("image,tirads\n1_1.png,2\n")
    r = CliRunner().invoke(main, ["ingest", str(tmp_path / "DDTI" / "images"), "--out", str(tmp_path / "o"),
                                  "--labels", str(tmp_path / "labels.csv"), "--key", "image",
                                  "--patient-column", "case"])
    assert r.exit_code != 0 and "--patient-column 'case' is not one of its columns" in r.output
    r = CliRunner().invoke(main, ["ingest", str(tmp_path / "DDTI" / "images"), "--out", str(tmp_path / "o"),
                                  "--patient-column", "case"])
    assert r.exit_code != 0 and "give --labels too" in r.output


@pytest.mark.shared_data
def test_real_ddti_and_pneumoniamnist_convert_with_the_documented_counts(shared_data, tmp_path):
    res = convert_ddti(shared_data / "ddti_thyroid", tmp_path / "ddti")
    assert res.counts == {"images": 655, "labelled": 457, "unlabelled": 198, "no_mask": 0}
    rows = list(csv.DictReader(open(res.labels)))
    assert sum(r["tirads"] in ("2", "3") for r in rows) == 71 and sum(
        r["tirads"] in ("4a", "4b", "4c", "5") for r in rows) == 386
    res = convert_medmnist(shared_data / "medmnist" / "pneumoniamnist_reconstructed.npz", tmp_path / "pneu",
                           ["normal", "pneumonia"])
    assert res.counts == {"train": 4708, "val": 524, "test": 624}
    labels = [r["label"] for r in csv.DictReader(open(res.labels))]
    assert labels.count("normal") == 1214 + 135 + 234
