"""Inference with a trained run: the model, classes and preprocessing all come from the run.

``medxfer predict RUN DIR`` ingests nothing itself: DIR is an ingested folder (its
``manifest.csv``; labels and folds are not needed). The run's checkpoint artifact holds the
encoder and head, its ``run_config.json`` the image size, channels and classes.

A run trained on slices of volumes and cines (its ``input``, ``slices`` and ``aggregate``, see
:mod:`.slices`) predicts them the same way: each volume / cine of DIR is cut into the slice samples
the run's settings pick, and its sample probabilities are aggregated into one row per item (column
``samples``: how many were aggregated); 2D items are one sample each. ``slices: labelled`` needs
per-slice labels, which a folder to predict does not have: prediction then takes every slice
(``all``). Segmentation runs write one mask NIfTI per volume on the volume's own grid.

A run trained on whole volumes (``input: 3d``, :mod:`.segmentation3d`) predicts each volume of DIR
whole (2D images and cines are left out, counted in the log), preprocessed as in training (resampled
to the run's voxel ``spacing`` when it had one). Segmentation: sliding windows of the run's
``roi_size``, the class scores brought back onto the cached volume's own grid (MONAI ``Invertd``
undoes the resampling, linear on the scores, then argmax), one label map per volume
(values = class indices, with the volume's shape and affine) and ``predictions.csv`` rows ``item_id,
mask, voxels_<class>…`` (voxels of each foreground class). Classification: one row per volume,
``item_id, p_<class>…, predicted``.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, Invertd

from ..core.files import atomic_writer
from ..core.hashing import sha256_file
from ..ingest.manifest import escape_cell, read_manifest
from ..models import Preprocessing, WeightsError, create_classifier, create_segmenter, load_strict
from ..models.weights import safe_torch_load
from ..transforms.pipelines3d import load_and_scale, resolve_spacing
from ..transforms.presets import longest_side_size
from ..tracking.layout import CHECKPOINT_ARTIFACT, PREDICTIONS_ARTIFACT, RUN_CONFIG_ARTIFACT
from ..tracking.store import RunNotFound, download_run_artifact, get_run
from .bundles import bundle_path
from .data import CohortError, _item, is_2d, is_volume, reference_images, slice_count, slice_samples
from .segmentation3d import safe_class_name
from .slices import SliceSelection, aggregate_probabilities, check_aggregate, check_input, check_slices

log = logging.getLogger(__name__)


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


def segmentation_classes(provenance: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """A segmentation run's classes, background first: its checkpoint's ``classes``, else ``background`` +
    its ``segments`` (3D runs), else binary (runs from before either was recorded)."""
    if provenance.get("classes"):
        return [str(c) for c in provenance["classes"]]
    if config.get("segments"):
        return ["background", *(str(c) for c in config["segments"])]
    return ["background", "foreground"]


def load_run_model(run_id: str) -> RunModel:
    """Rebuild the network of ``run_id`` from its medxfer checkpoint: a classifier (encoder + head, 2D or
    3D), a segmenter (a FlexibleUNet over its encoder, 2D or 3D, one output channel per class, or a plain
    baseline such as ``unet_3d`` whose checkpoint ``encoder`` state is the whole network)."""
    with tempfile.TemporaryDirectory(prefix="medxfer-predict-") as tmp:
        try:
            ckpt_path = download_run_artifact(run_id, CHECKPOINT_ARTIFACT, tmp)
            config = json.loads(download_run_artifact(run_id, RUN_CONFIG_ARTIFACT, tmp).read_text())
        except RunNotFound as exc:
            raise WeightsError(str(exc)) from None
        ckpt = safe_torch_load(ckpt_path)
    task = config.get("task", "classification")
    in_channels = int(ckpt.get("in_channels", config.get("in_channels", 3)))
    provenance = ckpt.get("provenance") or {}
    if task == "classification":
        classes = list(provenance.get("classes") or [])
        views = provenance.get("views") or None
        if views:
            raise CohortError(f"run:{run_id} classifies multi-view samples ({'+'.join(views)}, "
                              f"{provenance.get('fusion')} fusion); medxfer predict reads single images. "
                              f"Use its checkpoint as weights (run:{run_id}) or evaluate it in a study.")
        network = create_classifier(ckpt["arch"], "scratch", num_classes=len(classes), in_channels=in_channels)
    elif task == "segmentation":
        classes = segmentation_classes(provenance, config)
        decoder = {"decoder_channels": tuple(config["decoder_channels"])} if config.get("decoder_channels") else {}
        network = create_segmenter(ckpt["arch"], "scratch", in_channels=in_channels, out_channels=len(classes),
                                   **decoder)
    else:
        raise CohortError(f"run:{run_id}: unknown task {task!r}")
    if ckpt.get("arch_options", {}).get("bn_eps"):
        network.encoder.set_bn_eps(float(ckpt["arch_options"]["bn_eps"]))
    # the encoder slot (a plain baseline's whole network) under "encoder.", the rest as saved: a classifier's
    # head under "head.", a segmenter's decoder and segmentation head with their own prefixes (none for a baseline)
    state = {**{f"encoder.{k}": v for k, v in ckpt["encoder"].items()},
             **({f"head.{k}": v for k, v in ckpt["head"].items()} if task == "classification" else ckpt["head"])}
    load_strict(network, state, source=f"run:{run_id} checkpoint")
    network.encoder.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    if task == "segmentation":  # the Classifier exposes its encoder's record as a property
        network.preprocessing = network.encoder.preprocessing
    params = dict(get_run(run_id).data.params)
    return RunModel(run_id=run_id, task=task, network=network.eval(), classes=classes, config=config, params=params)


def is_volumetric(config: dict[str, Any]) -> bool:
    """Whether a run (its ``run_config.json``) was trained on whole volumes (``input: 3d``)."""
    return check_input(config.get("input")) == "3d"


def volume_transforms(run_model: RunModel):
    """The deterministic 3D pipeline of the run's training (load → resample to the run's ``spacing`` or the
    weights' → modality preset → weights normalisation), image only and with MONAI metadata kept, so that
    :func:`volume_postprocessing` can undo the resampling."""
    config = run_model.config
    return Compose(load_and_scale(("image",), run_model.preprocessing, int(config["in_channels"]),
                                   resolve_spacing(config.get("spacing"), run_model.preprocessing), None))


def volume_postprocessing(run_model: RunModel, transform):
    """MONAI ``Invertd`` bringing the predicted class scores back from the resampled grid to each
    volume's own (``transform``: :func:`volume_transforms`); None when the run kept volumes on their grids."""
    if resolve_spacing(run_model.config.get("spacing"), run_model.preprocessing) is None:
        return None
    return Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False, to_tensor=True)


def check_evaluation_fold(run_model: RunModel, fold: int, manifest: str | os.PathLike) -> None:
    """Refuse to evaluate a run on its own cohort's training or validation folds (inflated metrics):
    on the manifest it was trained on, only its test fold is a test."""
    trained_on = (run_model.params or {}).get("data.manifest_sha256")
    trained_fold = int(run_model.config.get("fold", -1))
    if trained_on and trained_on == sha256_file(manifest) and int(fold) != trained_fold:
        raise CohortError(f"run:{run_model.run_id} was tested on fold {trained_fold} of this manifest; fold {fold} "
                          "was among its training or validation folds (evaluate it on --fold "
                          f"{trained_fold}, or on another cohort)")


def prediction_selection(input: str | None = "2d", slices: str | None = None) -> SliceSelection | None:
    """The slices a run's predictions cut volumes and cines into: ``None`` (2D items only) for a run
    trained on 2D items, the run's own selection otherwise (``input: 2.5d`` without ``slices`` is
    ``all``, as in training). ``labelled`` becomes ``all``: a folder to predict has no per-slice labels."""
    selection = check_slices(slices)
    if selection is None and check_input(input) == "2.5d":
        selection = SliceSelection("all")
    if selection is not None and selection.mode == "labelled":
        selection = SliceSelection("all")
    return selection


def is_sliced(config: dict[str, Any]) -> bool:
    """Whether a run (its ``run_config.json``) was trained on slice samples of volumes / cines."""
    return prediction_selection(config.get("input") or "2d", config.get("slices")) is not None


def manifest_items(manifest: str | os.PathLike, modalities: list[str] | None = None, input: str | None = "2d",
                   slices: str | None = None) -> list[dict]:
    """The samples to predict in an ingested folder, labels not needed (``label`` = -1).

    Without ``slices`` (and with ``input: 2d``, a run trained on 2D items): every 2D item, volumes and
    cines left out. With them (the run's settings, :func:`prediction_selection`): 2D items whole and
    every volume / cine cut into its slice samples (:func:`.data.slice_samples`), the samples of an
    item consecutive, so that their predictions aggregate per ``item_id``. With ``input: 3d`` (a run
    trained on whole volumes): every volume whole, 2D items and cines left out."""
    path = Path(manifest)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise CohortError(f"{path}: no manifest (run medxfer ingest on the folder first)")
    input_mode = check_input(input)
    if input_mode == "3d":
        return _volume_items(path, modalities)
    selection = prediction_selection(input_mode, slices)
    width = 3 if input_mode == "2.5d" else 1
    rows, _ = read_manifest(path)
    keep = {m.upper() for m in modalities} if modalities else None
    items, other_modality, left_out = [], {}, {"volume": 0, "not_sliceable": 0}
    references = reference_images(rows) if selection is not None else set()  # as in training (load_cohort)
    for row in rows:
        if row["item_id"] in references:
            continue
        n = 0 if is_2d(row) else slice_count(row)
        if not is_2d(row) and (selection is None or n == 0):
            left_out["volume" if selection is None else "not_sliceable"] += 1
            continue
        modality = (row.get("modality") or "").upper()
        if keep is not None and modality not in keep:
            other_modality[modality or "?"] = other_modality.get(modality or "?", 0) + 1
            continue
        item = _item({**row, "fold": row.get("fold") or -1}, path.parent)
        item["label"] = -1
        if selection is None:
            items.append(item)
        elif n == 0:  # a 2D image in a sliced run: itself, one sample
            items.append({**item, "slice_indices": [-1] * width, "item_label": -1})
        else:
            items.extend(slice_samples(item, n, selection.select(n), input_mode))
    what = "2D item" if selection is None else "2D item, volume or cine"
    if left_out["volume"]:
        log.info("%s: %d volume / cine item(s) left out: the run was trained on 2D items (no slices)",
                 path, left_out["volume"])
    if left_out["not_sliceable"]:
        log.warning("%s: %d item(s) left out: more than three spatial axes (a 4D series has no single slice "
                    "axis to cut)", path, left_out["not_sliceable"])
    if not items:
        others = []
        if left_out["volume"]:
            others.append(f"{left_out['volume']} volume / cine items are left out (the run was trained on 2D items; "
                          "they need a run trained with slices)")
        if left_out["not_sliceable"]:
            others.append(f"{left_out['not_sliceable']} items have more than three spatial axes (no slice axis)")
        raise _nothing_to_predict(path, what, keep, other_modality, others)
    return items


def _nothing_to_predict(path: Path, what: str, keep: set[str] | None, other_modality: dict[str, int],
                        others: list[str]) -> CohortError:
    """The error of a folder with nothing to predict, naming which filter left out which items, with counts:
    ``no 2D item of modality PX to predict: the run's modality filter (the modalities it was trained on) left
    out 8 DX, 8 MG items``; ``others`` (other filters' reasons) after it."""
    reasons = list(others)
    if other_modality:
        found = ", ".join(f"{n} {m}" for m, n in sorted(other_modality.items()))
        reasons.insert(0, f"the run's modality filter (the modalities it was trained on) left out {found} items")
        what = f"{what} of modality {'/'.join(sorted(keep or ()))}"
    return CohortError(f"{path}: no {what} to predict" + (": " + "; ".join(reasons) if reasons
                                                          else " (the manifest lists none)"))


def _volume_items(path: Path, modalities: list[str] | None) -> list[dict]:
    """Every volume of the manifest at ``path`` whole (a run trained with ``input: 3d``), in manifest order."""
    rows, _ = read_manifest(path)
    keep = {m.upper() for m in modalities} if modalities else None
    items, not_volume, other_modality = [], 0, {}
    for row in rows:
        if not is_volume(row):
            not_volume += 1  # a 2D image, a cine (its third axis is time) or a 4D series
            continue
        modality = (row.get("modality") or "").upper()
        if keep is not None and modality not in keep:
            other_modality[modality or "?"] = other_modality.get(modality or "?", 0) + 1
            continue
        item = _item({**row, "fold": row.get("fold") or -1}, path.parent, 3)
        item["label"] = -1
        items.append(item)
    if not_volume:
        log.info("%s: %d item(s) left out: the run was trained on whole volumes (input: 3d); 2D images, cines "
                 "and 4D series are not", path, not_volume)
    if not items:
        others = [f"{not_volume} 2D image / cine items are left out (the run was trained on whole volumes, "
                  "input: 3d)"] if not_volume else []
        raise _nothing_to_predict(path, "volume", keep, other_modality, others)
    return items


def _unpad(pred: torch.Tensor, width: int, height: int, image_size: int) -> torch.Tensor:
    """An argmax mask at network size back on a ``width`` × ``height`` grid (undoing resize-with-pad)."""
    new = longest_side_size((width, height), image_size)  # the forward step's own rounding
    before = [(image_size - n) // 2 for n in new]
    crop = pred[before[0]:before[0] + new[0], before[1]:before[1] + new[1]]
    return torch.nn.functional.interpolate(crop[None, None], size=(width, height), mode="nearest")[0, 0]


class MaskWriter:
    """Ignite handler: argmax masks back on each item's own grid (undoing resize-with-pad), written
    as NIfTI with the item's affine to ``masks/<item_id>.nii.gz``, plus ``predictions.csv``.

    Slice samples of a volume (``slice`` ≥ 0, consecutive per item) are stacked back on the volume's
    grid, one mask NIfTI per volume with the volume's affine (segmentation predicts every slice of a
    volume, whatever slices the run trained on: a mask is only useful whole; slices not predicted would
    stay background). With ``sliced`` the CSV has a ``samples`` column (slices predicted; 1 for a 2D item)
    and ``foreground_pixels`` counts voxels of the whole volume.

    With ``classes`` (a run trained on whole volumes, ``input: 3d``) each prediction is a whole volume's
    class scores already on its grid (:func:`volume_postprocessing`): the label map (values = class
    indices) is written with the volume's affine and the CSV counts ``voxels_<class>`` per foreground class."""

    def __init__(self, output_dir: str | os.PathLike, image_size: int, sliced: bool = False,
                 classes: list[str] | None = None):
        self.output_dir = Path(output_dir)
        self.image_size = int(image_size)
        self.sliced = bool(sliced)
        self.classes = list(classes) if classes else None
        self.rows: list[list] = []
        self._volume: dict[str, Any] | None = None  # the volume whose slices are being stacked

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_masks)
        engine.add_event_handler(Events.COMPLETED, self._write_csv)

    def _write_masks(self, engine) -> None:
        (self.output_dir / "masks").mkdir(parents=True, exist_ok=True)
        for item, out in zip(engine.state.batch, engine.state.output):
            if self.classes is not None:
                self._write_volume(item, out["pred"])
                continue
            pred = out["pred"].argmax(0).float()  # (size, size), x first
            width, height = (int(v) for v in item["shape"][:2])
            mask = _unpad(pred.cpu(), width, height, self.image_size).numpy().astype(np.uint8)
            k = int(item.get("slice", -1))
            if k >= 0:
                self._add_slice(str(item["item_id"]), str(item["image_path"]), k, mask)
                continue
            self._flush()
            affine = nib.load(item["image_path"]).affine
            path = self.output_dir / "masks" / f"{item['item_id']}.nii.gz"
            nib.save(nib.Nifti1Image(mask, affine), path)
            self.rows.append([item["item_id"], f"masks/{path.name}", int(mask.sum())] + ([1] if self.sliced else []))

    def _write_volume(self, item: dict, scores: torch.Tensor) -> None:
        """One whole volume's label map, on the cached volume's grid and with its affine."""
        header = nib.load(item["image_path"])  # the header only: the volume's grid and affine
        grid = tuple(int(v) for v in header.shape[:3])
        labels = torch.as_tensor(scores).detach().float().argmax(0).cpu().numpy().astype(np.uint8)
        if labels.shape != grid:
            raise CohortError(f"item {item['item_id']}: the predicted label map is {labels.shape}, not the volume's "
                              f"grid {grid}")
        path = self.output_dir / "masks" / f"{item['item_id']}.nii.gz"
        nib.save(nib.Nifti1Image(labels, header.affine), path)
        counts = np.bincount(labels.ravel(), minlength=len(self.classes))
        self.rows.append([item["item_id"], f"masks/{path.name}", *(int(n) for n in counts[1:len(self.classes)])])

    def _add_slice(self, item_id: str, image_path: str, k: int, mask: np.ndarray) -> None:
        if self._volume is None or self._volume["item_id"] != item_id:
            self._flush()
            header = nib.load(image_path)  # the header only: the volume's grid and affine
            grid = tuple(int(v) for v in header.shape[:3])
            self._volume = {"item_id": item_id, "affine": header.affine, "samples": 0,
                            "mask": np.zeros(grid, dtype=np.uint8)}
        self._volume["mask"][:, :, k] = mask
        self._volume["samples"] += 1

    def _flush(self) -> None:
        volume, self._volume = self._volume, None
        if volume is None:
            return
        path = self.output_dir / "masks" / f"{volume['item_id']}.nii.gz"
        nib.save(nib.Nifti1Image(volume["mask"], volume["affine"]), path)
        self.rows.append([volume["item_id"], f"masks/{path.name}", int(volume["mask"].sum()), volume["samples"]])

    def _write_csv(self, engine) -> None:
        self._flush()
        with atomic_writer(self.output_dir / PREDICTIONS_ARTIFACT, "w", newline="") as f:
            w = csv.writer(f)
            if self.classes is not None:
                w.writerow(["item_id", "mask", *(f"voxels_{safe_class_name(c)}" for c in self.classes[1:])])
            else:
                w.writerow(["item_id", "mask", "foreground_pixels"] + (["samples"] if self.sliced else []))
            w.writerows(self.rows)


class PredictionWriter:
    """Ignite handler: collects softmax probabilities per sample and writes ``predictions.csv``.

    Without ``aggregate`` (a run trained on 2D items) one row per item: ``item_id, p_<class>…,
    predicted``. With it (a run trained on slices, :mod:`.slices`) the samples' probabilities are
    aggregated per ``item_id`` (``mean``, ``max``, ``top:K``) into one row per item, with a last
    column ``samples`` (slices / frames aggregated; 1 for a 2D item)."""

    def __init__(self, path: str | os.PathLike, classes: list[str], aggregate: str | None = None):
        self.path = Path(path)
        self.classes = list(classes)
        self.aggregate = None if aggregate is None else check_aggregate(aggregate)
        self.ids: list[str] = []
        self.prob: list[np.ndarray] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):  # both decollated per item
            self.ids.append(str(item["item_id"]))
            self.prob.append(torch.softmax(out["pred"].detach().float().cpu(), -1).numpy())

    def rows(self) -> list[list]:
        """The CSV rows (without header) of what was collected."""
        if not self.ids:
            return []
        prob = np.stack(self.prob)
        if self.aggregate is None:
            ids, samples = self.ids, None
        else:
            ids, prob = aggregate_probabilities(prob, self.ids, self.aggregate)
            counts: dict[str, int] = {}
            for item_id in self.ids:
                counts[item_id] = counts.get(item_id, 0) + 1
            samples = [counts[i] for i in ids]
        out = []
        for r, (item_id, p) in enumerate(zip(ids, prob)):
            row = [item_id, *(f"{v:.6f}" for v in p.tolist()),
                   escape_cell(self.classes[int(p.argmax())])]  # spreadsheet-safe, like the manifest
            out.append(row + ([samples[r]] if samples is not None else []))
        return out

    def _write(self, engine) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(self.path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", *(f"p_{c}" for c in self.classes), "predicted"]
                       + (["samples"] if self.aggregate is not None else []))
            w.writerows(self.rows())


def _run_task(run_id: str) -> str:
    """``classification`` or ``segmentation``: the ``task`` param of the run."""
    try:
        return get_run(run_id).data.params.get("task", "classification")
    except RunNotFound as exc:
        raise WeightsError(str(exc)) from None


def predict(run_id: str, data: str | os.PathLike, out: str | os.PathLike | None = None,
            batch_size: int = 16) -> Path:
    """Run the ``inference.json`` of the run's bundle on an ingested folder; returns the predictions
    CSV (classification: probabilities, one row per item — a volume or cine of a run trained on its
    slices is one row, its slices aggregated as in training; segmentation: one row per mask NIfTI
    under ``masks/``, one per volume for such runs). A run trained on whole volumes (``input: 3d``)
    predicts each volume whole, one at a time (``batch_size`` is then the sliding-window batch)."""
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
