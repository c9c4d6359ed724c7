"""The classification bundle: MONAI bundle layout, ConfigWorkflow run, MLflow record, CLI."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.engine import bundle_path, train_bundle
from medxfer.models import create_encoder

from ..conftest import find_identifiers

BUNDLE = bundle_path("classification")
SMALL = {"epochs": 2, "image_size": 64, "batch_size": 4, "modalities": ["PX"], "encoder": "resnet18"}


def _runs(uri, experiment="medxfer/train"):
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def test_bundle_layout_and_metadata_verify_offline(monkeypatch):
    from monai.bundle import verify_metadata

    for name in ("metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json",
                 "logging.conf"):
        assert (BUNDLE / "configs" / name).is_file(), name
    assert (BUNDLE / "docs" / "README.md").is_file() and (BUNDLE / "LICENSE").is_file()

    def no_network(*args, **kwargs):
        raise AssertionError("verify_metadata tried to download")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"),
                    filepath=str(BUNDLE.parent / "meta_schema_20240725.json"),
                    hash_val="76e1add273836515d0bbb3bc71962474")


def test_train_logs_params_epochs_test_metrics_and_artifacts(dental_cohort, mlflow_store, tmp_path):
    result = train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary", **SMALL)
    client, runs = _runs(mlflow_store)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "classification/resnet18/scratch/none/lr0.001/fold0/seed0" == result.run_name
    assert run.info.status == "FINISHED" and run.info.run_id == result.run_id
    params = run.data.params
    for key in ("encoder", "weights", "freeze", "lr", "fold", "seed", "epochs", "batch_size", "image_size",
                "weights.name", "weights.stem", "preprocessing.mode", "data.manifest_sha256", "data.n_train"):
        assert key in params, key
    assert params["data.n_train"] == "8" and params["preprocessing.mode"] == "scratch"
    assert params["data.positive_class"] == "1"
    for metric in ("train_loss", "val_auc", "val_loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    for metric in ("test_auc", "test_accuracy", "test_sensitivity", "test_specificity"):
        assert 0.0 <= run.data.metrics[metric] <= 1.0, metric
    assert result.metrics["test_auc"] == pytest.approx(run.data.metrics["test_auc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    expected = {"predictions.csv", "roc.png", "metrics.json", "run_config.json", "checkpoint", "bundle_configs"}
    assert expected <= artifacts
    rows = list(csv.DictReader(open(result.output_dir / "predictions.csv")))
    assert len(rows) == 4 and set(rows[0]) == {"item_id", "patient", "fold", "label", "y", "p_0", "p_1", "p"}
    assert all(r["patient"].startswith("pat-") for r in rows)  # the manifest's pseudonym, never empty
    assert all(r["fold"] == "0" for r in rows)
    assert sum(float(rows[0][k]) for k in ("p_0", "p_1")) == pytest.approx(1.0, abs=1e-5)

    # the run's checkpoint is a weights source for the next run (self-pretraining chains)
    chained = create_encoder("resnet18", f"run:{run.info.run_id}", in_channels=1)
    assert chained.weights_record.provenance["fold"] == 0

    # no identifier from the DICOM headers anywhere in the store or the outputs
    assert find_identifiers(tmp_path, dental_cohort.identifiers) == []


def test_train_cli_and_one_line_errors(dental_cohort, mlflow_store):
    args = ["train", "classification", "--manifest", dental_cohort.manifest, "--label", "supernumerary",
            "--encoder", "mobilenet_v1_025", "--fold", "1", "--epochs", "1", "--image_size", "64",
            "--modalities", '["PX"]', "--batch_size", "4"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "classification/mobilenet_v1_025/scratch/none/lr0.001/fold1/seed0" in result.stdout
    assert "test_auc" in result.stdout
    bad = CliRunner().invoke(main, [str(a) for a in args[:-8]] + ["--weights", "radimagenet"])
    assert bad.exit_code == 2
    assert bad.stderr.strip().splitlines() == [
        "medxfer: error: unknown weights source 'radimagenet'; known sources: scratch, file:PATH, run:RUN_ID"]
    _, runs = _runs(mlflow_store)
    assert len(runs) == 1  # the failed configuration never opened a run


def test_monai_bundle_run_with_overrides(dental_cohort, tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "train.json"),
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
           "--bundle_root", str(BUNDLE), "--manifest", str(dental_cohort.manifest), "--label", "supernumerary",
           "--encoder", "resnet18", "--weights", "scratch", "--fold", "2", "--epochs", "1", "--image_size", "64",
           "--modalities", "['PX']", "--batch_size", "4"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "runs").glob("*fold2*/metrics.json")).read_text())
    assert metrics["config"]["fold"] == 2 and "test_auc" in metrics["metrics"]


def test_predict_with_a_trained_run_on_a_newly_ingested_folder(dental_cohort, mlflow_store, tmp_path):
    from medxfer import synthetic
    from medxfer.ingest import ingest

    result = train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary",
                          **dict(SMALL, epochs=1))
    synthetic.write_dental_export(tmp_path / "new_export", n_patients=3, ceph=False)
    ingest(tmp_path / "new_export", tmp_path / "new", workers=1)  # no labels, no split
    out = CliRunner().invoke(main, ["predict", result.run_id, str(tmp_path / "new")])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(open(tmp_path / "new" / "predictions" / result.run_id / "predictions.csv")))
    assert len(rows) == 3 and set(rows[0]) == {"item_id", "p_0", "p_1", "predicted"}
    assert all(abs(float(r["p_0"]) + float(r["p_1"]) - 1) < 1e-5 and r["predicted"] in ("0", "1") for r in rows)
    missing = CliRunner().invoke(main, ["predict", "0" * 32, str(tmp_path / "new")])
    assert missing.exit_code == 2 and "no such MLflow run" in missing.stderr


def test_ui_binds_to_localhost_on_the_project_store(mlflow_store):
    from medxfer.tracking import ui_command

    argv, env = ui_command()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert env["MLFLOW_BACKEND_STORE_URI"] == mlflow_store  # the store in the environment, not on argv
    help_text = CliRunner().invoke(main, ["ui", "--help"]).stdout
    assert "127.0.0.1" in help_text and "--port" in help_text


def test_ddp_training_with_gloo_on_two_processes(dental_cohort, tmp_path):
    """torchrun + multi_gpu_train.json on CPU: DistributedDataParallel, distributed sampler, and a
    single MLflow run written by rank 0."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    configs = f"['{BUNDLE / 'configs' / 'train.json'}','{BUNDLE / 'configs' / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file", configs,
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", "False", "--bundle_root", str(BUNDLE), "--manifest", str(dental_cohort.manifest),
           "--label", "supernumerary", "--encoder", "resnet18", "--epochs", "2", "--image_size", "64",
           "--batch_size", "2", "--modalities", "['PX']"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("medxfer/train").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_auc")] == [1, 2]
    assert "test_auc" in runs[0].data.metrics
    assert len(list((tmp_path / "runs").glob("*/predictions.csv"))) == 1


def test_evaluate_config_tests_a_trained_run_on_another_fold(dental_cohort, mlflow_store):
    trained = train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary",
                           **dict(SMALL, epochs=1))
    # image size, channels, modalities and the test fold come from the run itself
    evaluated = train_bundle("classification", config="evaluate", manifest=str(dental_cohort.manifest),
                             label="supernumerary", mlflow_run_id=trained.run_id)
    assert evaluated.metrics["test_auc"] == pytest.approx(trained.metrics["test_auc"])  # same model, same fold
    client, runs = _runs(mlflow_store, "medxfer/evaluate")
    assert len(runs) == 1 and runs[0].data.tags["model_selection"] == "the evaluated run"
    with pytest.raises(Exception) as err:  # its training folds are no test
        train_bundle("classification", config="evaluate", manifest=str(dental_cohort.manifest),
                     label="supernumerary", mlflow_run_id=trained.run_id, fold=2)
    assert "was among its training or validation folds" in repr(err.value.__cause__ or err.value) or \
        "was among its training or validation folds" in str(err.value)
    _, runs = _runs(mlflow_store, "medxfer/evaluate")
    assert all(r.info.status != "RUNNING" for r in runs)


def test_multiclass_with_class_weighting(dental_cohort, mlflow_store, tmp_path):
    rows = list(csv.DictReader(open(dental_cohort.manifest)))
    patients = sorted({r["patient"] for r in rows})
    for r in rows:  # three classes, constant per patient (folds are patient-level)
        r["grade"] = "abc"[patients.index(r["patient"]) % 3]
    manifest = tmp_path / "cohort" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (manifest.parent / "images").symlink_to(dental_cohort.manifest.parent / "images")
    result = train_bundle("classification", manifest=str(manifest), label="grade", class_weighting=True,
                          **dict(SMALL, epochs=1, modalities=None))
    out = list(csv.DictReader(open(result.output_dir / "predictions.csv")))
    assert set(out[0]) == {"item_id", "patient", "fold", "label", "y", "p_a", "p_b", "p_c"}
    assert {r["label"] for r in out} <= {"a", "b", "c"}
    assert 0 <= result.metrics["test_accuracy"] <= 1 and "test_auc" in result.metrics
    _, runs = _runs(mlflow_store)
    assert runs[0].data.params["data.classes"] == '["a", "b", "c"]' and runs[0].data.params["class_weighting"] == "True"
    # a mapping groups values into classes (TI-RADS 2–3 vs 4a–5 style); the grouping is a run param
    grouped = train_bundle("classification", manifest=str(manifest), label="grade",
                           classes={"ab": ["a", "b"], "c": ["c"]}, **dict(SMALL, epochs=1, modalities=None))
    out = list(csv.DictReader(open(grouped.output_dir / "predictions.csv")))
    assert {r["label"] for r in out} <= {"ab", "c"} and {"p_ab", "p_c", "p"} <= set(out[0])
    import mlflow

    params = mlflow.get_run(grouped.run_id).data.params
    assert params["data.classes"] == '["ab", "c"]' and params["data.class_values"] == '{"ab": ["a", "b"], "c": ["c"]}'


def test_a_remote_tracking_server_works_unchanged(dental_cohort, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI pointing at an `mlflow server` (artifacts proxied through it)."""
    import socket
    import time
    import urllib.request

    import mlflow

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server_artifacts")], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        result = train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary",
                              **dict(SMALL, epochs=1))
        client = mlflow.MlflowClient(url)
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED" and "test_auc" in run.data.metrics
        assert {a.path for a in client.list_artifacts(result.run_id)} >= {"predictions.csv", "checkpoint"}
        assert not (tmp_path / "mlruns").exists()  # nothing went to the local default store
        assert create_encoder("resnet18", f"run:{result.run_id}", in_channels=1) is not None
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_file_weights_keep_only_the_base_name_and_failed_setups_close_their_run(dental_cohort, mlflow_store,
                                                                                 tmp_path):
    from medxfer.models import save_checkpoint

    folder = tmp_path / "weights_of_SMITH_JOHN"
    encoder = create_encoder("resnet18", in_channels=1)
    save_checkpoint(folder / "self.pt", encoder)
    result = train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary",
                          **dict(SMALL, epochs=1, weights=f"file:{folder / 'self.pt'}"))
    assert result.run_name == "classification/resnet18/file:self.pt/none/lr0.001/fold0/seed0"
    client, runs = _runs(mlflow_store)
    assert runs[0].data.params["weights"] == "file:self.pt"
    assert find_identifiers(tmp_path, ["SMITH_JOHN"]) == []  # store, artifacts, outputs

    with pytest.raises(Exception):  # noqa: B017 - MONAI wraps it; the assertion is the FAILED run below
        train_bundle("classification", manifest=str(dental_cohort.manifest), label="supernumerary",
                     **dict(SMALL, epochs=1, image_size=-4))
    _, runs = _runs(mlflow_store)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
