"""Classification pieces the bundle config wires together: validation metrics,
test evaluation with predictions CSV / ROC plot / checkpoint, and the MLflow bookkeeping.

Model selection uses validation AUC; the operating point (Youden's J) is chosen on the
validation predictions and applied to the test set, so test sensitivity/specificity are not
tuned on the test cases (when validation holds one class only, the test set's own Youden point
is used and the record says so).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric

from ..core.files import atomic_write, atomic_writer, safe_json
from ..core.hashing import sha256_file
from ..ingest.manifest import escape_cell
from ..explain.localization import localize, plot_overlays, summarize, write_localization_csv
from ..models import save_checkpoint, weights_params
from ..tracking.layout import (CHECKPOINT_ARTIFACT, LOCALIZATION_ARTIFACT, METRICS_ARTIFACT, PREDICTIONS_ARTIFACT,
                               RUN_CONFIG_ARTIFACT)
from ..transforms.pipelines import classification_transforms
from .batches import batch_values
from .data import Cohort, class_values
from .distributed import gather_objects
from .features import FeatureHead, predict_features
from .mlflow_run import load_best_checkpoint, log_outcome, software_params
from .multiview import DEFAULT_GROUP_BY
from .slices import aggregate_probabilities


# ----------------------------------------------------------------------------- metrics

def _probabilities(pred) -> torch.Tensor:
    pred = torch.stack(list(pred)) if isinstance(pred, (list, tuple)) else pred
    return torch.softmax(pred.float(), dim=-1)


def _labels(label) -> torch.Tensor:
    label = torch.stack([torch.as_tensor(x) for x in label]) if isinstance(label, (list, tuple)) else label
    return torch.as_tensor(label).long().reshape(-1)


class ValidationAUC(Metric):
    """ROC AUC (one-vs-rest macro for more than two classes) from logits; NaN when undefined.

    With ``aggregate`` (slice samples of volumes / cines, :mod:`.slices`) the samples' probabilities
    are first aggregated per item (the batch's ``item_id``, labelled by ``item_label``): the AUC that
    chooses the checkpoint is the item-level one the test reports."""

    def __init__(self, num_classes: int, output_transform=lambda x: x, aggregate: str | None = None):
        self.num_classes = num_classes
        self.aggregate = aggregate
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._p: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self._ids: list[str] = []
        self._item_y: dict[str, int] = {}

    def iteration_completed(self, engine) -> None:
        if self.aggregate:
            ids = [str(i) for i in batch_values(engine.state.batch, "item_id")]
            self._ids.extend(ids)
            self._item_y.update(zip(ids, (int(v) for v in batch_values(engine.state.batch, "item_label"))))
        super().iteration_completed(engine)

    def update(self, output) -> None:
        pred, label = output
        self._p.append(_probabilities(pred).detach().cpu())
        self._y.append(_labels(label).cpu())

    def compute(self) -> float:
        """AUC of the whole validation set, or -inf when undefined (one class in it): never "best".

        Under DDP each rank saw its shard: the probabilities, labels and item ids of all ranks are
        gathered first (every rank computes, so every rank gets the same value)."""
        local = ((torch.cat(self._p).numpy(), torch.cat(self._y).numpy()) if self._y else None,
                 self._ids, self._item_y)
        shards = gather_objects(local)
        arrays = [pair for pair, _, _ in shards if pair is not None]
        if not arrays:
            return -math.inf
        p = np.concatenate([a[0] for a in arrays])
        y = np.concatenate([a[1] for a in arrays])
        if self.aggregate:
            item_y = {k: v for _, _, labels in shards for k, v in labels.items()}
            ids, p = aggregate_probabilities(p, [i for _, shard_ids, _ in shards for i in shard_ids], self.aggregate)
            y = np.array([item_y[i] for i in ids])
        value = roc_auc(y, p)
        return value if math.isfinite(value) else -math.inf


class ValidationLoss(Metric):
    """Mean cross-entropy of the validation set."""

    def reset(self) -> None:
        self._sum, self._n = 0.0, 0

    def update(self, output) -> None:
        pred, label = output
        pred = torch.stack(list(pred)) if isinstance(pred, (list, tuple)) else pred
        label = _labels(label).to(pred.device)
        self._sum += float(torch.nn.functional.cross_entropy(pred.float(), label, reduction="sum"))
        self._n += int(label.numel())

    def compute(self) -> float:
        """Mean over the whole validation set (the sums of all DDP ranks)."""
        shards = gather_objects((self._sum, self._n))
        return sum(s for s, _ in shards) / max(sum(n for _, n in shards), 1)


def roc_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """Binary AUC of class 1, or macro one-vs-rest AUC; NaN when a class is absent."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(y)
    if len(present) < 2:
        return math.nan
    if prob.shape[1] == 2:
        return float(roc_auc_score(y, prob[:, 1]))
    if len(present) < prob.shape[1]:
        return math.nan
    return float(roc_auc_score(y, prob, multi_class="ovr", average="macro"))


def youden_thresholds(y: np.ndarray, prob: np.ndarray) -> list[float] | None:
    """Per class (one-vs-rest) threshold maximising sensitivity + specificity - 1; None if undefined."""
    from sklearn.metrics import roc_curve

    classes = [1] if prob.shape[1] == 2 else list(range(prob.shape[1]))
    out = []
    for c in classes:
        positives = y == c
        if positives.all() or not positives.any():
            return None
        fpr, tpr, thr = roc_curve(positives, prob[:, c])
        best = int(np.argmax(tpr - fpr))
        out.append(float(min(thr[best], 1.0)))
    return out


def classification_metrics(y: np.ndarray, prob: np.ndarray, thresholds: list[float] | None,
                           prefix: str = "test_") -> dict[str, float]:
    """AUC, accuracy (argmax) and sensitivity / specificity at the given Youden thresholds
    (macro over one-vs-rest classes for multi-class)."""
    metrics = {f"{prefix}auc": roc_auc(y, prob), f"{prefix}accuracy": float((prob.argmax(1) == y).mean())}
    if thresholds is None:
        thresholds = youden_thresholds(y, prob)
    if thresholds is not None:
        classes = [1] if prob.shape[1] == 2 else list(range(prob.shape[1]))
        sens, spec = [], []
        for c, t in zip(classes, thresholds):
            called, positive = prob[:, c] >= t, y == c
            if positive.any():
                sens.append(float(called[positive].mean()))
            if (~positive).any():
                spec.append(float((~called[~positive]).mean()))
        metrics[f"{prefix}sensitivity"] = float(np.mean(sens)) if sens else math.nan
        metrics[f"{prefix}specificity"] = float(np.mean(spec)) if spec else math.nan
    return metrics


# ----------------------------------------------------------------------------- test evaluation

@torch.no_grad()
def predict_items(network: torch.nn.Module, items: list[dict], transform, device: torch.device | str,
                  batch_size: int = 16, num_workers: int = 0) -> np.ndarray:
    """Softmax probabilities (N, C) for ``items`` in order."""
    from monai.data import DataLoader, Dataset

    network.eval()
    loader = DataLoader(Dataset(items, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = []
    for batch in loader:
        logits = network(batch["image"].to(device))
        out.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def item_patient(item: dict) -> str:
    """The patient of a test item: the manifest's ``patient`` pseudonym (a keyed digest, never a name), for a
    multi-view sample its first view's; "" when the manifest names none."""
    found = item.get("patient") or next((v.get("patient") for v in item.get("views") or () if v.get("patient")), "")
    return str(found or "")


def write_predictions(path: Path, items: list[dict], prob: np.ndarray, classes: list[str]) -> Path:
    """``item_id, patient, fold, label, y, p_<class>…`` (and ``p`` = P(class 1) for a binary task).

    ``patient`` (:func:`item_patient`) lets the study report resample and test patients, not items, when a
    patient has several items; it is empty when the manifest names no patient."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = (["item_id", "patient", "fold", "label", "y"] + [f"p_{c}" for c in classes]
               + (["p"] if len(classes) == 2 else []))
    with atomic_writer(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for item, p in zip(items, prob):
            # a class name is a label value: spreadsheet-safe, like the manifest it came from
            row = [item["item_id"], escape_cell(item_patient(item)), item["fold"],
                   escape_cell(classes[int(item["label"])]), int(item["label"])]
            row += [f"{v:.6f}" for v in p] + ([f"{p[1]:.6f}"] if len(classes) == 2 else [])
            w.writerow(row)
    return path


def plot_roc(path: Path, y: np.ndarray, prob: np.ndarray, classes: list[str], title: str) -> Path | None:
    """ROC curve(s) of the test set as PNG (one-vs-rest curves for multi-class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    drawn = False
    for c in ([1] if len(classes) == 2 else range(len(classes))):
        positive = y == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, prob[:, c])
        auc = roc_auc(positive.astype(int), np.stack([1 - prob[:, c], prob[:, c]], 1))
        ax.plot(fpr, tpr, label=f"{classes[c]} (AUC {auc:.3f})")
        drawn = True
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path



def run_params(config: dict[str, Any], cohort: Cohort, network, manifest: str | Path) -> dict[str, str]:
    """Params of a classification run: grid keys, data summary (no paths), weights and preprocessing."""
    params = {k: str(config[k]) for k in ("task", "encoder", "weights", "freeze", "lr", "encoder_lr_scale", "fold",
                                          "seed", "epochs", "batch_size", "image_size", "in_channels", "dropout",
                                          "class_weighting", "augment", "label", "feature_cache", "localization")
              if k in config}
    if config.get("views"):  # multi-view samples (medxfer.engine.multiview)
        params.update({"views": "+".join(str(v).upper() for v in config["views"]), "fusion": str(config.get("fusion")),
                       "group_by": json.dumps(config.get("group_by") or list(DEFAULT_GROUP_BY))})
    if cohort.num_classes == 2:  # sensitivity / specificity and AUC are for this class
        params["data.positive_class"] = cohort.classes[1]
    params.update({"data.manifest_sha256": sha256_file(manifest), "data.classes": json.dumps(cohort.classes),
                   **{f"data.n_{k}": str(v) for k, v in cohort.counts().items()},
                   "data.train_class_counts": json.dumps(cohort.class_counts("train")),
                   "data.left_out": json.dumps(cohort.skipped, sort_keys=True)})
    if cohort.sliced:  # volumes / cines cut into slice samples; every result is per item
        params.update({"input": cohort.input, "slices": str(cohort.slices), "aggregate": cohort.aggregate,
                       **{f"data.n_{k}_samples": str(v) for k, v in cohort.sample_counts().items()},
                       "data.results_per": f"item ({cohort.aggregate} of its slice / frame samples)"})
    if cohort.volumetric:  # whole volumes into a 3D network
        params.update({"input": "3d", "roi_size": str(config.get("roi_size")), "spacing": str(config.get("spacing")),
                       "data.results_per": "volume (the whole volume fitted into roi_size)"})
    if isinstance(config.get("classes"), dict):  # values grouped into classes (TI-RADS 2–3 vs 4a–5)
        grouped: dict[str, list[str]] = {}
        for value, name in class_values(config["classes"]).items():
            grouped.setdefault(name, []).append(value)
        params["data.class_values"] = json.dumps(grouped)
    params.update(weights_params(network.encoder))
    params.update(network.freeze_summary.params())
    params.update(software_params())  # the versions the report's methods name
    return params


def class_weights(cohort: Cohort, enabled: bool, device) -> torch.Tensor | None:
    """Inverse-frequency class weights (mean 1) for the loss, or None."""
    if not enabled:
        return None
    counts = torch.tensor(cohort.class_counts("train"), dtype=torch.float32).clamp(min=1)
    weights = counts.sum() / (len(counts) * counts)
    return weights.to(device)


# ----------------------------------------------------------------------------- end of training

def finalize(network: torch.nn.Module, cohort: Cohort, run_config: dict[str, Any], tracker, output_dir: str | Path,
             device: torch.device | str, batch_size: int = 16, num_workers: int = 0,
             config_files: Sequence[str] = (), evaluator=None, selection: str | None = None,
             features: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Best checkpoint → validation and test predictions → metrics, predictions CSV, ROC plot,
    medxfer checkpoint; all logged to the run, which is then closed. Returns the test metrics.

    With ``features`` (a frozen encoder's cached pooled features, see :mod:`.features`) the head
    predicts from them: the same numbers as the full network, without recomputing the encoder."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = network.module if hasattr(network, "module") else network  # DDP
    if selection is None:  # after training: the checkpoint MONAI's CheckpointSaver kept
        # (the head alone when it trained from cached features: the encoder never changed)
        selection = load_best_checkpoint(FeatureHead(model) if features is not None else model, out, evaluator,
                                         "validation AUC")
    transform = classification_transforms(int(run_config["image_size"]), int(run_config["in_channels"]),
                                          model.preprocessing, augment=False, views=model.views, fusion=model.fusion,
                                          input=run_config.get("input"), roi_size=run_config.get("roi_size"),
                                          spacing=run_config.get("spacing"))
    if features is not None:
        val_prob = predict_features(model, cohort.val, features, device)
        test_prob = predict_features(model, cohort.test, features, device)
    else:
        val_prob = predict_items(model, cohort.val, transform, device, batch_size, num_workers)
        test_prob = predict_items(model, cohort.test, transform, device, batch_size, num_workers)
    if cohort.sliced:  # slice / frame samples → one prediction per volume or cine (and per 2D item)
        val_prob = item_probabilities(cohort, "val", val_prob)
        test_prob = item_probabilities(cohort, "test", test_prob)
    val_y = np.array([int(i["label"]) for i in cohort.items("val")])
    test_y = np.array([int(i["label"]) for i in cohort.items("test")])
    thresholds = youden_thresholds(val_y, val_prob) if len(val_y) else None
    metrics = classification_metrics(test_y, test_prob, thresholds)
    metrics.update({k.replace("test_", "best_val_"): v for k, v in
                    classification_metrics(val_y, val_prob, thresholds).items() if k.endswith("auc")})
    predictions = write_predictions(out / PREDICTIONS_ARTIFACT, cohort.items("test"), test_prob, cohort.classes)
    title = f"{run_config.get('encoder')} / {run_config.get('weights')} · fold {cohort.fold}"
    roc = plot_roc(out / "roc.png", test_y, test_prob, cohort.classes, title)
    localization = []
    if run_config.get("localization"):
        localization = localize_test_cases(model, cohort, run_config, out, device, batch_size, title)
        metrics.update(localization.pop())
    checkpoint = save_checkpoint(out / CHECKPOINT_ARTIFACT, model.encoder,
                                 head={k: v for k, v in model.head.state_dict().items()},
                                 provenance={"task": "classification", "classes": list(cohort.classes),
                                             "run_name": getattr(tracker, "name", ""), "fold": cohort.fold,
                                             **({"views": list(model.views), "fusion": model.fusion}
                                                if model.views else {})})
    summary = {"metrics": metrics, "model_selection": selection,
               "youden_threshold_source": "validation" if thresholds is not None else "test",
               "youden_thresholds": thresholds, "classes": cohort.classes, "counts": cohort.counts(),
               "sample_counts": cohort.sample_counts(), "config": run_config}
    atomic_write(out / METRICS_ARTIFACT, safe_json(summary, indent=2, default=str) + "\n")
    atomic_write(out / RUN_CONFIG_ARTIFACT, safe_json(run_config, indent=2, default=str) + "\n")
    log_outcome(tracker, metrics, {"model_selection": selection,
                                   "youden_threshold_source": summary["youden_threshold_source"]},
                [predictions, roc, out / METRICS_ARTIFACT, out / RUN_CONFIG_ARTIFACT, *localization], checkpoint,
                config_files)
    return metrics


def item_probabilities(cohort: Cohort, role: str, prob: np.ndarray) -> np.ndarray:
    """Sample probabilities of ``role`` aggregated per item (``cohort.aggregate``), in the order of
    :meth:`Cohort.items`."""
    ids, out = aggregate_probabilities(prob, [s["item_id"] for s in getattr(cohort, role)], cohort.aggregate)
    assert ids == [i["item_id"] for i in cohort.items(role)]
    return out


def localize_test_cases(model: torch.nn.Module, cohort: Cohort, run_config: dict[str, Any], out: Path,
                        device: torch.device | str, batch_size: int, title: str) -> list:
    """Grad-CAM of the test cases that have a lesion mask, scored against it (see
    :mod:`medxfer.explain.localization`): ``[localization.csv, gradcam.png, {loc_* metrics}]``. Single
    images only: ``load_cohort`` refuses localization with multi-view samples."""
    scored = [item for item in cohort.test if item.get("mask")]
    cases, samples = localize(model, scored, int(run_config["image_size"]), int(run_config["in_channels"]), device,
                              batch_size=batch_size)
    csv_path = write_localization_csv(out / LOCALIZATION_ARTIFACT, cases)
    overlays = plot_overlays(out / "gradcam.png", samples, title) if samples else None
    return [csv_path, overlays, summarize(cases)]
