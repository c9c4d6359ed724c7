"""One MLflow run per training, written through ``MlflowClient`` (no global fluent state, so
several runs — a study, DDP ranks — never step on each other).

Names follow ``../shared/DESIGN.md``: experiment ``medxfer/<study or "train">``, run name
``{task}/{encoder}/{weights}/{freeze}/lr{lr}/fold{k}/seed{s}``. Only rank 0 writes. Nothing
from a DICOM header reaches here: params are grid keys, hashes and counts.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from ..tracking.layout import BUNDLE_CONFIGS_DIR, CHECKPOINT_ARTIFACT, TAG_PARENT_RUN
from ..tracking.store import client as store_client
from ..tracking.store import experiment_id


SOFTWARE_PACKAGES = ("medxfer", "monai", "torch")  # logged as params software.<name>, with software.python


def software_params() -> dict[str, str]:
    """The versions a run's results depend on, as MLflow params (``software.medxfer``, ``software.monai``,
    ``software.torch``, ``software.python``): the report's methods name them; "" for a package not installed."""
    out = {}
    for name in SOFTWARE_PACKAGES:
        try:
            out[f"software.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"software.{name}"] = ""
    out["software.python"] = platform.python_version()
    return out


def run_name(task: str, encoder: str, weights: str, freeze: str, lr: float, fold: int, seed: int) -> str:
    """The deterministic run name of one cell × fold × seed."""
    return f"{task}/{encoder}/{weights}/{freeze}/lr{lr:g}/fold{fold}/seed{seed}"


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class RunTracker:
    """Start, fill and close one MLflow run; a no-op on ranks other than 0 or when disabled."""

    def __init__(self, experiment: str, name: str, params: dict[str, Any] | None = None,
                 tags: dict[str, str] | None = None, enabled: bool = True, parent_run_id: str | None = None,
                 run_id: str | None = None):
        self.experiment = experiment
        self.name = name
        self.params = {k: str(v) for k, v in (params or {}).items()}
        self.tags = dict(tags or {})
        self.enabled = enabled and _is_rank_zero()
        self.parent_run_id = parent_run_id
        self.claimed_run_id = run_id  # a run created (claimed) by a study runner, which this tracker fills
        self.run_id: str | None = None
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = store_client()  # the store's first use is serialised with other processes
        return self._client

    def start(self) -> str | None:
        """Create the run (or take the claimed one) and log params and tags; returns the run id (None
        when disabled)."""
        if not self.enabled:
            return None
        tags = dict(self.tags)
        if self.parent_run_id:
            tags[TAG_PARENT_RUN] = self.parent_run_id
        if self.claimed_run_id:  # the study runner created it to claim the configuration (medxfer.study.claims)
            from mlflow.entities import RunTag

            self.run_id = self.claimed_run_id
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        else:
            run = self.client.create_run(experiment_id(self.client, self.experiment), run_name=self.name, tags=tags)
            self.run_id = run.info.run_id
        self.log_params(self.params)
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Finite metrics only (an undefined AUC on a one-class validation set is skipped)."""
        if not self.run_id:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.run_id:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id:
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run once (later calls do nothing)."""
        if self.run_id and not getattr(self, "_finished", False):
            self.client.set_terminated(self.run_id, status=status)
            self._finished = True

    # --- ignite glue -----------------------------------------------------------------------
    def attach(self, trainer, evaluator=None) -> None:
        """Log ``train_loss`` (epoch mean) from ``trainer`` and every metric of ``evaluator``
        (``val_*``) after each validation, with the training epoch as step.

        The per-step losses are summed on the device (:class:`EpochLoss`) and read once, after the
        epoch's last step (also into ``trainer.state.metrics["train_loss"]``, which MONAI's
        ``StatsHandler`` prints at the epoch's end); under ``torch.distributed`` the mean is over every
        rank's steps. Call on every rank: the reduction is collective."""
        from ignite.engine import Events

        epoch_loss = EpochLoss()

        def _last_step(engine, _event) -> bool:
            length = engine.state.epoch_length
            return bool(length) and engine.state.iteration % length == 0

        def _reduce(engine) -> None:
            if "train_loss" not in engine.state.metrics:
                mean = epoch_loss.mean()
                if mean is not None:
                    engine.state.metrics["train_loss"] = mean

        @trainer.on(Events.EPOCH_STARTED)
        def _reset(engine):
            epoch_loss.reset()
            engine.state.metrics.pop("train_loss", None)

        @trainer.on(Events.ITERATION_COMPLETED)
        def _collect(engine):
            out = engine.state.output
            out = out[0] if isinstance(out, list) else out
            if isinstance(out, dict) and "loss" in out:
                epoch_loss.add(out["loss"])

        # after the epoch's last step, before any EPOCH_COMPLETED handler (validation, StatsHandler) runs
        trainer.add_event_handler(Events.ITERATION_COMPLETED(event_filter=_last_step), _reduce)

        @trainer.on(Events.EPOCH_COMPLETED)
        def _log_train(engine):
            _reduce(engine)  # an epoch of unknown length, or cut short
            if "train_loss" in engine.state.metrics:
                self.log_metrics({"train_loss": engine.state.metrics["train_loss"]}, step=engine.state.epoch)

        if evaluator is not None:
            @evaluator.on(Events.EPOCH_COMPLETED)
            def _log_val(engine):
                self.log_metrics(dict(engine.state.metrics), step=trainer.state.epoch)

        @trainer.on(Events.EXCEPTION_RAISED)
        def _failed(engine, exc):  # also for `python -m monai.bundle run` and torchrun, not only train_bundle
            self.finish("FAILED")
            raise exc


class EpochLoss:
    """The mean of an epoch's per-step training losses without a host sync per step: the losses are
    summed as a detached tensor on their device and read once, by :meth:`mean`. When
    ``torch.distributed`` is initialised, :meth:`mean` all-reduces the sum and the step count, so every
    rank gets the mean over all ranks' steps (a collective call: every rank must make it)."""

    def __init__(self) -> None:
        self.total = None
        self.steps = 0

    def reset(self) -> None:
        """Forget the steps so far (a new epoch)."""
        self.total, self.steps = None, 0

    def add(self, loss: Any) -> None:
        """Add one step's loss (a tensor, kept on its device, or a number)."""
        import torch

        value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        self.total = value if self.total is None else self.total + value
        self.steps += 1

    def mean(self) -> float | None:
        """The epoch's mean loss (across ranks under ``torch.distributed``); None without any step."""
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if self.total is not None:
                device = self.total.device
            elif dist.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            else:
                device = torch.device("cpu")
            total = self.total if self.total is not None else torch.zeros((), device=device)
            pair = torch.stack([total.reshape(()).to(device, torch.float64),
                                torch.tensor(float(self.steps), dtype=torch.float64, device=device)])
            dist.all_reduce(pair, op=dist.ReduceOp.SUM)
            total_sum, steps = pair.tolist()
            return total_sum / steps if steps else None
        if self.total is None or not self.steps:
            return None
        return float(self.total) / self.steps


def load_best_checkpoint(model, output_dir: str | os.PathLike, evaluator=None, metric: str = "validation AUC") -> str:
    """Load the checkpoint MONAI's ``CheckpointSaver`` kept (``best_model*.pt``) into ``model``;
    returns how the tested model was selected. An undefined key metric on every epoch (-inf, e.g.
    a one-class validation set) is not a selection: the last epoch is tested and said so."""
    import logging

    import torch

    best = sorted(Path(output_dir).glob("best_model*.pt"))
    best_metric = getattr(getattr(evaluator, "state", None), "best_metric", None)
    if best_metric is not None and not math.isfinite(float(best_metric)):
        best = []
    if not best:
        logging.getLogger(__name__).warning("no best checkpoint (%s undefined): testing the last epoch", metric)
        return f"last epoch ({metric} undefined)"
    state = torch.load(best[-1], map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"] if "model" in state else state)
    return f"best {metric}"


def log_outcome(tracker: RunTracker | None, metrics: dict[str, float], tags: dict[str, str],
                artifacts: list, checkpoint: Path, config_files=()) -> None:
    """Final metrics, tags, artifacts, the medxfer checkpoint (at its contract path) and the bundle
    configs of a run; then the run is closed as FINISHED."""
    if tracker is None:
        return
    tracker.log_metrics(metrics)
    for key, value in tags.items():
        tracker.set_tag(key, value)
    for path in artifacts:
        if path is not None:
            tracker.log_artifact(path)
    folder, name = CHECKPOINT_ARTIFACT.rsplit("/", 1)
    if Path(checkpoint).name == name:
        tracker.log_artifact(checkpoint, folder)
    else:  # the contract path (the `run:<id>` source) whatever the local file is called
        with tempfile.TemporaryDirectory(prefix="medxfer-checkpoint-") as tmp:
            tracker.log_artifact(shutil.copyfile(checkpoint, Path(tmp) / name), folder)
    for f in config_files:
        tracker.log_artifact(f, BUNDLE_CONFIGS_DIR)
    tracker.finish()
