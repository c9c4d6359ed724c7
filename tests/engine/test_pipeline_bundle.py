"""The classification bundle with the GPU data pipeline (item cache, device-side augmentation and normalisation,
epoch loss without per-step syncs), run on the CPU: it still learns, logs its metrics, and a second run reads
every item from the cache."""
from __future__ import annotations

import json
import logging
import re

import mlflow
import pytest

from medxfer.engine import train_bundle

from ..conftest import find_identifiers

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = {"image_size": 64, "batch_size": 4, "modalities": ["PX"], "encoder": "resnet18", "label": "supernumerary"}


def _history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _pipeline_of(description: dict) -> tuple:
    """(network size, channels, input mode) of a cache folder's ``pipeline.json``."""
    return description["steps"][-1]["size"], description["steps"][0]["in_channels"], description["context"]["input"]


def test_device_side_pipeline_learns_and_the_second_run_reads_the_cache(dental_cohort, mlflow_store, caplog):
    manifest = str(dental_cohort.manifest)
    with caplog.at_level(logging.INFO, logger="medxfer.engine.item_cache"):
        result = train_bundle("classification", manifest=manifest, epochs=6, augment_on_device=True, **SMALL)
    client = mlflow.MlflowClient(mlflow_store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    loss = _history(client, result.run_id, "train_loss")
    assert len(loss) == 6 and len(_history(client, result.run_id, "val_auc")) == 6
    assert sum(loss[-2:]) < sum(loss[:2])  # it learns: the last epochs' loss is below the first epochs'
    assert 0.0 <= run.data.metrics["test_auc"] <= 1.0
    config = json.loads((result.output_dir / "run_config.json").read_text())
    assert config["augment_on_device"] is True  # the record says where the augmentation ran
    assert config["item_cache"] is True  # on by default, and recorded

    # the items at network size, on disk beside the dataset, named by digests only
    folders = [p for p in dental_cohort.manifest.parent.glob(".medxfer/items/*/pipeline.json")  # other tests' too
               if _pipeline_of(json.loads(p.read_text())) == (SMALL["image_size"], 1, "2d")]
    assert len(folders) == 1
    entries = [p.name for p in folders[0].parent.iterdir() if p.suffix == ".npy"]
    assert entries and all(re.fullmatch(r"[0-9a-f]{24}\.image\.(u8n|u8|f16|f32)\.npy", n) for n in entries)
    assert find_identifiers(folders[0].parent, dental_cohort.identifiers) == []

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medxfer.engine.item_cache"):
        train_bundle("classification", manifest=manifest, epochs=1, lr=0.01, augment_on_device=True, **SMALL)
    reports = [r.getMessage() for r in caplog.records if "items read from the cache" in r.getMessage()]
    assert len(reports) == 2 and all(m.endswith(" 0 computed") for m in reports), reports  # train and validation
