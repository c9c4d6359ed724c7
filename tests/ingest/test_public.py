"""Public datasets' layouts → ingest: MedMNIST .npz and DDTI's header-less diagnosis.csv."""
from __future__ import annotations

import csv
import json

import nibabel as nib
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


def test_medmnist_3d_npz_becomes_nifti_volumes_sliced_along_the_arrays_last_axis(tmp_path):
    rng = np.random.default_rng(3)
    # non-cubic, so that an axis swapped anywhere shows; the val split carries a trailing channel axis
    vols = {"train": rng.integers(0, 256, (4, 4, 5, 6), dtype=np.uint8),
            "val": rng.integers(0, 256, (2, 4, 5, 6, 1), dtype=np.uint8)}
    np.savez(tmp_path / "adrenal3d.npz", train_images=vols["train"], train_labels=np.array([[0], [1], [1], [0]]),
             val_images=vols["val"], val_labels=np.array([[1], [0]], np.uint8))
    res = convert_medmnist(tmp_path / "adrenal3d.npz", tmp_path / "nii", ["normal", "hyperplasia"])
    assert res.counts == {"train": 4, "val": 2}
    rows = list(csv.DictReader(open(res.labels)))
    assert rows[2] == {"image": "images/train/train_00002.nii.gz", "label": "hyperplasia", "split": "train"}
    assert rows[4] == {"image": "images/val/val_00000.nii.gz", "label": "hyperplasia", "split": "val"}
    img = nib.load(tmp_path / "nii" / rows[5]["image"])
    # voxel (i, j, k) is the array's [i, j, k]: the array's last axis is NIfTI z; 1 mm, identity affine
    assert img.shape == (4, 5, 6) and img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(img.dataobj), vols["val"][1, ..., 0])
    assert np.array_equal(img.affine, np.eye(4)) and img.header.get_zooms() == (1.0, 1.0, 1.0)

    out = ingest(tmp_path / "nii" / "images", tmp_path / "cohort", labels=res.labels, key="image", modality="OT",
                 workers=1)
    assert out.counts["items"] == 6 and out.counts["labels"]["items_labelled"] == 6
    manifest, _ = read_manifest(out.manifest)
    assert {(r["kind"], r["shape"], r["spacing"], r["frames"], r["modality"]) for r in manifest} == {
        ("volume", "4x5x6", "1x1x1", "6", "OT")}  # 6 slices along z for 2D/2.5D training
    assert sorted((r["split"], r["label"]) for r in manifest) == [
        ("train", "hyperplasia")] * 2 + [("train", "normal")] * 2 + [("val", "hyperplasia"), ("val", "normal")]
    cached = {np.asarray(nib.load(tmp_path / "cohort" / r["image"]).dataobj).tobytes() for r in manifest}
    assert vols["train"][2].tobytes() in cached  # same orientation after ingest's copy


def test_medmnist_3d_shapes_it_cannot_write_are_refused(tmp_path):
    np.savez(tmp_path / "f.npz", train_images=np.zeros((2, 4, 4, 4), np.float32), train_labels=np.zeros((2, 1)))
    with pytest.raises(ConvertError, match=r"train_images is float32 \(2, 4, 4, 4\), expected uint8 .*N×D×H×W"):
        convert_medmnist(tmp_path / "f.npz", tmp_path / "o")
    np.savez(tmp_path / "c.npz", train_images=np.zeros((2, 4, 4, 4, 3), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(ConvertError, match=r"\(2, 4, 4, 4, 3\)"):
        convert_medmnist(tmp_path / "c.npz", tmp_path / "o")
    # a 2D set with a trailing channel axis stays PNG
    np.savez(tmp_path / "g.npz", train_images=np.full((1, 8, 9, 1), 7, np.uint8), train_labels=np.zeros((1, 1)))
    convert_medmnist(tmp_path / "g.npz", tmp_path / "g")
    assert np.asarray(Image.open(tmp_path / "g" / "images/train/train_00000.png")).shape == (8, 9)


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


@pytest.mark.shared_data
def test_real_adrenalmnist3d_converts_and_ingests_one_volume_per_gland(shared_data, tmp_path):
    npz = shared_data / "medmnist3d" / "adrenalmnist3d.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} not found")
    res = convert_medmnist(npz, tmp_path / "nii", ["normal", "hyperplasia"])
    assert res.counts == {"train": 1188, "val": 98, "test": 298}  # MedMNIST's official split sizes
    out = ingest(tmp_path / "nii" / "images", tmp_path / "adrenal", labels=res.labels, key="image", modality="OT")
    manifest, columns = read_manifest(out.manifest)
    assert "label" in columns and "split" in columns and len(manifest) == 1584
    assert {(r["kind"], r["shape"], r["frames"]) for r in manifest} == {("volume", "28x28x28", "28")}
    counts = {}
    for r in manifest:
        counts[r["split"], r["label"]] = counts.get((r["split"], r["label"]), 0) + 1
    assert counts == {("train", "normal"): 929, ("train", "hyperplasia"): 259, ("val", "normal"): 76,
                      ("val", "hyperplasia"): 22, ("test", "normal"): 229, ("test", "hyperplasia"): 69}
