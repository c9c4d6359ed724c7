"""One run on several processes (``medxfer train --nproc N``): shards per rank, validation gathered across ranks,
one MLflow run, one-line errors and SIGTERM as a single-process run gives them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.engine import bundle_path, distributed
from medxfer.engine.bundles import BundleError

WORLD = 2
SHARDS = (slice(0, 7), slice(7, 12))  # uneven, as validation shards are
CLASSES = 3


# ----------------------------------------------------------------------------- metrics gathered over 2 gloo ranks

def _validation_set() -> dict:
    """12 validation samples: binary and 3-class logits / labels, the slice samples' items (item "a" has samples
    on both ranks), and one-hot masks for the Dice."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    items = ["a", "a", "b", "b", "c", "d", "a", "e", "e", "f", "g", "g"]
    item_labels = {"a": 1, "b": 0, "c": 1, "d": 0, "e": 0, "f": 1, "g": 1}
    masks = torch.rand(12, 1, 8, 8, generator=g) > 0.6
    preds = masks ^ (torch.rand(12, 1, 8, 8, generator=g) > 0.8)  # wrong in about a fifth of the pixels

    def onehot(m):
        return torch.cat([~m, m], 1).float()

    return {"binary": torch.randn(12, 2, generator=g) + labels[:, None] * torch.tensor([0.0, 0.8]),
            "labels": labels, "multi": torch.randn(12, CLASSES, generator=g),
            "multi_labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0]),
            "items": items, "item_labels": [item_labels[i] for i in items],
            "dice_pred": onehot(preds), "dice_true": onehot(masks)}


def _evaluate(rows: slice) -> dict[str, float]:
    """Run the bundles' validation metrics over ``rows`` of the validation set (batches of 3) with an ignite
    engine, as the evaluator does; returns what each computes (gathered over the ranks when distributed)."""
    from ignite.engine import Engine
    from monai.handlers import MeanDice

    from medxfer.engine.classification import ValidationAUC, ValidationLoss
    from medxfer.engine.segmentation import VolumeDice

    data = _validation_set()
    n = len(data["labels"][rows])
    batches = [{k: v[rows][i:i + 3] for k, v in data.items()} for i in range(0, n, 3)]
    for batch in batches:
        batch["item_id"], batch["item_label"] = batch.pop("items"), torch.tensor(batch.pop("item_labels"))
    out = {}
    for name, metric, output in [
            ("auc", ValidationAUC(2), lambda b: (b["binary"], b["labels"])),
            ("auc_multiclass", ValidationAUC(CLASSES), lambda b: (b["multi"], b["multi_labels"])),
            ("auc_per_item", ValidationAUC(2, aggregate="mean"), lambda b: (b["binary"], b["labels"])),
            ("loss", ValidationLoss(), lambda b: (b["binary"], b["labels"])),
            ("dice", MeanDice(include_background=False), lambda b: (b["dice_pred"], b["dice_true"])),
            ("dice_per_item", VolumeDice(), lambda b: (b["dice_pred"], b["dice_true"]))]:
        engine = Engine(lambda engine, batch, output=output: output(batch))
        metric.attach(engine, name)
        out[name] = float(engine.run(batches).metrics[name])
    return out


def _rank(rank: int, folder: str) -> None:
    """One of the 2 spawned ranks: its shard of the validation set, the metrics written to ``folder``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        Path(folder, f"rank{rank}.json").write_text(json.dumps(_evaluate(SHARDS[rank])))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gathered(tmp_path_factory) -> list[dict[str, float]]:
    """The metrics each of 2 gloo ranks computed from its own shard (one spawn for all the checks)."""
    folder = tmp_path_factory.mktemp("gloo")
    torch.multiprocessing.spawn(_rank, args=(str(folder),), nprocs=WORLD, join=True)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_validation_auc_of_two_ranks_is_sklearns_auc_of_the_whole_set(gathered):
    from sklearn.metrics import roc_auc_score

    data = _validation_set()
    binary = torch.softmax(data["binary"], 1)[:, 1].numpy()
    multi = torch.softmax(data["multi"], 1).numpy()
    expected = roc_auc_score(data["labels"].numpy(), binary)
    assert gathered[0]["auc"] == gathered[1]["auc"] == pytest.approx(expected)
    # each rank's own shard gives another value: the test would see a rank that did not gather
    assert _evaluate(SHARDS[0])["auc"] != pytest.approx(expected)
    expected = roc_auc_score(data["multi_labels"].numpy(), multi, multi_class="ovr", average="macro")
    assert gathered[0]["auc_multiclass"] == gathered[1]["auc_multiclass"] == pytest.approx(expected)


def test_per_item_validation_auc_joins_an_items_samples_from_both_ranks(gathered):
    from sklearn.metrics import roc_auc_score

    data = _validation_set()
    p1 = torch.softmax(data["binary"], 1)[:, 1].numpy()
    items = sorted(set(data["items"]))
    mean_p = [np.mean([p for p, i in zip(p1, data["items"]) if i == item]) for item in items]
    truth = [data["item_labels"][data["items"].index(item)] for item in items]
    assert gathered[0]["auc_per_item"] == gathered[1]["auc_per_item"] == pytest.approx(roc_auc_score(truth, mean_p))


def test_validation_loss_and_monai_dice_of_two_ranks_are_the_whole_sets(gathered):
    data = _validation_set()
    loss = float(torch.nn.functional.cross_entropy(data["binary"], data["labels"]))
    assert gathered[0]["loss"] == gathered[1]["loss"] == pytest.approx(loss)
    # MONAI's MeanDice (the segmentation bundle's 2D key metric) gathers its buffers itself
    pred, true = data["dice_pred"][:, 1].bool(), data["dice_true"][:, 1].bool()
    dice = (2 * (pred & true).flatten(1).sum(1) / (pred.flatten(1).sum(1) + true.flatten(1).sum(1))).mean()
    assert gathered[0]["dice"] == gathered[1]["dice"] == pytest.approx(float(dice))


def test_per_volume_dice_of_two_ranks_sums_each_items_slices_from_both(gathered):
    data = _validation_set()
    pred, true = data["dice_pred"][:, 1].bool(), data["dice_true"][:, 1].bool()
    dice = []
    for item in sorted(set(data["items"])):  # the item's slices together: a 3D Dice
        rows = [k for k, i in enumerate(data["items"]) if i == item]
        p, t = pred[rows], true[rows]
        dice.append(float(2 * (p & t).sum() / (p.sum() + t.sum())))
    assert gathered[0]["dice_per_item"] == gathered[1]["dice_per_item"] == pytest.approx(np.mean(dice))


# ----------------------------------------------------------------------------- shards

def _shards(monkeypatch, samples, **kwargs) -> list[list[dict]]:
    parts = []
    for rank in range(WORLD):
        monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, WORLD))
        parts.append(distributed.rank_shard(samples, **kwargs))
    return parts


def test_training_shards_are_equal_shuffled_and_cover_the_set(monkeypatch):
    samples = [{"item_id": f"i{k}"} for k in range(9)]
    a, b = _shards(monkeypatch, samples, shuffle=True, seed=3, even_divisible=True)
    assert len(a) == len(b) == 5  # DDP steps together: equal shards, one sample repeated
    assert {s["item_id"] for s in a + b} == {s["item_id"] for s in samples}
    assert [s["item_id"] for s in a] != ["i0", "i2", "i4", "i6", "i8"]  # shuffled with the seed
    assert _shards(monkeypatch, samples, shuffle=True, seed=3, even_divisible=True) == [a, b]


def test_validation_shards_keep_an_items_samples_together_and_count_each_once(monkeypatch):
    samples = [{"item_id": item, "slice": k} for item, n in [("a", 3), ("b", 1), ("c", 2), ("d", 2)] for k in range(n)]
    a, b = _shards(monkeypatch, samples, group_key="item_id", role="validation")
    assert sorted(a + b, key=lambda s: (s["item_id"], s["slice"])) == samples  # no sample twice, none left out
    assert not {s["item_id"] for s in a} & {s["item_id"] for s in b}
    with pytest.raises(BundleError, match="1 validation item.* for 2 processes.*--nproc 1"):
        _shards(monkeypatch, samples[:3], group_key="item_id", role="validation")


def test_a_single_process_keeps_the_whole_set():
    samples = [{"item_id": f"i{k}"} for k in range(3)]
    assert distributed.rank_shard(samples, shuffle=True, even_divisible=True) == samples


def test_the_multi_gpu_configs_add_to_train_json_and_keep_its_steps():
    """multi_gpu_train.json extends train.json's imports and initialize (MONAI's ``+`` keys) and keeps its run;
    what it must replace (finalize on rank 0, drop_last from the rank's shard) still holds train.json's step, so a
    change to train.json cannot silently go missing under DDP."""
    for bundle in ("classification", "segmentation"):
        configs = bundle_path(bundle) / "configs"
        single = json.loads((configs / "train.json").read_text())
        multi = json.loads((configs / "multi_gpu_train.json").read_text())
        assert not {"imports", "initialize", "run"} & set(multi) and {"+imports", "+initialize"} <= set(multi)
        (step,) = single["finalize"]
        assert f"{step} if dist.get_rank() == 0 else None" in multi["finalize"], bundle
        drop_last = single["train"]["dataloader"]["drop_last"].replace("len(@cohort.train)", "len(@train#dataset#data)")
        assert multi["train#dataloader#drop_last"] == drop_last
        assert "train#sampler" not in multi  # each rank holds its shard: no sampler over the whole cached set


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BundleError, match="--nproc 2 but 1 GPU"):
        distributed.launch_training("classification", 2, {})


def test_the_first_real_failure_is_reported_not_the_ranks_stopped_after_it(tmp_path):
    (tmp_path / "error-0.json").write_text(json.dumps({"rank": 0, "time": 1.0, "terminated": True,
                                                       "message": "terminated"}))
    (tmp_path / "error-1.json").write_text(json.dumps({"rank": 1, "time": 2.0, "terminated": False,
                                                       "message": "CUDA out of memory"}))
    assert distributed._failure_message(tmp_path, {}) == "CUDA out of memory"


def test_each_rank_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setenv("MEDXFER_CPUS_PER_RUN", "8")
    assert distributed.rank_environment(2) == {"MEDXFER_CPUS_PER_RUN": "4", "OMP_NUM_THREADS": "4"}
    assert distributed.rank_environment(16)["OMP_NUM_THREADS"] == "1"


# ----------------------------------------------------------------------------- medxfer train --nproc 2

SMALL = ["--encoder", "resnet18", "--epochs", "2", "--image_size", "64", "--batch_size", "2", "--modalities", '["PX"]']


def _runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("medxfer/train")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_train_on_two_processes_is_one_run_with_the_whole_validation_sets_auc(dental_cohort, mlflow_store, tmp_path):
    result = CliRunner().invoke(main, ["train", "classification", "--manifest", str(dental_cohort.manifest),
                                       "--label", "supernumerary", "--nproc", "2", *SMALL])
    assert result.exit_code == 0, result.output
    (run,) = _runs(mlflow_store)  # rank 0 alone writes
    assert run.info.status == "FINISHED"
    assert result.stdout.startswith(f"run classification/resnet18/scratch/none/lr0.001/fold0/seed0 ({run.info.run_id})")
    params = run.data.params
    # each rank held (cached) its shard: half of the 8 training and of the 4 validation samples
    assert params["ddp.world_size"] == "2" and params["data.n_train"] == "8" and params["data.n_val"] == "4"
    assert json.loads(params["ddp.train_samples_per_rank"]) == [4, 4]
    assert json.loads(params["ddp.val_samples_per_rank"]) == [2, 2]
    history = mlflow.MlflowClient(mlflow_store).get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [1, 2]
    # the AUC that chose the checkpoint is the whole validation set's: rank 0 recomputes it alone, at the end,
    # from the checkpoint kept (2 validation samples per rank could not give an AUC strictly between 0 and 1)
    assert max(m.value for m in history) == pytest.approx(run.data.metrics["best_val_auc"])
    assert len(list((tmp_path / "runs").glob("*/predictions.csv"))) == 1


def test_a_failing_rank_is_one_line_and_exit_code_2(dental_cohort, mlflow_store):
    result = CliRunner().invoke(main, ["train", "classification", "--manifest", str(dental_cohort.manifest),
                                       "--label", "no_such_column", "--nproc", "2", *SMALL])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("medxfer: error: ") and "no column 'no_such_column'" in line
    assert all(r.info.status != "RUNNING" for r in _runs(mlflow_store))


@pytest.mark.slow
def test_sigterm_stops_every_rank_and_marks_the_run_failed(dental_cohort, mlflow_store):
    import psutil

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    argv = [sys.executable, "-m", "medxfer.cli", "train", "classification", "--manifest", str(dental_cohort.manifest),
            "--label", "supernumerary", "--nproc", "2", *SMALL, "--epochs", "200"]  # the last --epochs counts
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not any(r.info.status == "RUNNING" and "train_loss" in r.data.metrics for r in _runs(mlflow_store)):
            assert proc.poll() is None and time.time() < deadline, "no run in progress"
            time.sleep(0.5)
        ranks = psutil.Process(proc.pid).children(recursive=True)
        assert len(ranks) >= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(ranks, timeout=30)
        assert not alive
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (run,) = _runs(mlflow_store)
    assert run.info.status == "FAILED"  # stopped mid-training (an epoch logged), not left RUNNING
