"""Inference with a trained run: the model, classes and preprocessing all come from the run.

``medxfer predict RUN DIR`` ingests nothing itself: DIR is an ingested folder (its
``manifest.csv``; labels and folds are not needed). The run's checkpoint artifact holds the
encoder and head, its ``run_config.json`` the image size, channels and classes.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.files import atomic_writer
from ..core.hashing import sha256_file
from ..ingest.manifest import escape_cell, read_manifest
from ..models import Preprocessing, WeightsError, create_classifier, create_segmenter, load_strict
from ..models.weights import safe_torch_load
from ..tracking.layout import CHECKPOINT_ARTIFACT, PREDICTIONS_ARTIFACT, RUN_CONFIG_ARTIFACT
from ..tracking.store import RunNotFound, download_run_artifact, get_run
from .bundles import bundle_path
from .data import CohortError, _item, is_2d


@dataclass
class RunModel:
    """A trained network rebuilt from an MLflow run."""

    run_id: str
    task: str
    network: torch.nn.Module
    classes: list[str]
    config: dict[str, Any]
    params: dict[str, str] | None = None

    @property
    def preprocessing(self):
        return self.network.encoder.preprocessing


def load_run_model(run_id: str) -> RunModel:
    """Rebuild the classifier of ``run_id`` (encoder + head from its medxfer checkpoint)."""
    with tempfile.TemporaryDirectory(prefix="medxfer-predict-") as tmp:
        try:
            ckpt_path = download_run_artifact(run_id, CHECKPOINT_ARTIFACT, tmp)
            config = json.loads(download_run_artifact(run_id, RUN_CONFIG_ARTIFACT, tmp).read_text())
        except RunNotFound as exc:
            raise WeightsError(str(exc)) from None
        ckpt = safe_torch_load(ckpt_path)
    task = config.get("task", "classification")
    in_channels = int(ckpt.get("in_channels", config.get("in_channels", 3)))
    if task == "classification":
        classes = list(ckpt["provenance"].get("classes") or [])
        views = ckpt["provenance"].get("views") or None
        if views:
            raise CohortError(f"run:{run_id} classifies multi-view samples ({'+'.join(views)}, "
                              f"{ckpt['provenance'].get('fusion')} fusion); medxfer predict reads single images. "
                              f"Use its checkpoint as weights (run:{run_id}) or evaluate it in a study.")
        network = create_classifier(ckpt["arch"], "scratch", num_classes=len(classes), in_channels=in_channels)
    elif task == "segmentation":
        classes = ["background", "foreground"]
        decoder = {"decoder_channels": tuple(config["decoder_channels"])} if config.get("decoder_channels") else {}
        network = create_segmenter(ckpt["arch"], "scratch", in_channels=in_channels, out_channels=2, **decoder)
    else:
        raise CohortError(f"run:{run_id}: unknown task {task!r}")
    if ckpt.get("arch_options", {}).get("bn_eps"):
        network.encoder.set_bn_eps(float(ckpt["arch_options"]["bn_eps"]))
    state = {**{f"encoder.{k}": v for k, v in ckpt["encoder"].items()},
             **({f"head.{k}": v for k, v in ckpt["head"].items()} if task == "classification" else ckpt["head"])}
    load_strict(network, state, source=f"run:{run_id} checkpoint")
    network.encoder.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    if task == "segmentation":  # the Classifier exposes its encoder's record as a property
        network.preprocessing = network.encoder.preprocessing
    params = dict(get_run(run_id).data.params)
    return RunModel(run_id=run_id, task=task, network=network.eval(), classes=classes, config=config, params=params)


def check_evaluation_fold(run_model: RunModel, fold: int, manifest: str | os.PathLike) -> None:
    """Refuse to evaluate a run on its own cohort's training or validation folds (inflated metrics):
    on the manifest it was trained on, only its test fold is a test."""
    trained_on = (run_model.params or {}).get("data.manifest_sha256")
    trained_fold = int(run_model.config.get("fold", -1))
    if trained_on and trained_on == sha256_file(manifest) and int(fold) != trained_fold:
        raise CohortError(f"run:{run_model.run_id} was tested on fold {trained_fold} of this manifest; fold {fold} "
                          "was among its training or validation folds (evaluate it on --fold "
                          f"{trained_fold}, or on another cohort)")


def manifest_items(manifest: str | os.PathLike, modalities: list[str] | None = None) -> list[dict]:
    """Every 2D item of an ingested folder, labels not needed (``label`` = -1)."""
    path = Path(manifest)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise CohortError(f"{path}: no manifest (run medxfer ingest on the folder first)")
    rows, _ = read_manifest(path)
    keep = {m.upper() for m in modalities} if modalities else None
    items, other_modality = [], {}
    for row in rows:
        if not is_2d(row):
            continue
        modality = (row.get("modality") or "").upper()
        if keep is not None and modality not in keep:
            other_modality[modality or "?"] = other_modality.get(modality or "?", 0) + 1
            continue
        item = _item({**row, "fold": row.get("fold") or -1}, path.parent)
        item["label"] = -1
        items.append(item)
    if not items and other_modality:
        found = ", ".join(f"{n} {m}" for m, n in sorted(other_modality.items()))
        raise CohortError(f"{path}: no 2D item of modality {'/'.join(sorted(keep))} (the run's modalities) to "
                          f"predict; the folder's 2D items are {found}")
    if not items:
        raise CohortError(f"{path}: no 2D item to predict")
    return items


class MaskWriter:
    """Ignite handler: argmax masks back on each item's own grid (undoing resize-with-pad), written
    as NIfTI with the item's affine to ``masks/<item_id>.nii.gz``, plus ``predictions.csv``."""

    def __init__(self, output_dir: str | os.PathLike, image_size: int):
        self.output_dir = Path(output_dir)
        self.image_size = int(image_size)
        self.rows: list[list] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_masks)
        engine.add_event_handler(Events.COMPLETED, self._write_csv)

    def _write_masks(self, engine) -> None:
        import nibabel as nib
        import numpy as np
        import torch.nn.functional as F

        (self.output_dir / "masks").mkdir(parents=True, exist_ok=True)
        for item, out in zip(engine.state.batch, engine.state.output):
            pred = out["pred"].argmax(0).float()  # (size, size), x first
            width, height = (int(v) for v in item["shape"][:2])
            scale = self.image_size / max(width, height)
            new = [int(round(width * scale)), int(round(height * scale))]
            before = [(self.image_size - n) // 2 for n in new]
            crop = pred[before[0]:before[0] + new[0], before[1]:before[1] + new[1]]
            mask = F.interpolate(crop[None, None], size=(width, height), mode="nearest")[0, 0]
            affine = nib.load(item["image_path"]).affine
            path = self.output_dir / "masks" / f"{item['item_id']}.nii.gz"
            nib.save(nib.Nifti1Image(mask.numpy().astype(np.uint8), affine), path)
            self.rows.append([item["item_id"], f"masks/{path.name}", int(mask.sum())])

    def _write_csv(self, engine) -> None:
        with atomic_writer(self.output_dir / PREDICTIONS_ARTIFACT, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", "mask", "foreground_pixels"])
            w.writerows(self.rows)


class PredictionWriter:
    """Ignite handler: collects softmax probabilities per item and writes ``predictions.csv``."""

    def __init__(self, path: str | os.PathLike, classes: list[str]):
        self.path = Path(path)
        self.classes = list(classes)
        self.rows: list[list] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):  # both decollated per item
            prob = torch.softmax(out["pred"].float(), -1)
            self.rows.append([item["item_id"], *(f"{p:.6f}" for p in prob.tolist()),
                              escape_cell(self.classes[int(prob.argmax())])])  # spreadsheet-safe, like the manifest

    def _write(self, engine) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(self.path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", *(f"p_{c}" for c in self.classes), "predicted"])
            w.writerows(self.rows)


def _run_task(run_id: str) -> str:
    """``classification`` or ``segmentation``: the ``task`` param of the run."""
    try:
        return get_run(run_id).data.params.get("task", "classification")
    except RunNotFound as exc:
        raise WeightsError(str(exc)) from None


def predict(run_id: str, data: str | os.PathLike, out: str | os.PathLike | None = None,
            batch_size: int = 16) -> Path:
    """Run the ``inference.json`` of the run's bundle on an ingested folder; returns the predictions
    CSV (classification: probabilities; segmentation: one row per mask NIfTI under ``masks/``)."""
    import logging

    from monai.bundle import ConfigWorkflow

    task = _run_task(run_id)
    root = bundle_path(task)
    data = Path(data)
    manifest = data / "manifest.csv" if data.is_dir() else data
    out_dir = Path(out) if out else manifest.parent / "predictions" / run_id
    logging.getLogger("monai.bundle.workflows").setLevel(logging.ERROR)
    workflow = ConfigWorkflow(config_file=str(root / "configs" / "inference.json"),
                              meta_file=str(root / "configs" / "metadata.json"), logging_file=False,
                              workflow_type="infer", bundle_root=str(root), mlflow_run_id=run_id,
                              manifest=str(manifest.resolve()), output_dir=str(out_dir.resolve()),
                              batch_size=batch_size)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return out_dir / PREDICTIONS_ARTIFACT
