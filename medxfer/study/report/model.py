"""The report's data model: what collection reads from MLflow and what summarising computes from it."""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from ...core.errors import MedxferError

LEVEL = 0.95  # confidence level of every CI of the report
Z_LEVEL = NormalDist().inv_cdf(0.5 + LEVEL / 2)  # two-sided normal quantile of LEVEL (1.96)
METRICS = {"classification": "test_auc", "segmentation": "test_dice"}  # each run's own test metric, per task
SIM_MEASURES = (("frechet", "Fréchet distance"), ("mmd2", "MMD²"), ("intensity", "intensity distance"),
                ("task2vec", "Task2Vec distance"))
SIM_HEADERS = {m: label[0].upper() + label[1:] for m, label in SIM_MEASURES}  # "frechet" -> "Fréchet distance"


def sim_measures(rows: list[SimilarityRow]) -> tuple[tuple[str, str], ...]:
    """The :data:`SIM_MEASURES` some row has a value of: a similarity.json from before Task2Vec, or of
    a study without labelled tasks, has no Task2Vec distance, and the report leaves its column out."""
    return tuple((m, label) for m, label in SIM_MEASURES
                 if any(np.isfinite(getattr(r, m)) for r in rows if getattr(r, m) is not None))


class ReportError(MedxferError, ValueError):
    """A study that cannot be reported (unknown, no finished run, unreadable artifacts)."""


# Params a run logs when it cut volumes / cines into 2D samples (medxfer.engine.classification.run_params),
# or fed whole volumes to a 3D network (input 3d: its patch size and voxel grid)
SAMPLING_PARAMS = ("input", "slices", "aggregate", "data.results_per", "data.n_test", "data.n_test_samples",
                   "roi_size", "spacing")
CLASS_DICE_PREFIX = "dice_"  # per_case.csv columns of a native 3D segmentation run: dice_<class> per foreground class


# ---- collected from MLflow
@dataclass
class Localization:
    """A classification run's ``localization.csv``: one row per scored test case (non-empty mask)."""

    item_id: np.ndarray  # object array of str
    hit: np.ndarray  # pointing game: 1.0 hit, 0.0 miss, nan unknown
    dice: np.ndarray  # Dice of the thresholded map vs the mask
    iou: np.ndarray  # IoU of the same (nan when the column is absent)


@dataclass
class ChildRun:
    """One finished cell × fold × seed run with its test-set rows."""

    run_id: str
    name: str
    cell: str
    task: str
    grid: dict[str, str]
    fold: str
    seed: str
    metric: float  # test_auc or test_dice (nan when not logged)
    item_id: np.ndarray  # object array of str
    y: np.ndarray | None = None  # class index (classification)
    prob: np.ndarray | None = None  # (n, n_classes) class probabilities (classification)
    dice: np.ndarray | None = None  # per-case Dice (segmentation)
    config_hash: str = ""
    end_time: int = 0
    loc: Localization | None = None  # from localization.csv, when the run has one
    weights_sha256: str = ""  # sha256 of the weights the run loaded (its weights.sha256 param; "" for scratch)
    sampling: dict[str, str] = field(default_factory=dict)  # SAMPLING_PARAMS the run logged (volumes / cines)
    # per-case Dice of each foreground class (segment), from per_case.csv's dice_<class> columns (native 3D)
    class_dice: dict[str, np.ndarray] = field(default_factory=dict)
    # the patient (manifest pseudonym) of each row, from predictions.csv's patient column ("" where the manifest
    # names none); None when the run has no such column (written before medxfer recorded patients). An item
    # without a pseudonym is its own resampling unit
    patient: np.ndarray | None = None
    # the operating point of each class (binary: class 1's) the run chose on its validation predictions (Youden's J),
    # from its metrics.json; None when the run recorded none (no metrics.json, or a one-class validation set)
    thresholds: list[float] | None = None
    threshold_source: str = ""  # "validation" | "test" (metrics.json's youden_threshold_source); "" unknown
    params: dict[str, str] = field(default_factory=dict, repr=False)  # every MLflow param of the run
    config: dict = field(default_factory=dict, repr=False)  # metrics.json's "config" (the run's bundle settings)

    @property
    def volumetric(self) -> bool:
        """Whether the run fed whole volumes to a 3D network (``input: 3d``; its results are per volume)."""
        return self.sampling.get("input", "").lower() == "3d"

    @property
    def sliced(self) -> bool:
        """Whether the run cut volumes / cines into 2D slice or frame samples (its results are per item)."""
        if self.volumetric:
            return False
        return bool(self.sampling.get("data.results_per")) or self.sampling.get("slices", "") not in ("", "None")

    @property
    def binary(self) -> bool:
        """Whether the run has two-class probabilities."""
        return self.prob is not None and self.prob.shape[1] == 2

    @property
    def constant(self) -> bool:
        """Whether the run predicted one probability vector for every test item (two or more items)."""
        if self.prob is None:
            return False
        prob = self.prob[np.isfinite(self.prob).all(axis=1)]
        return len(prob) > 1 and bool((prob == prob[0]).all())


@dataclass(frozen=True)
class PooledSpec:
    """A pooled comparison of the report (the spec's ``compare`` entry, or ``study report --compare``): the
    values of grid key ``by`` on the runs' test metric, pooled over the grid keys ``pool`` and all folds and
    seeds, per combination of the other grid keys."""

    by: str
    pool: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``weights, pooled over encoder, freeze``."""
        return f"{self.by}, pooled over {', '.join(self.pool)}" if self.pool else self.by

    def problem(self, grid_keys: list[str]) -> str | None:
        """Why this comparison cannot be made on a study with ``grid_keys`` (None when it can)."""
        keys = ", ".join(grid_keys)
        if self.by not in grid_keys:
            return f"compare: {self.by!r} is not a grid key of the study (grid keys: {keys})"
        bad = [k for k in self.pool if k not in grid_keys or k == self.by]
        if bad or len(set(self.pool)) != len(self.pool):
            return (f"pool: {bad or list(self.pool)} must be distinct grid keys other than {self.by!r} "
                    f"(grid keys: {keys})")
        return None


@dataclass
class StudyRuns:
    """What :func:`~medxfer.study.report.collect.collect_study` found."""

    name: str
    experiment_id: str | None
    parent_run_id: str | None
    grid_keys: list[str]
    runs: list[ChildRun]
    n_not_finished: int = 0  # child runs FAILED / RUNNING / KILLED, ignored
    n_superseded: int = 0  # FINISHED runs replaced by a later one with the same config_hash
    notes: list[str] = field(default_factory=list)
    similarity: dict | None = None  # the parent run's similarity.json, when it has a readable one
    compare: list[PooledSpec] = field(default_factory=list)  # the pooled comparisons of the parent's spec.yaml
    pretrain: list[PretrainRun] = field(default_factory=list)  # finished pretraining stage runs of the study
    optimizer: str = ""  # the optimiser class of the runs' bundle (its logged train.json), "" when unknown


@dataclass
class PretrainRun:
    """A finished pretraining stage run of the study: the stage trained for one encoder, and its own
    source-task result (test AUC on the stage's cohort)."""

    stage: str
    chain: str  # "imagenet → stageA → stageB"
    encoder: str
    start: str  # the weights the stage started from (its weights param)
    test_auc: float
    n_test: int | None  # test items of the stage's cohort
    epochs: str = ""


# ---- summarised
@dataclass
class FoldCount:
    """The tested items of one test fold (or of all folds, ``fold`` "all"), from the pooled predictions."""

    fold: str
    n_items: int
    n_patients: int | None  # distinct patient pseudonyms (None: the predictions name no patient)
    class_counts: list[int] = field(default_factory=list)  # items per class index (classification; binary [neg, pos])


@dataclass
class CohortCounts:
    """Who was tested in one task's runs: items, patients and classes per test fold and overall."""

    task: str
    n_classes: int | None  # None for segmentation
    folds: list[FoldCount]
    overall: FoldCount
    patient_split: bool | None  # every patient's items in one test fold (None: no patient pseudonyms)
    n_without_patient: int = 0  # items whose predictions name no patient


@dataclass
class Rate:
    """A proportion ``num / den`` with its patient-clustered Wilson CI (nan when ``den`` is 0)."""

    value: float
    low: float
    high: float
    num: int
    den: int


@dataclass
class ClinicalSummary:
    """A binary cell at the operating points its runs chose on validation (each run's own Youden threshold),
    pooled over folds and seeds: the confusion counts and sensitivity, specificity, PPV, NPV with CIs."""

    n_runs: int  # runs with a validation threshold (the others are left out)
    n_runs_without: int  # runs without one (no metrics.json, or the threshold chosen on test)
    tp: int
    fp: int
    fn: int
    tn: int
    sensitivity: Rate
    specificity: Rate
    ppv: Rate
    npv: Rate
    threshold_min: float
    threshold_max: float


@dataclass
class LocSummary:
    """A cell's Grad-CAM localization, pooled over its runs' scored cases (seeds averaged per case)."""

    n_runs: int  # runs with a localization.csv
    n_cases: int  # distinct scored cases
    hit: float  # pointing-game hit rate
    hit_ci_low: float
    hit_ci_high: float
    dice: float
    dice_ci_low: float
    dice_ci_high: float
    iou: float
    hit_mean: float  # mean ± SD over runs of each run's own hit rate / mean Dice / mean IoU
    hit_sd: float
    dice_mean: float
    dice_sd: float
    iou_mean: float
    iou_sd: float


@dataclass
class ClassSummary:
    """One foreground class (segment) of a segmentation cell: its Dice per run and pooled over cases."""

    name: str  # as in the per_case.csv column suffix (medxfer.engine.segmentation3d.safe_class_name)
    n_runs: int  # runs that scored the class
    mean: float  # mean ± SD over runs of each run's mean Dice of the class
    sd: float
    pooled: float  # mean per-case Dice (seeds averaged per case)
    ci_low: float
    ci_high: float
    n_cases: int


@dataclass
class CellSummary:
    """One cell (a combination of grid values, all folds and seeds): per-run and pooled metric."""

    cell: str
    task: str
    grid: dict[str, str]
    n_runs: int
    folds: list[str]
    seeds: list[str]
    metric: str  # "test_auc" | "test_dice"
    mean: float
    sd: float
    run_values: list[float]  # each run's test metric (the dots of the bar chart)
    pooled: float
    ci_low: float
    ci_high: float
    n_cases: int  # distinct items pooled
    n_classes: int | None = None
    transfer_score: float | None = None
    scratch_cell: str | None = None
    pooled_kind: str = ""  # "OOF AUC" | "OOF macro OvR AUC" | "per-case Dice"
    roc: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    loc: LocSummary | None = None  # Grad-CAM localization (classification cells with localization.csv)
    classes: list[ClassSummary] = field(default_factory=list)  # per-class Dice (two or more segments scored)
    # transfer score per fold (cats-scans): each fold's test metric (seeds averaged) against the scratch cell's
    # of the same fold; mean ± SD over the folds both cells have
    transfer_fold_mean: float | None = None
    transfer_fold_sd: float | None = None
    transfer_folds: int = 0
    # why the transfer scores are not to be trusted ("" when they are): the scratch cell is a degenerate
    # baseline (constant predictions, pooled AUC 0.5 or below chance); flagged scores stay out of correlations
    transfer_flag: str = ""
    flag: str = ""  # why the cell itself is degenerate ("" when it is not): constant predictions, AUC < 0.5 mostly
    # distinct resampling units of the pooled items: patients, and items without a pseudonym each one unit (None:
    # no pooled item has a patient pseudonym)
    n_patients: int | None = None
    n_without_patient: int = 0  # distinct pooled items whose predictions name no patient (each its own unit)
    # folds left out of the per-fold transfer score, with why: "per-fold: 2 of 5 folds left out (scratch at or
    # below chance in folds 0, 1)"; "" when every fold both cells have counts
    transfer_fold_note: str = ""
    ci_n_skipped: int = 0  # bootstrap resamples of the pooled CI left out for lacking a class (of the study's)
    clinical: ClinicalSummary | None = None  # binary classification: metrics at the validation operating points
    # confusion counts pooled over folds and seeds (an item once per seed), rows true class, columns predicted:
    # binary at each run's validation threshold ([[TN, FP], [FN, TP]]), more classes by argmax; None: segmentation
    confusion: list[list[int]] | None = None
    confusion_rule: str = ""  # "validation Youden threshold" | "argmax"
    brier: float = float("nan")  # mean over predictions of Σ_k (p_k − 1[y = k])² / (1 for 2 classes: (p − y)²)
    # reliability of P(class 1) (binary): 10 equal-width bins of [0, 1], non-empty ones only, as
    # (mean predicted probability, observed fraction of class 1, predictions in the bin); pooled over folds and seeds
    calibration: list[tuple[float, float, int]] = field(default_factory=list)


@dataclass
class Comparison:
    """Two cells that differ only in the weights source, compared on the cases both have."""

    task: str
    group: str  # e.g. "encoder=resnet18, freeze=all, lr=0.001"
    source_a: str
    source_b: str
    cell_a: str
    cell_b: str
    n_cases: int
    metric: str  # "AUC" | "Dice" | "AUC (macro OvR)"; localization: "loc_dice" | "loc_hit"
    a: float
    b: float
    difference: float
    p: float
    p_holm: float
    # "DeLong" | "DeLong (Obuchowski clustered by patient, N patients)" | "paired bootstrap (…)" (multi-class) |
    # "Wilcoxon signed-rank" | "McNemar exact" | "n/a (…)"
    test: str
    n_skipped: int = 0  # resamples of a paired bootstrap test left out for lacking a class (of the study's)
    # standard error of ``difference``: DeLong's (Obuchowski's when clustered by patient), or the SD of the paired
    # bootstrap differences (multi-class); nan for the Dice and localization tests, which have none
    se: float = float("nan")

    @property
    def ci_low(self) -> float:
        """Lower bound of the Wald :data:`LEVEL` CI of ``difference`` (difference − z·se; nan without an SE)."""
        return self.difference - Z_LEVEL * self.se

    @property
    def ci_high(self) -> float:
        """Upper bound of the Wald :data:`LEVEL` CI of ``difference`` (difference + z·se; nan without an SE)."""
        return self.difference + Z_LEVEL * self.se


@dataclass
class PooledValue:
    """One value of a pooled comparison's ``by`` key in one group: its runs' test metric."""

    value: str
    n_runs: int  # runs with a finite test metric
    mean: float
    sd: float


@dataclass
class PooledComparison:
    """Two values of ``by`` in one group, compared on matched runs (same pooled keys' values, fold, seed)."""

    value_a: str
    value_b: str
    n_pairs: int
    a: float  # mean test metric of the matched runs of value_a
    b: float
    difference: float  # a − b: the mean of the paired differences
    p: float
    p_holm: float
    test: str  # "Wilcoxon signed-rank (matched runs)" | "n/a (no matched runs)"


@dataclass
class PooledGroup:
    """A pooled comparison within one combination of the grid keys neither compared nor pooled."""

    spec: PooledSpec
    task: str
    group: str  # e.g. "lr=0.001"; "all runs" when every other grid key is pooled
    grid: dict[str, str]  # the values of the other grid keys
    metric: str  # "test_auc" | "test_dice"
    values: list[PooledValue]
    comparisons: list[PooledComparison]


@dataclass
class SimilarityRow:
    """One pretrained source of one group of comparable cells: its distances and transfer score."""

    task: str
    group: str
    grid: dict[str, str]
    cell: str
    scratch_cell: str
    source: str
    frechet: float
    mmd2: float
    intensity: float
    n_source: int | None
    transfer_score: float
    task2vec: float = float("nan")  # nan: not in similarity.json (no labelled task, or written before Task2Vec)


@dataclass
class SimilarityCorrelation:
    """Spearman correlation of one distance with the transfer score across a group's sources."""

    task: str
    group: str
    measure: str  # "frechet" | "mmd2" | "intensity"
    n: int
    rho: float
    p: float
    method: str  # "exact permutation" | "t approximation" | "undefined"
    note: str  # "" | "n < 3: undefined" | "undefined (constant values)"


@dataclass
class SimilaritySummary:
    """The dataset-similarity section: the network the distances were computed with, rows, correlations."""

    encoder: str
    weights: str
    image_size: str
    n_target: int | None
    rows: list[SimilarityRow]
    correlations: list[SimilarityCorrelation]


@dataclass
class ItemSampling:
    """The runs of a study that cut their items (volumes, cines) into 2D samples with one setting:
    their results are per item, aggregated from the samples."""

    task: str
    input: str  # "2d" | "2.5d"
    slices: str  # "all" | "center" | "every:K" | "range:LO-HI" | "labelled"
    aggregate: str  # "mean" | "max" | "top:K"; "" when the runs logged none
    cells: list[str]
    n_runs: int
    n_test_items: int | None  # items tested, summed over the runs (None when a run did not log it)
    n_test_samples: int | None  # slice / frame samples those items were cut into


@dataclass
class NativeInput:
    """The runs of a study that fed whole volumes to 3D networks (``input: 3d``) with one patch size."""

    task: str
    roi_size: str  # as the runs logged it ("[96, 96, 96]"; "None": the weights' pretraining ROI, else 96³)
    spacing: str  # "None": the weights' spacing, else each volume's own grid
    cells: list[str]
    n_runs: int


@dataclass
class StudySummary:
    """Everything the report shows: cells, comparisons (AUC/Dice and localization), similarity, provenance."""

    name: str
    parent_run_id: str | None
    grid_keys: list[str]
    cells: list[CellSummary]
    comparisons: list[Comparison]
    n_resamples: int
    seed: int
    level: float = LEVEL
    n_runs: int = 0
    n_not_finished: int = 0
    n_superseded: int = 0
    notes: list[str] = field(default_factory=list)
    created: str = ""
    loc_comparisons: list[Comparison] = field(default_factory=list)  # Holm-adjusted as their own family
    similarity: SimilaritySummary | None = None
    sampling: list[ItemSampling] = field(default_factory=list)  # empty: 2D items only
    native: list[NativeInput] = field(default_factory=list)  # empty: no native 3D runs
    class_comparisons: list[Comparison] = field(default_factory=list)  # per-class Dice, a Holm family of their own
    pooled: list[PooledGroup] = field(default_factory=list)  # pooled comparisons, a Holm family of their own
    # classification runs whose predictions.csv has no patient column (written by an earlier medxfer)
    n_no_patient_column: int = 0
    cohort: list[CohortCounts] = field(default_factory=list)  # per task: tested items, patients, classes per fold
    pretrain: list[PretrainRun] = field(default_factory=list)  # the study's pretraining stage runs
    # the runs' settings for the paste-ready methods: {name: value} where all runs agree, else "a, b (varies)"
    settings: dict[str, str] = field(default_factory=dict)
    preprocessing: dict[str, str] = field(default_factory=dict)  # weights source -> its input preprocessing
    software: dict[str, str] = field(default_factory=dict)  # package -> version
    software_source: str = ""  # "the runs' params" | "the environment that wrote this report (the runs logged none)"

    @property
    def loc_cells(self) -> list[CellSummary]:
        """The cells with a localization summary."""
        return [c for c in self.cells if c.loc is not None]

    @property
    def class_cells(self) -> list[CellSummary]:
        """The cells with per-class Dice (segmentation with two or more segments)."""
        return [c for c in self.cells if c.classes]

    @property
    def class_names(self) -> list[str]:
        """Every class of the per-class results, in the order the cells name them."""
        return list(dict.fromkeys(k.name for c in self.cells for k in c.classes))
