"""Study report: collect a study's finished runs from MLflow, summarise them, write HTML/Markdown/CSV.

Reads the layout of ``docs/study-mlflow-layout.md``: experiment ``medxfer/<name>``, one parent run
(``medxfer.role=study``) and one child run per cell × fold × seed (``medxfer.role=cell``) with a
``predictions.csv`` (classification) or ``per_case.csv`` (segmentation) artifact.

Per cell (one combination of grid values, all folds and seeds):

* mean ± SD of the runs' ``test_auc`` / ``test_dice`` (each run scored on its own test fold);
* pooled out-of-fold (OOF) AUC — the AUC of the concatenated test predictions of all folds —
  with a stratified bootstrap 95 % CI (items are the resampling unit when several seeds are
  pooled); macro one-vs-rest AUC without CI for more than two classes; for segmentation the
  mean per-case Dice (averaged over seeds per case) with a bootstrap CI of the mean;
* transfer score (van den Brandt et al. 2021) against the scratch cell with the same other grid
  values, on the pooled metric, and per fold (each fold's score, then mean ± SD over folds), flagged
  when the scratch cell is a degenerate baseline (constant predictions, pooled AUC 0.5 or below);
  degenerate cells themselves (constant predictions, AUC below 0.5 in most folds) are flagged too.

The bootstrap CIs resample patients (the ``patient`` column of ``predictions.csv``: all items and
seeds' predictions of a patient together); items without a pseudonym (an empty patient value, or runs
without the column) are each their own unit.
With more than two classes the macro one-vs-rest AUC gets a bootstrap CI as well.

Cells identical in every grid key but ``weights`` are compared pairwise on the items both have:
DeLong's test (binary classification, probability averaged over seeds per item; Obuchowski's
clustered DeLong when a patient has several items), a paired bootstrap test of the macro OvR AUC
(more than two classes) or the Wilcoxon signed-rank test (per-case Dice); these p-values are
Holm-adjusted together.

**Pooled comparisons** — the spec's ``compare`` (``[{by: weights, pool: [encoder, freeze]}]``, read
from the ``spec.yaml`` of the parent run) or ``study report --compare weights --pool encoder,freeze``:
per value of ``by`` the mean ± SD of the runs' test metric pooled over the ``pool`` keys, folds and
seeds, per combination of the other grid keys; each pair of values by the Wilcoxon signed-rank test
on matched runs (same pooled keys' values, fold and seed), Holm-adjusted as their own family.

Studies on volumes and cines (runs whose params show ``input``/``slices``/``aggregate``: 2D
networks trained on slice / frame samples) are reported per item exactly like 2D studies — their
``predictions.csv`` rows are volumes / cines — and the methods text says so, with the settings
(:func:`.prose.item_level`).

Native 3D runs (``input: 3d``: whole volumes, sliding-window prediction) are per volume too, and the
methods text says so with their patch size (:func:`.prose.native_3d`).

Optional sections:

* **Per-class Dice** — segmentation runs whose ``per_case.csv`` scores two or more classes
  (``dice_<class>`` columns; native 3D with ``segments``): per cell and class the mean ± SD over runs
  and the mean per-case Dice with a bootstrap CI; the same pairs of cells as the Dice comparisons
  compared per class by Wilcoxon on their shared cases, Holm-adjusted as their own family. Also in
  ``results.csv`` (``dice_<class>*`` columns) and ``comparisons.csv`` (metric ``dice_<class>``).

* **Lesion localization** — classification runs with a ``localization.csv`` (Grad-CAM pointing
  game hit and Dice/IoU per scored test case): per cell the pooled hit rate, Dice and IoU (cases
  averaged over seeds) with bootstrap CIs and mean ± SD over runs; the same pairs of cells as the
  AUC comparisons compared on their shared cases by Wilcoxon (Dice) and exact McNemar (hits),
  Holm-adjusted as their own family.
* **Dataset similarity vs transfer** — when the parent run has a ``similarity.json`` (distances of
  each pretraining stage's cohort to the study's cohort): per group of comparable cells each
  source's distances against its transfer score, with Spearman correlations and a scatter figure.

The report holds study and grid values, MLflow run ids and numbers only — no classification class
names, no tracking URI, no item ids. Segment names (the anatomy a mask's label values stand for, as
the study's ``segments`` name them) head the per-class results.

Modules, in the order the data flows:

* :mod:`.model` — the dataclasses (collected runs, summaries) and :class:`ReportError`;
* :mod:`.collect` — reading the runs and their artifacts from MLflow (:func:`collect_study`);
* :mod:`.summarize` — per-cell statistics, comparisons, localization, similarity (:func:`summarize`);
* :mod:`.formatting`, :mod:`.tables`, :mod:`.prose` — numbers, tables and texts as the report shows them;
* :mod:`.figures` — the matplotlib figures as PNG;
* :mod:`.document`, :mod:`.sections` — the report as one ordered list of sections;
* :mod:`.render` — that list as HTML and Markdown (Jinja2 templates in ``templates/``);
* :mod:`.csv_export` — the CSV files;
* :mod:`.write` — all files of a report into a folder (:func:`write_report`);
* :mod:`.build` — collect, summarise, write, log to the parent run (:func:`build_report`).
"""
from .build import build_report
from .collect import collect_study
from .model import (CellSummary, ChildRun, ClassSummary, Comparison, ItemSampling, Localization, LocSummary,
                    NativeInput, PooledComparison, PooledGroup, PooledSpec, PooledValue, ReportError,
                    SimilarityCorrelation, SimilarityRow, SimilaritySummary, StudyRuns, StudySummary)
from .summarize import summarize
from .write import write_report

__all__ = ["ReportError", "ChildRun", "StudyRuns", "CellSummary", "ClassSummary", "Comparison", "StudySummary",
           "ItemSampling", "NativeInput", "Localization", "LocSummary", "SimilarityRow", "SimilarityCorrelation",
           "SimilaritySummary", "PooledSpec", "PooledValue", "PooledComparison", "PooledGroup", "collect_study",
           "summarize", "write_report", "build_report"]
