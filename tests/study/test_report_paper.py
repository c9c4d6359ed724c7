"""Study report, issue 18 ("a report a paper can use"): cohort counts, clinical metrics at the operating point each
run chose on validation (with patient-level CIs), confusion counts, Brier score and reliability data, and the
paste-ready methods.

The study is fabricated in a SQLite MLflow store (no training); every count and rate is recomputed here by hand
from what was fabricated."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from medxfer.study import report as rep
from medxfer.study.report.csv_export import write_calibration_csv, write_cohort_csv
from medxfer.study.report.model import ChildRun, StudyRuns
from medxfer.study.report.summarize import brier_score, calibration_bins, clustered_wilson
from tests.study.conftest import FabricatedStudy

STUDY = "paper-demo"
FOLDS, SEEDS = (0, 1, 2), (0, 1)
SOURCES = {"imagenet": 1.5, "scratch": 0.6}  # signal per weights source
N_PATIENTS = 18  # patients 0..5 have two items, the others one: 24 items
VERSIONS = {"medxfer": "0.1.0", "monai": "1.4.0", "torch": "2.5.1", "python": "3.11.9"}
SKIPPED_RUN = ("scratch", 2, 1)  # (weights, fold, seed) of the run that logs no metrics.json


def _cohort():
    """Item ids, patient, label and test fold of the fabricated cohort (a patient's items share label and fold)."""
    patient = np.array([p for p in range(N_PATIENTS) for _ in range(2 if p < 6 else 1)])
    return (np.array([f"it{i:02d}" for i in range(patient.size)]), patient, (patient * 7 % 5 < 2).astype(int),
            patient % 3)


def _threshold(weights: str, fold: int, seed: int) -> float:
    return round(0.3 + 0.1 * fold + 0.05 * seed + (0.02 if weights == "scratch" else 0.0), 4)


@pytest.fixture(scope="module")
def study(tmp_path_factory, migrated_mlflow_db):
    """imagenet and scratch × 3 folds × 2 seeds of one encoder; each run logs metrics.json with its own validation
    threshold (but one), params (settings, preprocessing, software versions) and the first its bundle config; a
    pretraining stage run of the study with its source-task AUC."""
    import mlflow

    tmp = tmp_path_factory.mktemp("paper")
    shutil.copyfile(migrated_mlflow_db, tmp / "mlflow.db")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    items, patient, y, fold_of = _cohort()
    rng = np.random.default_rng(5)
    probs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        client = mlflow.MlflowClient(tracking_uri=uri)
        fab = FabricatedStudy(client, STUDY, tmp / "staging", grid_keys=("encoder", "weights"))
        first = True
        for w, signal in SOURCES.items():
            for seed in SEEDS:
                p = np.round(1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, y.size)))), 6)
                for k in FOLDS:
                    idx = np.flatnonzero(fold_of == k)
                    probs[w, k, seed] = (idx, p[idx])
                    rows = [{"item_id": items[i], "patient": f"pat-{patient[i]:03d}", "fold": k, "label": "c",
                             "y": int(y[i]), "p_a": f"{1 - p[i]:.6f}", "p_b": f"{p[i]:.6f}", "p": f"{p[i]:.6f}"}
                            for i in idx]
                    run = fab.child({"encoder": "resnet18", "weights": w}, k, seed, rows, 0.7)
                    folder = tmp / "staging" / run
                    params = {"epochs": "12", "batch_size": "16", "image_size": "224", "lr": "0.001",
                              "augment": "True", "preprocessing.mode": "torch" if w == "imagenet" else "none",
                              "preprocessing.channel_order": "RGB",
                              **{f"software.{n}": v for n, v in VERSIONS.items()}}
                    for key, value in params.items():
                        client.log_param(run, key, value)
                    if (w, k, seed) != SKIPPED_RUN:
                        record = {"metrics": {"test_auc": float("nan")}, "youden_threshold_source": "validation",
                                  "youden_thresholds": [_threshold(w, k, seed)], "config": {"weight_decay": 0.0001}}
                        (folder / "metrics.json").write_text(json.dumps(record))
                        client.log_artifact(run, str(folder / "metrics.json"))
                    if first:
                        (folder / "bundle_configs").mkdir()
                        bundle = {"optimizer": {"_target_": "torch.optim.AdamW", "lr": "@lr"}}
                        (folder / "bundle_configs" / "train.json").write_text(json.dumps(bundle))
                        client.log_artifact(run, str(folder / "bundle_configs" / "train.json"), "bundle_configs")
                        first = False
        stage = client.create_run(fab.experiment, run_name="pretrain/chest/resnet18", tags={
            "medxfer.study": STUDY, "medxfer.role": "pretrain", "config_hash": "stagehash", "medxfer.stage": "chest",
            "medxfer.chain": "imagenet → chest", "encoder": "resnet18"}).info.run_id
        client.log_param(stage, "weights", "imagenet")
        client.log_param(stage, "data.n_test", "40")
        client.log_metric(stage, "test_auc", 0.8125)
        client.set_terminated(stage, "FINISHED")
        runs = rep.collect_study(STUDY)
        summary = rep.summarize(runs, n_resamples=400, seed=3)
        paths = rep.write_report(summary, tmp / "report")
    yield {"summary": summary, "paths": paths, "probs": probs, "items": items, "patient": patient, "y": y,
           "fold": fold_of}


def test_cohort_counts_equal_the_fabricated_cohorts(study):
    items, patient, y, fold_of = study["items"], study["patient"], study["y"], study["fold"]
    (counts,) = study["summary"].cohort
    assert counts.task == "classification" and counts.n_classes == 2 and counts.patient_split is True
    assert [f.fold for f in counts.folds] == ["0", "1", "2"]
    for f in counts.folds:
        k = int(f.fold)
        assert f.n_items == int((fold_of == k).sum())
        assert f.n_patients == len(set(patient[fold_of == k]))
        assert f.class_counts == [int(((fold_of == k) & (y == 0)).sum()), int(((fold_of == k) & (y == 1)).sum())]
    o = counts.overall
    assert (o.n_items, o.n_patients, o.class_counts) == (items.size, N_PATIENTS, [int((y == 0).sum()), int(y.sum())])
    path = study["paths"]["report.md"].parent / "cohort.csv"
    write_cohort_csv(study["summary"], path)
    rows = list(csv.DictReader(open(path, newline="")))
    assert [(r["fold"], r["n_patients"], r["n_items"], r["n_class_1"]) for r in rows][-1] == (
        "all", str(N_PATIENTS), str(items.size), str(int(y.sum())))
    md = study["paths"]["report.md"].read_text()
    assert "## Cohort" in md
    assert f"| all | {N_PATIENTS} | {items.size} | {int((y == 0).sum())} | {int(y.sum())} |" in md


def test_sensitivity_and_specificity_equal_a_hand_computation_at_each_runs_threshold(study):
    y = study["y"]
    by_cell = {c.grid["weights"]: c for c in study["summary"].cells}
    for w in SOURCES:
        tp = fp = fn = tn = 0
        for (ww, k, seed), (idx, p) in study["probs"].items():
            if ww != w or (ww, k, seed) == SKIPPED_RUN:
                continue
            called = p >= _threshold(w, k, seed)
            truth = y[idx] == 1
            tp += int((called & truth).sum())
            fp += int((called & ~truth).sum())
            fn += int((~called & truth).sum())
            tn += int((~called & ~truth).sum())
        m = by_cell[w].clinical
        assert (m.tp, m.fp, m.fn, m.tn) == (tp, fp, fn, tn)
        assert m.sensitivity.value == pytest.approx(tp / (tp + fn))
        assert m.specificity.value == pytest.approx(tn / (tn + fp))
        assert m.ppv.value == pytest.approx(tp / (tp + fp))
        assert m.npv.value == pytest.approx(tn / (tn + fn))
        for rate in (m.sensitivity, m.specificity, m.ppv, m.npv):
            assert 0 <= rate.low <= rate.value <= rate.high <= 1 and rate.low < rate.high
        assert by_cell[w].confusion == [[tn, fp], [fn, tp]]
        expected_runs = 5 if w == "scratch" else 6
        assert (m.n_runs, m.n_runs_without) == (expected_runs, 6 - expected_runs)
        thresholds = [_threshold(w, k, s) for k in FOLDS for s in SEEDS if (w, k, s) != SKIPPED_RUN]
        assert (m.threshold_min, m.threshold_max) == (min(thresholds), max(thresholds))
    rows = {r["weights"]: r for r in csv.DictReader(open(study["paths"]["results.csv"], newline=""))}
    m = by_cell["imagenet"].clinical
    assert rows["imagenet"]["tp"] == str(m.tp) and float(rows["imagenet"]["sensitivity"]) == m.sensitivity.value
    md = study["paths"]["report.md"].read_text()
    assert "## Clinical metrics at the validation operating point" in md
    assert f"| resnet18 | imagenet | 6 | {min(thresholds) - 0.02:.3f}–" in md  # imagenet's own thresholds' range
    assert "| resnet18 | scratch | 5 of 6 |" in md
    assert any("1 of 6 run(s) recorded no validation operating point" in n for n in study["summary"].notes)


def test_brier_score_and_reliability_bins_of_the_pooled_predictions(study):
    y = study["y"]
    cell = next(c for c in study["summary"].cells if c.grid["weights"] == "imagenet")
    truth = np.concatenate([y[idx] for (w, _, _), (idx, _) in study["probs"].items() if w == "imagenet"])
    p = np.concatenate([p for (w, _, _), (_, p) in study["probs"].items() if w == "imagenet"])
    assert cell.brier == pytest.approx(np.mean((p - truth) ** 2))
    edges = np.linspace(0, 1, 11)
    expected = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (p >= lo) & ((p < hi) | (hi == 1.0))
        if inside.any():
            expected.append((p[inside].mean(), truth[inside].mean(), int(inside.sum())))
    assert len(cell.calibration) == len(expected)
    for got, want in zip(cell.calibration, expected):
        assert got == pytest.approx(want)
    path = study["paths"]["report.md"].parent / "calibration.csv"
    write_calibration_csv(study["summary"], path)
    rows = [r for r in csv.DictReader(open(path, newline="")) if r["weights"] == "imagenet"]
    assert [int(r["n"]) for r in rows] == [n for _, _, n in expected]


def test_paste_ready_methods_name_cohort_split_settings_pretraining_and_versions(study):
    md = study["paths"]["report.md"].read_text()
    assert "## Methods (paste-ready)" in md
    text = md.split("## Methods (paste-ready)", 1)[1].split("\n## ", 1)[0]
    y = study["y"]
    n_pos, n_neg = int(y.sum()), int((y == 0).sum())
    assert f"{N_PATIENTS} patients with {y.size} items ({n_pos} positive, {n_neg} negative)" in text
    assert "3-fold cross-validation, split at the patient level" in text
    for words in ("AdamW optimiser, learning rate 0.001", "12 epochs", "batch size 16",
                  "images resized to 224 × 224 px", "weight decay 0.0001", "random affine",
                  "imagenet: torch, RGB channels", "scratch: none",
                  "chest for resnet18 (chain imagenet → chest, from imagenet): test AUC 0.812 on 40 test items",
                  "Youden's J", "Holm"):
        assert words in text, words
    assert ("Software: medxfer 0.1.0, MONAI 1.4.0, PyTorch 2.5.1, Python 3.11.9 (as the runs logged them)."
            in text)


def _run(cell: str, fold: str, y: list[int], prob: list[list[float]]) -> ChildRun:
    return ChildRun(run_id=f"{cell}-{fold}", name=f"{cell}/fold{fold}", cell=cell, task="classification",
                    grid={"weights": cell}, fold=fold, seed="0", metric=0.7,
                    item_id=np.array([f"{fold}-{i}" for i in range(len(y))], dtype=object), y=np.array(y),
                    prob=np.array(prob, dtype=float))


def test_multi_class_cells_get_argmax_confusion_counts_and_the_brier_score():
    runs = [_run("imagenet", "0", [0, 1, 2, 2], [[.7, .2, .1], [.1, .8, .1], [.2, .5, .3], [.1, .1, .8]]),
            _run("imagenet", "1", [0, 1, 2], [[.3, .6, .1], [.2, .7, .1], [.1, .2, .7]])]
    s = rep.summarize(StudyRuns(name="mc", experiment_id=None, parent_run_id=None, grid_keys=["weights"], runs=runs),
                      n_resamples=50)
    (cell,) = s.cells
    assert cell.confusion_rule == "argmax" and cell.clinical is None
    assert cell.confusion == [[1, 1, 0], [0, 2, 0], [0, 1, 2]]
    prob = np.concatenate([r.prob for r in runs])
    onehot = np.eye(3)[np.concatenate([r.y for r in runs])]
    assert cell.brier == pytest.approx(np.mean(((prob - onehot) ** 2).sum(1)))
    assert [f.class_counts for f in s.cohort[0].folds] == [[1, 1, 2], [1, 1, 1]]
    assert s.cohort[0].patient_split is None  # no patient names: the split cannot be confirmed


def _wilson(x: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval as textbooks write it (Agresti & Coull 1998, eq. 2)."""
    p = x / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_clustered_wilson_is_wilson_for_independent_units_and_wider_for_clusters():
    # one row per patient: Wilson's interval itself (80 of 100: [0.711, 0.867])
    low, high = clustered_wilson(np.array([1.0] * 80 + [0.0] * 20), np.ones(100))
    assert (low, high) == pytest.approx(_wilson(80, 100), abs=1e-9)
    assert (low, high) == pytest.approx((0.7112, 0.8666), abs=1e-4)
    # the same 100 predictions as 10 patients of 10 identical predictions: 10 patients' worth of information
    low, high = clustered_wilson(np.array([10.0] * 8 + [0.0] * 2), np.full(10, 10.0))
    assert (low, high) == pytest.approx(_wilson(8, 10), abs=1e-9)
    # all positive: no variance to estimate a design effect from, each patient counts once (20 rows, 10 patients)
    assert clustered_wilson(np.full(10, 2.0), np.full(10, 2.0)) == pytest.approx(_wilson(10, 10), abs=1e-9)
    assert all(np.isnan(clustered_wilson(np.zeros(3), np.zeros(3))))


def test_brier_and_calibration_helpers_on_a_small_example():
    y, p = np.array([0, 1, 1, 0]), np.array([0.05, 0.95, 0.55, 0.5])
    assert brier_score(y, np.column_stack([1 - p, p])) == pytest.approx(np.mean((p - y) ** 2))
    assert calibration_bins(y, p) == [(0.05, 0.0, 1), (0.525, 0.5, 2), (0.95, 1.0, 1)]
    assert calibration_bins(np.array([1]), np.array([1.0])) == [(1.0, 1.0, 1)]  # p = 1 in the last bin

