"""The MLflow layout of medxfer, in one place: experiment names, tags, artifact names, queries.

``docs/study-mlflow-layout.md`` describes it for users; this module is what the code spells. A
study is experiment ``medxfer/<name>`` with one parent run (role ``study``), one child run per
cell × fold × seed (role ``cell``) and one run per pretraining stage × encoder (role
``pretrain``). ``medxfer train`` outside a study logs to ``medxfer/train``.
"""
from __future__ import annotations

EXPERIMENT_PREFIX = "medxfer/"
TRAIN_EXPERIMENT = "medxfer/train"

# ---- tags
TAG_STUDY = "medxfer.study"  # the study's name, on every run of a study
TAG_ROLE = "medxfer.role"  # one of the ROLE_* values
ROLE_STUDY, ROLE_CELL, ROLE_PRETRAIN = "study", "cell", "pretrain"
TAG_CONFIG_HASH = "config_hash"  # a child's or stage's configuration digest: one FINISHED run per hash
TAG_CELL = "cell"  # a child's cell: its grid values without fold and seed, as a readable name
TAG_CELL_HASH = "cell_hash"  # digest of the cell (the runs of one cell share it across folds and seeds)
TAG_FOLD, TAG_SEED, TAG_TASK = "fold", "seed", "task"  # a child's test fold, seed, bundle task
TAG_GRID_KEYS = "medxfer.grid_keys"  # the grid keys of the spec that planned a child, comma-separated
TAG_SPEC_HASH = "medxfer.spec_hash"  # parent run: digest of the spec as last run
TAG_PROGRESS = "medxfer.progress"  # parent run: "done/total"
TAG_SIMILARITY_HASH = "medxfer.similarity_hash"  # parent run: digest of the similarity it holds
TAG_STAGE = "medxfer.stage"  # pretraining stage name
TAG_CHAIN = "medxfer.chain"  # pretraining chain, "a → b"
TAG_HOST = "medxfer.host"  # runner host (for people; hostnames repeat across containers and nodes) …
TAG_PID = "medxfer.pid"  # … and process id, checked only on the runner's own machine
TAG_MACHINE = "medxfer.machine"  # the runner's machine: kernel boot id and pid namespace (or hostname)
TAG_RUNNER = "medxfer.runner"  # random id of the runner process (one per process start)
TAG_HEARTBEAT = "medxfer.heartbeat"  # unix seconds, refreshed while a run is alive
TAG_RESET = "medxfer.reset"  # why an orphaned run was marked FAILED
TAG_CLAIM = "medxfer.claim"  # "withdrawn" on a claim given up because another runner claimed the same config
TAG_TASK = "medxfer.task"  # the executor's task id (Ray keeps it across a task's retries)
TAG_PARENT_RUN = "mlflow.parentRunId"  # MLflow's own parent tag (mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID)
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"  # a run's description in the MLflow UI (Markdown): the parent's links the report
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # experiment tag: MLflow 3's type of an experiment …
EXPERIMENT_KIND_TRAINING = "custom_model_development"  # … "model training", not the GenAI default
TAG_SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # experiment tag + key: a runs-table view the UI opens by URL
STUDY_VIEW_KEY = "medxfer-study"  # the key of a study's comparison view (``?viewStateShareKey=medxfer-study``)

# ---- params
PARAM_WEIGHTS_SHA256 = "weights.sha256"  # every training run: sha256 of the weights it loaded (not for scratch)

# ---- artifacts
CHECKPOINT_ARTIFACT = "checkpoint/medxfer_checkpoint.pt"  # a run's weights, the `run:<id>` source
GRID_ARTIFACT = "grid.json"  # parent run: config hashes of the grid as last expanded
SIMILARITY_ARTIFACT = "similarity.json"  # parent run: source-vs-target cohort distances
SPEC_ARTIFACT = "spec.yaml"  # parent run: the spec as run
PREDICTIONS_ARTIFACT = "predictions.csv"  # classification child: test predictions per item
PER_CASE_ARTIFACT = "per_case.csv"  # segmentation child: Dice and HD95 per test case (volume)
PER_SLICE_ARTIFACT = "per_slice.csv"  # segmentation on volumes: Dice and HD95 per test slice
LOCALIZATION_ARTIFACT = "localization.csv"  # classification child (optional): Grad-CAM per scored case
METRICS_ARTIFACT = "metrics.json"
RUN_CONFIG_ARTIFACT = "run_config.json"  # the resolved bundle settings of a run (predict rebuilds from it)
BUNDLE_CONFIGS_DIR = "bundle_configs"
REPORT_DIR = "report"  # parent run: the study report

TASK_ARTIFACTS = {"classification": PREDICTIONS_ARTIFACT, "segmentation": PER_CASE_ARTIFACT}


def study_experiment(name: str) -> str:
    """The experiment of study ``name``: ``medxfer/<name>``."""
    return f"{EXPERIMENT_PREFIX}{name}"


def role_filter(study: str, role: str, **tags: str) -> str:
    """An MLflow filter string for the runs of ``study`` with ``role`` (and equal ``tags``)."""
    parts = [f"tags.`{TAG_STUDY}` = '{study}'", f"tags.`{TAG_ROLE}` = '{role}'"]
    parts += [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    return " and ".join(parts)
