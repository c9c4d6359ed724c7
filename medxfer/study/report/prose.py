"""The report's prose: provenance lines and the methods paragraphs of the main, pooled-comparison, per-class,
localization and similarity parts.

Each text says what was computed for *this* summary (tasks present, resamples, seed, level), in
words a reader of the report needs to interpret the tables.
"""
from __future__ import annotations

import re

from .model import CohortCounts, ItemSampling, NativeInput, PooledSpec, StudySummary, sim_measures

INPUT_WORDS = {"2d": "one slice or frame per sample",
               "2.5d": "slice k with its neighbours k−1 and k+1 as the three channels, the end slice repeated at "
                       "the edges"}


def provenance(s: StudySummary) -> list[str]:
    """Parent run, runs used and ignored, generation time, then the collection and summary notes."""
    lines = [f"Parent run: {s.parent_run_id or 'none found'}",
             f"Runs used: {s.n_runs} finished child runs; ignored: {s.n_not_finished} not finished, "
             f"{s.n_superseded} superseded by a later run of the same configuration",
             f"Generated: {s.created}"]
    return lines + list(s.notes)


def _slices_words(value: str) -> str:
    """A ``slices`` setting in words."""
    fixed = {"all": "every slice / frame", "center": "the middle slice / frame",
             "labelled": "the slices that carry a label of their own"}
    if value in fixed:
        return fixed[value]
    every = re.fullmatch(r"every:(\d+)", value)
    if every:
        step = int(every.group(1))
        if step == 1:
            return "every slice / frame"
        suffix = "th" if step % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(step % 10, "th")
        return f"every {step}{suffix} slice / frame: 0, {step}, {2 * step}, …"
    span = re.fullmatch(r"range:(\d*\.?\d+)-(\d*\.?\d+)", value)
    if span:
        low, high = (float(x) * 100 for x in span.groups())
        return f"the slices / frames from {low:g} % to {high:g} % of the slice axis"
    return value


def _aggregate_words(value: str) -> str:
    """An ``aggregate`` setting in words: how an item's probability comes from its samples'."""
    top = re.fullmatch(r"top:(\d+)", value)
    if value == "mean":
        return "an item's probability is the mean of its samples' probabilities"
    if value == "max":
        return "an item's probability is the highest of its samples' probabilities"
    if top:
        return f"an item's probability is the mean of its {top.group(1)} highest sample probabilities"
    return value


def _sampling_setting(g: ItemSampling, name_cells: bool) -> str:
    parts = [f"input {g.input} ({INPUT_WORDS.get(g.input, g.input)})", f"slices {g.slices} ({_slices_words(g.slices)})"]
    if g.aggregate and g.task == "classification":
        parts.append(f"aggregate {g.aggregate} ({_aggregate_words(g.aggregate)})")
    text = ", ".join(parts)
    if g.n_test_items and g.n_test_samples is not None:
        text += (f"; {g.n_test_samples / g.n_test_items:.1f} samples per tested item on average ({g.n_test_samples} "
                 f"sample predictions made {g.n_test_items} item predictions in {g.n_runs} "
                 f"{'run' if g.n_runs == 1 else 'runs'})")
    if name_cells:
        text += f" (cells {', '.join(g.cells)})"
    return text


def item_level(s: StudySummary) -> str:
    """What the results are computed on when runs cut volumes / cines into 2D samples (their params
    ``input``, ``slices``, ``aggregate``): items, never samples. Empty for a study of 2D items."""
    if not s.sampling:
        return ""
    several = len(s.sampling) > 1
    parts = ["The items are volumes or cines, cut into 2D slice / frame samples for the 2D networks, and every "
             "result is per item (volume / cine), never per sample: "
             + "; ".join(_sampling_setting(g, several) for g in s.sampling) + "."]
    tasks = {g.task for g in s.sampling}
    if "classification" in tasks:
        parts.append("The samples' predictions are aggregated into one prediction per item before validation "
                     "(checkpoint choice) and testing; each run's predictions.csv holds one row per tested item, "
                     "so the AUCs, their CIs, the DeLong tests and the Cases column count items.")
    if "segmentation" in tasks:
        parts.append("Segmentation Dice is per item too: per_case.csv holds one row per tested volume.")
    sliced = {cell for g in s.sampling for cell in g.cells}
    others = [c.cell for c in s.cells if c.cell not in sliced]
    if others:
        parts.append(f"The other cells ({', '.join(others)}) trained on 2D items, one image per sample.")
    return " ".join(parts)


def _roi_words(g: NativeInput) -> str:
    roi = "" if g.roi_size in ("", "None") else f" of {g.roi_size} voxels"
    grid = ("each volume on its own voxel grid (or the weights' spacing)" if g.spacing in ("", "None")
            else f"volumes resampled to {g.spacing} mm")
    return f"patches{roi}, {grid}"


def native_3d(s: StudySummary) -> str:
    """What the results of native 3D runs (``input: 3d``) are: per volume, from whole-volume predictions.
    Empty when no run was native 3D."""
    if not s.native:
        return ""
    several = len(s.native) > 1
    settings = "; ".join(_roi_words(g) + (f" (cells {', '.join(g.cells)})" if several else "") for g in s.native)
    parts = [f"The networks are native 3D (input 3d): they train on {settings}"]
    tasks = {g.task for g in s.native}
    if "segmentation" in tasks:
        parts[0] += (", random patches centred on foreground with the run's foreground ratio, and predict each "
                     "validation and test volume whole by sliding windows of the patch size (25 % overlap, Gaussian "
                     "blending); every result is per volume: per_case.csv holds one row per tested volume, and its "
                     "Dice is the mean of the foreground classes' Dice (a class absent from both prediction and truth "
                     "counts 1)")
    if "classification" in tasks:
        parts[0] += ("; classification resizes each whole volume to fit the patch size and predicts one "
                     "probability per volume")
    native = {cell for g in s.native for cell in g.cells}
    others = [c.cell for c in s.cells if c.cell not in native]
    text = parts[0] + "."
    if others:
        text += f" The other cells ({', '.join(others)}) trained 2D networks."
    return text


def class_methods(s: StudySummary) -> str:
    """How per-class Dice is summarised and compared."""
    pct = int(s.level * 100)
    parts = [f"Per class (segment; label value 1 … n of the mask volumes, named by the study's segments): mean ± SD "
             "over the cell's runs of each run's mean Dice of the class on its own test fold, and the mean per-case "
             f"Dice over all test folds (averaged over seeds per case) with a {pct} % percentile bootstrap CI "
             f"({s.n_resamples} resamples, seed {s.seed})."]
    if s.class_comparisons:
        parts.append("Cells that differ only in the weights source are compared per class on the cases both have by "
                     "the two-sided Wilcoxon signed-rank test on per-case Dice (averaged over seeds); A − B is "
                     "source A minus source B. These p-values are Holm-adjusted as their own family, apart from the "
                     "comparisons of the mean Dice.")
    return " ".join(parts)


def _patient_words(s: StudySummary) -> str:
    """Which resampling unit the classification CIs and tests used: patients where the predictions name them
    (the manifest's pseudonyms), else each item on its own."""
    cls = [c for c in s.cells if c.task == "classification"]
    named = [c for c in cls if c.n_patients is not None]
    if not named:
        if s.n_no_patient_column:
            return ("the runs' predictions name no patients (written by an earlier medxfer), so every item counts as "
                    "its own patient")
        return ("there are no patient pseudonyms in the predictions (the manifest names no patients): each item is "
                "its own unit, all seeds' predictions of it drawn together")
    several = [c for c in named if c.n_patients < c.n_cases]
    text = ("the unit is the patient (the manifest's pseudonym in predictions.csv): all items of a patient and all "
            "seeds' predictions of them are drawn together, within their class while every patient's items share a "
            "class, else unstratified (a resample lacking a class is skipped; the notes say how many)")
    if not several:
        text += "; here every patient has one item"
    if len(named) < len(cls) or any(c.n_without_patient for c in named):
        text += "; items without a patient pseudonym are each their own unit"
    return text


def methods(s: StudySummary) -> str:
    """How cells are scored and compared (pooled metric, CIs, tests, Holm, transfer scores, flags)."""
    tasks = {c.task for c in s.cells}
    multiclass = any(c.task == "classification" and c.n_classes not in (None, 2) for c in s.cells)
    pct = int(s.level * 100)
    parts = ["Each cell is one combination of grid values, trained once per cross-validation fold and seed.",
             "Mean ± SD is over the cell's runs, each scored on its own held-out test fold (sample SD)."]
    if s.sampling:
        parts.append(item_level(s))
    if s.native:
        parts.append(native_3d(s))
    if "classification" in tasks:
        parts.append(
            "The pooled out-of-fold (OOF) AUC is the AUC of the concatenated test-fold predictions of all folds "
            "(every item is tested once per seed); its " f"{pct} % CI is a stratified percentile bootstrap "
            f"({s.n_resamples} resamples, seed {s.seed}; positives and negatives resampled separately; "
            + _patient_words(s) + "). A pooled AUC well below the per-fold mean means "
            "the fold models rank cases well within their own test fold but their scores are not on a common "
            "scale (each fold's model is calibrated differently); the per-fold mean is the seed papers' figure, "
            "the pooled AUC the stricter one.")
    if "segmentation" in tasks:
        parts.append(
            "Pooled Dice is the mean per-case Dice over all test folds (averaged over seeds per case), with a "
            f"{pct} % percentile bootstrap CI of the mean ({s.n_resamples} resamples, seed {s.seed}).")
    parts.append("Cells that differ only in the weights source are compared pairwise on the cases both have:")
    tests = []
    if "classification" in tasks:
        tests.append("AUCs by DeLong's test for correlated ROC curves (probabilities averaged over seeds per item), "
                     "Obuchowski's clustered DeLong (structural components summed per patient) when a patient has "
                     "several of the compared items, as the Test column says with the number of patients; a class "
                     "with fewer than 2 cases (patients) gives no p-value")
        if multiclass:
            tests.append("macro one-vs-rest AUCs (more than two classes) by a paired bootstrap test: both cells "
                         f"scored on the same {s.n_resamples} resamples of the shared items (patients), z = difference "
                         "/ SD of the resampled differences, two-sided normal p (pROC roc.test, method bootstrap)")
    if "segmentation" in tasks:
        tests.append("Dice by the two-sided Wilcoxon signed-rank test on per-case Dice (averaged over seeds)")
    parts[-1] += " " + "; ".join(tests) + "."
    families = [name for name, present in (("per-class", s.class_comparisons), ("pooled-comparison", s.pooled),
                                           ("lesion-localization", s.loc_comparisons)) if present]
    if families:
        names = " and the ".join([", the ".join(families[:-1]), families[-1]] if len(families) > 1 else families)
        own = f"the {names} p-values form " + ("families" if len(families) > 1 else "a family")
        parts.append("The p-values of these comparisons are adjusted together with Holm's step-down method "
                     f"(p (Holm)); {own} of their own (see there).")
    else:
        parts.append("All p-values of this report are adjusted together with Holm's step-down method (p (Holm)).")
    parts.append("Transfer score = (source − scratch) / scratch × 100 on the pooled metric, against the scratch "
                 "cell with the same other grid values; positive means the pretrained source beat training from "
                 "scratch (van den Brandt et al. 2021). Transfer score (per fold) is the score as they compute it: the "
                 "score of each fold's test metric (seeds averaged) against the scratch cell's of the same fold, "
                 "mean ± SD over the folds; a fold in which scratch is itself a degenerate baseline (an AUC at or "
                 "below 0.5, constant predictions, a Dice of 0) is left out of that mean, as Notes says.")
    if multiclass:
        parts.append("With more than two classes the AUC is the macro one-vs-rest AUC (classes absent from the "
                     f"pooled items left out), with a {pct} % percentile bootstrap CI resampling as above, "
                     "stratified by class.")
    if any(c.flag or c.transfer_flag for c in s.cells):
        parts.append("Notes flags a degenerate cell — a run that predicted one probability for every item, or a "
                     "test AUC below 0.5 in most folds — and a transfer score against a degenerate scratch cell "
                     "(flagged itself, or a pooled AUC of exactly 0.5 or below chance): such a score reads n/a "
                     "(degenerate baseline) here; results.csv keeps it with the reason in transfer_flag.")
    return " ".join(parts)


def pooled_methods(s: StudySummary, specs: list[PooledSpec]) -> str:
    """How the pooled comparisons (the spec's ``compare``) pool runs and test pairs of values."""
    listed = "; ".join(f"{p.by} pooled over {', '.join(p.pool) + ', ' if p.pool else ''}folds and seeds"
                       for p in specs)
    return ("Each value of the compared grid key is summarised over all its runs in a group — the runs' own test "
            f"metric (each run scored on its held-out test fold), mean ± SD over runs ({listed}); a group is one "
            "combination of the grid keys neither compared nor pooled. Each pair of values is compared on matched "
            "runs — the same values of the pooled keys, the same fold and the same seed — by the two-sided "
            "Wilcoxon signed-rank test on the paired run metrics (exact below 50 pairs without ties or zero "
            "differences, else the normal approximation with continuity correction; as R wilcox.test); Pairs "
            "counts the matched runs, A and B are their means and A − B the mean paired difference. These p-values "
            "are Holm-adjusted as their own family, apart from the comparisons of cells. Runs of one fold share "
            "their test items, so the pairs are not fully independent: read p as descriptive.")


def loc_methods(s: StudySummary) -> str:
    """How lesion localization is scored (pointing game, Dice/IoU of the Grad-CAM map) and compared."""
    pct = int(s.level * 100)
    parts = [
        "Lesion localization is scored on the classification test cases with a non-empty lesion mask only: a "
        "Grad-CAM map of the positive class at the deepest encoder layer. Pointing game: a hit when the map's "
        "maximum (argmax) lies inside the lesion mask; the hit rate is the share of hits. Dice and IoU compare "
        "the map thresholded at 0.5 × its maximum with the mask.",
        "Per cell, hits, Dice and IoU are pooled over the scored cases of all folds (averaged over seeds per "
        f"case), with {pct} % percentile bootstrap CIs of the hit rate and of the mean Dice ({s.n_resamples} "
        f"resamples, seed {s.seed}); mean ± SD is over the cell's runs (each run's hit rate, mean Dice and mean "
        "IoU on its own test fold).",
    ]
    if s.loc_comparisons:
        parts.append(
            "Cells that differ only in the weights source are compared on the scored cases both have (matched by "
            "item): per-case Dice by the two-sided Wilcoxon signed-rank test, per-case hits by the exact McNemar "
            "test (two-sided binomial test of the discordant pairs; with several seeds a case's hit is the "
            "majority over seeds, cases tied over seeds are left out of it). A − B is source A minus source B "
            "(source − scratch). These p-values are Holm-adjusted as their own family, apart from the AUC "
            "comparisons.")
    return " ".join(parts)


def similarity_methods(s: StudySummary) -> str:
    """What the cohort distances are and how they are correlated with the transfer score."""
    sim = s.similarity
    tasks = {r.task for r in sim.rows}
    pooled = " / ".join(("pooled AUC" if t == "classification" else "pooled Dice") for t in sorted(tasks))
    setting = ", ".join(x for x in (f"{sim.encoder} encoder" if sim.encoder else "",
                                    f"{sim.weights} weights" if sim.weights else "",
                                    f"{sim.image_size} px" if sim.image_size else "") if x)
    target = f" ({sim.n_target} images)" if sim.n_target is not None else ""
    task2vec = ("; and the Task2Vec distance of the two tasks, images with their labels (Achille et al. 2019): the "
                "same network as the probe, a linear head fitted on each cohort's labels with the encoder frozen, "
                "the diagonal Fisher information of the encoder's weights for that task (expectation over the "
                "probe's predicted labels) averaged per filter, two embeddings compared by the normalised cosine "
                "distance" if "task2vec" in dict(sim_measures(sim.rows)) else "")
    return (
        "Dataset similarity (van den Brandt et al. 2021, \"Cats, not CAT scans\"): the cohort of each pretraining "
        f"source is compared with this study's cohort{target} on pooled features of one fixed network"
        f"{' (' + setting + ')' if setting else ''}: the Fréchet distance between Gaussians fitted to the two "
        "feature sets, the unbiased RBF-kernel MMD², and a distance of per-image intensity statistics"
        f"{task2vec}; for all, smaller = more similar. A source's transfer score is its relative gain in the "
        f"{pooled} over the scratch cell of the same group (as in the Cells table). Spearman's ρ between each "
        "distance and the transfer score across the sources of a group, with a two-sided p by exact permutation "
        "(all n! orderings) for up to 9 sources and the t approximation above; not adjusted for multiplicity "
        "(exploratory, few sources). The hypothesis that a more similar source transfers better predicts a "
        "negative ρ. With fewer than 3 sources ρ is undefined (n < 3).")


def clinical_methods(s: StudySummary) -> str:
    """How the operating point is chosen and the clinical metrics, confusion counts, Brier score and reliability
    data are computed."""
    pct = int(s.level * 100)
    return ("Operating point: each run chose its threshold on P(class 1) on its own validation fold, maximising "
            "Youden's J (sensitivity + specificity − 1; recorded in the run's metrics.json), and applied it to its "
            "test fold (a prediction at or above the threshold is positive). Per cell, TP, FP, FN and TN are summed "
            "over all folds and seeds, each prediction at its own run's threshold (an item counts once per seed), "
            f"and sensitivity, specificity, PPV and NPV are computed from these sums, with {pct} % Wilson score "
            "intervals clustered by patient: the sample size is divided by the design effect (the patient-clustered "
            "variance of the proportion, all items and seeds' predictions of a patient one cluster, over the "
            "binomial variance; at least 1), and a proportion of 0 or 1 counts each patient once (an item without "
            "a patient pseudonym is its own cluster). PPV and NPV depend "
            "on the cohort's prevalence (see Cohort). Runs that recorded no validation threshold are left out, as "
            "Runs and the notes say. The Brier score is the mean over the pooled predictions of (p − y)² for two "
            "classes and of Σₖ (pₖ − 1[y = k])² for more; cells with more than two classes get their confusion "
            "counts by the most probable class (argmax). The reliability (calibration) data bin the pooled "
            "P(class 1) into 10 equal-width bins: mean predicted probability against the "
            "observed fraction of class 1.")


def _count_words(c: CohortCounts) -> str:
    o = c.overall
    who = f"{o.n_patients} patients with {o.n_items} items" if o.n_patients is not None else f"{o.n_items} items"
    if c.n_classes == 2 and o.class_counts:
        who += f" ({o.class_counts[1]} positive, {o.class_counts[0]} negative)"
    elif c.n_classes and o.class_counts:
        who += " (" + ", ".join(f"{n} of class {k}" for k, n in enumerate(o.class_counts)) + ")"
    return who


def _split_words(c: CohortCounts) -> str:
    k = len(c.folds)
    if c.patient_split is None:
        unit = "by item (the predictions name no patients, so a patient-level split cannot be confirmed)"
    elif c.patient_split:
        unit = "at the patient level (no patient has items in two test folds)"
    else:
        unit = "by item (some patients have items in more than one test fold)"
    return (f"{k}-fold cross-validation, split {unit}; each fold served once as the test set, the next fold "
            "as the validation set (checkpoint choice and operating point) and the remaining folds for training")


AUGMENT_WORDS = ("random affine transforms (rotation up to ±0.15 rad, scaling ±10 %, translation ±8 px; probability "
                 "0.5) and gamma contrast changes (γ 0.8–1.25; probability 0.3), no flips")
SETTING_WORDS = {"epochs": "{} epochs", "batch_size": "batch size {}", "image_size": "images resized to {0} × {0} px",
                 "lr": "learning rate {}", "encoder_lr_scale": "encoder learning rate × {}",
                 "weight_decay": "weight decay {}", "dropout": "dropout {} before the head",
                 "class_weighting": "inverse-frequency class weights in the loss: {}", "freeze": "freezing {}"}


def _grid_words(s: StudySummary) -> str:
    values = {k: sorted({c.grid.get(k, "") for c in s.cells} - {""}) for k in s.grid_keys}
    return "; ".join(f"{k} ∈ {{{', '.join(v)}}}" for k, v in values.items() if v)


def _training_words(s: StudySummary) -> str:
    st = s.settings
    optimiser = st.get("optimizer", "").rsplit(".", 1)[-1] or "the bundle's optimiser (not recorded)"
    parts = [SETTING_WORDS[k].format(st[k]) for k in SETTING_WORDS if k in st and k not in ("lr", "freeze")]
    lr = f", learning rate {st['lr']}" if "lr" in st else ""
    text = f"{optimiser} optimiser{lr}; " + ", ".join(parts) if parts else f"{optimiser} optimiser{lr}"
    augment = st.get("augment", "")
    if augment.lower() == "true":
        text += f"; augmentation of the training images: {AUGMENT_WORDS}"
    elif augment.lower() == "false":
        text += "; no augmentation"
    elif augment:
        text += f"; augmentation {augment}"
    return text


def _pretrain_words(s: StudySummary) -> str:
    if not s.pretrain:
        return ""
    stages = []
    for p in s.pretrain:
        auc = f"test AUC {p.test_auc:.3f}" if p.test_auc == p.test_auc else "no test AUC recorded"
        n = f" on {p.n_test} test items" if p.n_test is not None else ""
        epochs = f", {p.epochs} epochs" if p.epochs else ""
        stages.append(f"{p.stage} for {p.encoder} (chain {p.chain or p.stage}, from {p.start}{epochs}): {auc}{n} "
                      "of its own source task")
    return ("Pretraining stages (each trained as a classification run on its own cohort and tested on that cohort's "
            "test fold, starting from the weights before it in its chain): " + "; ".join(stages) + ".")


def _statistics_words(s: StudySummary) -> str:
    pct = int(s.level * 100)
    tasks = {c.task for c in s.cells}
    parts = []
    if "classification" in tasks:
        parts.append(f"Discrimination is the pooled out-of-fold AUC (all test folds' predictions concatenated) with a "
                     f"{pct} % percentile bootstrap CI resampling patients (items where no patient is named; "
                     f"{s.n_resamples} resamples); weights "
                     "sources were compared by DeLong's test for correlated ROC curves (Obuchowski's clustered "
                     "version where a patient has several items; a paired bootstrap test of the macro one-vs-rest "
                     "AUC for more than two classes)")
        parts.append("The operating point was chosen on each run's validation fold by Youden's J and applied to its "
                     "test fold; sensitivity, specificity, PPV and NPV were pooled over folds and seeds with "
                     f"{pct} % Wilson intervals adjusted for clustering by patient (design effect), and calibration "
                     "assessed by the Brier score and "
                     "reliability diagrams (10 bins)")
    if "segmentation" in tasks:
        parts.append(f"Segmentation is scored by the mean per-case Dice with a {pct} % percentile bootstrap CI; "
                     "weights sources were compared by the Wilcoxon signed-rank test on per-case Dice")
    parts.append("p-values were adjusted for multiple comparisons by Holm's method; the transfer score is the "
                 "relative change of the pooled metric against training from scratch, (source − scratch) / scratch "
                 "× 100 (van den Brandt et al. 2021)")
    return ". ".join(parts) + "."


def paste_ready_methods(s: StudySummary) -> list[str]:
    """The methods as paragraphs a paper can take over: cohort and split, training, preprocessing per weights
    source, pretraining chain with each stage's source-task result, statistics, software versions."""
    out = []
    for c in s.cohort:
        task = "classification" if c.task == "classification" else "segmentation"
        out.append(f"The {task} cohort comprised {_count_words(c)}, evaluated by {_split_words(c)}. "
                   "Per test fold: " + "; ".join(
                       f"fold {f.fold}, {_count_words(CohortCounts(c.task, c.n_classes, [], f, None))}"
                       for f in c.folds) + ".")
    seeds = sorted({x for c in s.cells for x in c.seeds})
    training = (f"Each configuration ({_grid_words(s)}) was trained once per fold and seed "
                f"({len(seeds)} seed{'s' if len(seeds) != 1 else ''}): {_training_words(s)}. The checkpoint with "
                "the best validation AUC (Dice for segmentation) was tested.")
    if s.preprocessing:
        training += (" Input preprocessing per weights source (images first scaled to [0, 1]): "
                     + "; ".join(f"{w}: {words}" for w, words in s.preprocessing.items()) + ".")
    out.append(training)
    if s.pretrain:
        out.append(_pretrain_words(s))
    out.append(_statistics_words(s))
    names = {"medxfer": "medxfer", "monai": "MONAI", "torch": "PyTorch", "python": "Python"}
    versions = ", ".join(f"{names.get(k, k)} {v}" for k, v in s.software.items() if v)
    if versions:
        out.append(f"Software: {versions} ({s.software_source}).")
    return out
