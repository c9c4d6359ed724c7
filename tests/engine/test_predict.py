"""Inference with a trained run: the model rebuilt from MLflow, the evaluation-fold guard, the items of an
ingested folder, and predictions written for a newly ingested folder."""
from __future__ import annotations

import csv
import shutil
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest

from medxfer.core import MedxferError
from medxfer.engine import CohortError, load_cohort, train_bundle
from medxfer.engine.predict import check_evaluation_fold, load_run_model, manifest_items, predict

SIZE = 32
MISSING = "0" * 32


@pytest.fixture(scope="module")
def trained(dental_cohort, tmp_path_factory):
    """One real classification run (resnet18, 32 px, one epoch, PX only, fold 0) in a store of this module."""
    root = tmp_path_factory.mktemp("predict_run")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MEDXFER_HOME", str(root / "medxfer_home"))
        result = train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary",
                              epochs=1, image_size=SIZE, batch_size=4, modalities=["PX"], encoder="resnet18")
    return SimpleNamespace(uri=uri, run_id=result.run_id, manifest=dental_cohort.manifest,
                           predictions=root / result.output_dir / "predictions.csv")


@pytest.fixture(autouse=True)
def _store(trained, monkeypatch, tmp_path):
    """Every test reads the module's store (from its own working folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)


def _probabilities(model, items):
    from medxfer.engine.classification import predict_items
    from medxfer.transforms.pipelines import classification_transforms

    transform = classification_transforms(int(model.config["image_size"]), int(model.config["in_channels"]),
                                          model.preprocessing, augment=False)
    return predict_items(model.network, items, transform, "cpu")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_load_run_model_reproduces_the_runs_recorded_predictions(trained):
    """The network rebuilt from the run's checkpoint gives, item by item, the test probabilities the run
    recorded in its predictions.csv; classes, settings and params come from the run."""
    model = load_run_model(trained.run_id)
    assert model.task == "classification" and model.classes == ["0", "1"]
    assert not model.network.training
    assert model.config["image_size"] == SIZE and model.config["fold"] == 0
    assert model.params["data.manifest_sha256"] and model.params["encoder"] == "resnet18"
    test = load_cohort(trained.manifest, "supernumerary", fold=0, modalities=["PX"]).test
    recorded = {r["item_id"]: [float(r["p_0"]), float(r["p_1"])] for r in _rows(trained.predictions)}
    assert sorted(recorded) == sorted(i["item_id"] for i in test) and len(test) == 4
    prob = _probabilities(model, test)
    np.testing.assert_allclose(prob, [recorded[i["item_id"]] for i in test], atol=1e-5)


def test_load_run_model_names_what_is_missing(trained):
    """An unknown run, or a run without a checkpoint, is a one-line error naming the run and what it lacks."""
    with pytest.raises(ValueError, match="no such MLflow run") as err:
        load_run_model(MISSING)
    assert MISSING in str(err.value) and "\n" not in str(err.value)
    c = mlflow.MlflowClient(trained.uri)
    bare = c.create_run(c.get_experiment_by_name("medxfer/train").experiment_id, run_name="no checkpoint")
    c.set_terminated(bare.info.run_id)
    with pytest.raises(ValueError, match="checkpoint/medxfer_checkpoint.pt") as err:
        load_run_model(bare.info.run_id)
    assert bare.info.run_id in str(err.value)


def test_load_run_model_errors_are_medxfer_errors(trained):
    """An unknown run is one of medxfer's own errors (the CLI reports those as one line, by type), still a
    ValueError for callers that catch that."""
    with pytest.raises(MedxferError) as err:
        load_run_model(MISSING)
    assert isinstance(err.value, ValueError)


def test_check_evaluation_fold_refuses_the_runs_training_folds(trained, tmp_path):
    """On the manifest it was trained on, only the run's test fold is a test (a copy of that manifest is the
    same cohort); any fold of another manifest is."""
    model = load_run_model(trained.run_id)
    check_evaluation_fold(model, 0, trained.manifest)
    for fold in (1, 2, 3):
        with pytest.raises(CohortError, match="tested on fold 0") as err:
            check_evaluation_fold(model, fold, trained.manifest)
        assert f"fold {fold} was among its training or validation folds" in str(err.value)
    copy = tmp_path / "copy" / "manifest.csv"
    copy.parent.mkdir()
    shutil.copyfile(trained.manifest, copy)
    with pytest.raises(CohortError):
        check_evaluation_fold(model, 2, copy)
    other = tmp_path / "other" / "manifest.csv"
    other.parent.mkdir()
    lines = trained.manifest.read_text().splitlines(keepends=True)
    other.write_text("".join(lines[:-1]))  # another cohort: one item fewer
    check_evaluation_fold(model, 2, other)
    check_evaluation_fold(model, 0, other)


def _edited_manifest(dental_cohort, tmp_path, edit):
    """A copy of the cohort's manifest (images shared) with ``edit(rows)`` applied."""
    with open(dental_cohort.manifest, newline="") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), reader.fieldnames
    edit(rows)
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "images").symlink_to(dental_cohort.manifest.parent / "images")
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    return folder


def test_manifest_items_reads_every_2d_item_and_filters_by_modality(dental_cohort, tmp_path):
    """A folder or its manifest: every 2D item, labels not needed (-1); a modality filter (any case) keeps
    only those items; volumes are left out."""
    rows = _rows(dental_cohort.manifest)
    by_folder = manifest_items(dental_cohort.manifest.parent)
    by_file = manifest_items(dental_cohort.manifest)
    assert [i["item_id"] for i in by_folder] == [i["item_id"] for i in by_file] == [r["item_id"] for r in rows]
    assert {i["modality"] for i in by_folder} == {"PX", "DX"} and {i["label"] for i in by_folder} == {-1}
    px = manifest_items(dental_cohort.manifest, ["px"])
    assert [i["item_id"] for i in px] == [r["item_id"] for r in rows if r["modality"] == "PX"] and len(px) == 16
    assert len(manifest_items(dental_cohort.manifest, ["PX", "dx"])) == len(rows)

    def one_volume(rows):
        rows[0].update(kind="volume", shape="64x64x20")

    edited = _edited_manifest(dental_cohort, tmp_path, one_volume)
    assert [i["item_id"] for i in manifest_items(edited)] == [r["item_id"] for r in rows[1:]]


def test_manifest_items_without_a_manifest(tmp_path):
    """A folder that was never ingested: the error says to run medxfer ingest."""
    with pytest.raises(CohortError, match="medxfer ingest"):
        manifest_items(tmp_path)


def test_manifest_items_says_what_the_modality_filter_left_out(dental_cohort):
    """A run trained on other modalities than the folder holds: the error names the modality filter, not
    a missing 2D item (the folder has 32 of them)."""
    with pytest.raises(CohortError) as err:
        manifest_items(dental_cohort.manifest, ["MG"])
    with open(dental_cohort.manifest, newline="") as f:
        modalities = [r["modality"] for r in csv.DictReader(f)]
    found = ", ".join(f"{modalities.count(m)} {m}" for m in sorted(set(modalities)))
    assert str(err.value) == (f"{dental_cohort.manifest}: no 2D item of modality MG to predict: the run's modality "
                              f"filter (the modalities it was trained on) left out {found} items")


def test_predict_cli_names_the_filter_that_left_every_item_out(trained, tmp_path):
    """``medxfer predict`` of a PX run on a folder of cephalograms (DX) only: one line naming the modality
    filter, the run's modality and what it left out, not a bare ``no 2D item to predict``."""
    from click.testing import CliRunner

    from medxfer.cli import main

    with open(trained.manifest, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["modality"] == "DX"]
        fields = reader.fieldnames
    folder = tmp_path / "ceph"
    folder.mkdir()
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    result = CliRunner().invoke(main, ["predict", trained.run_id, str(folder)])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"medxfer: error: {folder / 'manifest.csv'}: no 2D item of modality PX to predict: the run's "
                    f"modality filter (the modalities it was trained on) left out {len(rows)} DX items")


def test_predict_writes_the_runs_predictions_for_a_new_folder(trained, tmp_path):
    """``predict`` on a newly ingested export (no labels, no folds): one row per item of the run's modality
    (PX, the cephalograms left out), the rebuilt model's probabilities and the argmax class."""
    from medxfer import synthetic
    from medxfer.ingest import ingest

    synthetic.write_dental_export(tmp_path / "export", n_patients=3, ceph=True)
    ingest(tmp_path / "export", tmp_path / "new", workers=1)
    path = predict(trained.run_id, tmp_path / "new", batch_size=2)
    assert path == tmp_path / "new" / "predictions" / trained.run_id / "predictions.csv"
    rows = _rows(path)
    assert list(rows[0]) == ["item_id", "p_0", "p_1", "predicted"]
    items = manifest_items(tmp_path / "new", ["PX"])
    assert len(items) == 3 and len(manifest_items(tmp_path / "new")) == 6
    assert [r["item_id"] for r in rows] == [i["item_id"] for i in items]
    expected = _probabilities(load_run_model(trained.run_id), items)
    got = np.array([[float(r["p_0"]), float(r["p_1"])] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r["predicted"] for r in rows] == [["0", "1"][int(p.argmax())] for p in got]

    elsewhere = predict(trained.run_id, tmp_path / "new" / "manifest.csv", out=tmp_path / "out")
    assert elsewhere == tmp_path / "out" / "predictions.csv"
    assert _rows(elsewhere) == rows
