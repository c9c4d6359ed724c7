"""One MLflow run per training: RunTracker, run names, the final outcome and the best-checkpoint choice."""
from __future__ import annotations

import math
from types import SimpleNamespace

import mlflow
import pytest
import torch

from medxfer.engine import RunTracker, run_name
from medxfer.engine.mlflow_run import load_best_checkpoint, log_outcome
from medxfer.models import create_encoder, save_checkpoint
from medxfer.tracking.layout import CHECKPOINT_ARTIFACT


def _client(uri):
    return mlflow.MlflowClient(uri)


def _history(c, run_id, key):
    return [(m.step, m.value) for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.parametrize("args, expected", [
    (("classification", "resnet18", "scratch", "none", 0.001, 0, 0),
     "classification/resnet18/scratch/none/lr0.001/fold0/seed0"),
    (("segmentation", "densenet121", "radimagenet", "top:2", 1e-4, 3, 1),
     "segmentation/densenet121/radimagenet/top:2/lr0.0001/fold3/seed1"),
    (("classification", "resnet50", "run:abc", "all", 3e-5, 1, 2),
     "classification/resnet50/run:abc/all/lr3e-05/fold1/seed2"),
    (("classification", "resnet18", "imagenet", "none", 0.01, 4, 10),
     "classification/resnet18/imagenet/none/lr0.01/fold4/seed10"),
])
def test_run_name_format(args, expected):
    """Run names are deterministic ``task/encoder/weights/freeze/lr/fold/seed`` (what the UI and studies show)."""
    assert run_name(*args) == expected


def test_run_tracker_writes_a_complete_run(store):
    """Start → params and tags (parent link included) → per-step metrics → artifact → FINISHED, all in the store."""
    c = _client(store)
    parent = c.create_run(c.create_experiment("medxfer/dental")).info.run_id
    tracker = RunTracker("medxfer/dental", "classification/resnet18/scratch/none/lr0.001/fold0/seed0",
                         params={"lr": 0.001, "fold": 0, "freeze": "none"}, tags={"medxfer.role": "cell"},
                         parent_run_id=parent)
    run_id = tracker.start()
    run = c.get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == tracker.name
    assert c.get_experiment(run.info.experiment_id).name == "medxfer/dental"
    assert run.data.params == {"lr": "0.001", "fold": "0", "freeze": "none"}
    assert run.data.tags["medxfer.role"] == "cell" and run.data.tags["mlflow.parentRunId"] == parent

    tracker.log_metrics({"val_auc": 0.5, "val_loss": 0.7}, step=1)
    tracker.log_metrics({"val_auc": 0.75, "val_loss": 0.6}, step=2)
    tracker.log_metrics({"test_auc": 0.8, "undefined_auc": float("nan"), "inf_auc": -math.inf, "none": None})
    tracker.set_tag("model_selection", "best validation AUC")
    note = store.removeprefix("sqlite:///").rsplit("/", 1)[0] + "/note.txt"
    with open(note, "w") as f:
        f.write("hello")
    tracker.log_artifact(note, "notes")
    tracker.finish()
    tracker.finish("FAILED")  # a second close changes nothing

    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _history(c, run_id, "val_auc") == [(1, 0.5), (2, 0.75)]
    assert run.data.metrics["test_auc"] == pytest.approx(0.8)
    assert not {"undefined_auc", "inf_auc", "none"} & set(run.data.metrics)  # undefined values are skipped
    assert run.data.tags["model_selection"] == "best validation AUC"
    assert [a.path for a in c.list_artifacts(run_id, "notes")] == ["notes/note.txt"]


def test_run_tracker_logs_many_and_long_params(store):
    """More params than one MLflow batch holds, and a value longer than MLflow accepts, are all recorded."""
    params = {f"p{i:03d}": i for i in range(250)}
    params["data.left_out"] = "x" * 7000
    tracker = RunTracker("medxfer/train", "many", params=params)
    run_id = tracker.start()
    tracker.finish()
    logged = _client(store).get_run(run_id).data.params
    assert len(logged) == 251 and logged["p249"] == "249"
    assert logged["data.left_out"] == "x" * 6000


@pytest.mark.parametrize("rank, enabled", [("1", True), ("0", False)])
def test_a_disabled_tracker_writes_nothing(store, monkeypatch, rank, enabled):
    """DDP ranks other than 0 (and a disabled tracker) open no run and create no experiment: one run per training."""
    monkeypatch.setenv("RANK", rank)
    tracker = RunTracker("medxfer/ddp", "rank", params={"lr": 1}, enabled=enabled)
    assert tracker.start() is None and tracker.run_id is None
    tracker.log_params({"a": 1})
    tracker.log_metrics({"val_auc": 0.5}, step=1)
    tracker.set_tag("t", "v")
    tracker.log_artifact(__file__)
    tracker.finish()
    log_outcome(tracker, {"test_auc": 0.5}, {"t": "v"}, [], __file__)
    c = _client(store)
    assert [e.name for e in c.search_experiments()] == ["Default"]
    assert c.search_runs(["0"]) == []


def test_log_outcome_closes_the_run_with_a_reusable_checkpoint(store, tmp_path):
    """Final metrics, tags, artifacts (absent ones skipped), the checkpoint at the contract path — usable as
    ``run:<id>`` weights — and the bundle configs; the run ends FINISHED."""
    out = tmp_path / "out"
    encoder = create_encoder("resnet18", in_channels=1)
    checkpoint = save_checkpoint(out / CHECKPOINT_ARTIFACT, encoder, provenance={"fold": 2})
    (out / "metrics.json").write_text("{}")
    (out / "train.json").write_text("{}")
    tracker = RunTracker("medxfer/train", "outcome")
    run_id = tracker.start()
    log_outcome(tracker, {"test_auc": 0.9, "test_sensitivity": math.nan}, {"model_selection": "best validation AUC"},
                [out / "metrics.json", None], checkpoint, [out / "train.json"])
    c = _client(store)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"test_auc": pytest.approx(0.9)}
    assert run.data.tags["model_selection"] == "best validation AUC"
    assert {a.path for a in c.list_artifacts(run_id)} == {"metrics.json", "checkpoint", "bundle_configs"}
    assert [a.path for a in c.list_artifacts(run_id, "checkpoint")] == [CHECKPOINT_ARTIFACT]
    assert [a.path for a in c.list_artifacts(run_id, "bundle_configs")] == ["bundle_configs/train.json"]
    chained = create_encoder("resnet18", f"run:{run_id}", in_channels=1)
    assert chained.weights_record.provenance["fold"] == 2
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(chained.state_dict()[name], tensor), name
    log_outcome(None, {"test_auc": 0.1}, {}, [], checkpoint)  # no tracker: nothing happens


def test_log_outcome_uses_the_contract_path_whatever_the_file_name(store, tmp_path):
    """The run's checkpoint is at ``checkpoint/medxfer_checkpoint.pt`` (the ``run:<id>`` source) whatever the
    local file was called."""
    local = tmp_path / "best_model_fold0.pt"
    local.write_bytes(b"checkpoint")
    tracker = RunTracker("medxfer/train", "renamed")
    run_id = tracker.start()
    log_outcome(tracker, {}, {}, [], local)
    assert [a.path for a in _client(store).list_artifacts(run_id, "checkpoint")] == [CHECKPOINT_ARTIFACT]


def test_attached_tracker_logs_epochs_and_fails_the_run_on_a_crash(store):
    """Ignite glue: epoch-mean ``train_loss`` and validation metrics with the epoch as step; an exception in
    training marks the run FAILED and still reaches the caller."""
    from ignite.engine import Engine, Events

    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metrics(engine):
        engine.state.metrics = {"val_auc": 0.5 + 0.1 * trainer.state.epoch}

    losses = iter([1.0, 3.0, 0.5, 0.5, 9.0])

    def step(engine, batch):
        if engine.state.epoch == 3:
            raise RuntimeError("out of memory")
        return {"loss": next(losses)}

    trainer = Engine(step)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine):
        evaluator.run([0])

    tracker = RunTracker("medxfer/train", "attached")
    run_id = tracker.start()
    tracker.attach(trainer, evaluator)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.run([0, 1], max_epochs=3)
    c = _client(store)
    assert c.get_run(run_id).info.status == "FAILED"
    assert _history(c, run_id, "train_loss") == [(1, 2.0), (2, 0.5)]
    assert [(s, round(v, 6)) for s, v in _history(c, run_id, "val_auc")] == [(1, 0.6), (2, 0.7)]


def _linear(value):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


@pytest.mark.parametrize("wrapped", [True, False])
def test_load_best_checkpoint_loads_the_kept_model(tmp_path, wrapped):
    """With a defined best metric the model CheckpointSaver kept (``best_model.pt``, with or without a
    ``model`` key) is what gets tested."""
    state = _linear(2.0).state_dict()
    torch.save({"model": state} if wrapped else state, tmp_path / "best_model.pt")
    model = _linear(0.0)
    evaluator = SimpleNamespace(state=SimpleNamespace(best_metric=0.75))
    assert load_best_checkpoint(model, tmp_path, evaluator) == "best validation AUC"
    assert all(torch.all(p == 2.0) for p in model.parameters())


@pytest.mark.parametrize("best_metric", [-math.inf, math.nan])
def test_load_best_checkpoint_with_an_undefined_metric_tests_the_last_epoch(tmp_path, best_metric):
    """A key metric undefined on every epoch (one-class validation: -inf) is no selection: the last epoch's
    model stays, and the record says so."""
    torch.save({"model": _linear(2.0).state_dict()}, tmp_path / "best_model.pt")  # saved on an undefined metric
    model = _linear(5.0)
    evaluator = SimpleNamespace(state=SimpleNamespace(best_metric=best_metric))
    assert load_best_checkpoint(model, tmp_path, evaluator) == "last epoch (validation AUC undefined)"
    assert all(torch.all(p == 5.0) for p in model.parameters())


def test_load_best_checkpoint_without_a_saved_model(tmp_path):
    """No ``best_model*.pt`` (nothing was ever saved): the last epoch is tested, named by the metric given."""
    model = _linear(5.0)
    assert load_best_checkpoint(model, tmp_path, None, "validation Dice") == "last epoch (validation Dice undefined)"
    assert all(torch.all(p == 5.0) for p in model.parameters())
