"""Study report, issue 15: pooled comparisons of a grid key (the spec's ``compare``, or ``--compare``), the
per-fold transfer score, flags of degenerate cells and scratch baselines, and patient-level statistics.

The studies are fabricated in a SQLite MLflow store (no training) and every number the report prints is
recomputed here independently (scipy, sklearn, numpy) from what was fabricated."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from medxfer.cli import main
from medxfer.study import report as rep
from medxfer.study import stats
from medxfer.study.report.collect import parse_compare
from medxfer.study.spec import SpecError, parse_spec
from tests.study.conftest import FabricatedStudy, fabricated_store, write_manifest

STUDY = "pooled-demo"
ENCODERS = ("resnet18", "densenet121")
SOURCES = ("imagenet", "radimagenet")
FOLDS, SEEDS = (0, 1, 2), (0, 1)
N_PATIENTS = 24  # two items each: 48 items, 16 per test fold
SPEC = f"name: {STUDY}\ncompare:\n  - {{by: weights, pool: [encoder, freeze]}}  # the dental study's comparison\n"
# signal per weights source and freeze; radimagenet weaker than imagenet, scratch weakest
SIGNAL = {("imagenet", "none"): 1.4, ("imagenet", "all"): 1.0, ("radimagenet", "none"): 1.0,
          ("radimagenet", "all"): 0.7, ("scratch", "none"): 0.4}


def _cells():
    """(encoder, weights, freeze) of the grid as run: scratch with freeze none only (a sparse grid)."""
    for enc in ENCODERS:
        for w, freeze in SIGNAL:
            yield enc, w, freeze


def _item(i: int) -> str:
    return f"item{i:03d}"


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(tmp_path_factory, migrated_mlflow_db):
    """Two encoders × {imagenet, radimagenet} × freeze {none, all} plus scratch × freeze none, 3 folds, 2 seeds;
    two items per patient (patient-level labels and folds); the parent's spec.yaml asks to compare weights
    pooled over encoder and freeze. Yields the fabricated truths and the report's paths."""
    tmp = tmp_path_factory.mktemp("pooled")
    with fabricated_store(tmp, migrated_mlflow_db) as client:
        fab = FabricatedStudy(client, STUDY, tmp / "staging", spec_text=SPEC)
        patient = np.repeat(np.arange(N_PATIENTS), 2)
        y = patient % 2  # a patient's items share the label …
        fold_of = patient % 3  # … and the fold
        rng = np.random.default_rng(11)
        difficulty = rng.normal(0, 0.8, N_PATIENTS)[patient]
        metrics, probs = {}, {}
        for enc, w, freeze in _cells():
            for seed in SEEDS:
                p = np.round(1 / (1 + np.exp(-(SIGNAL[w, freeze] * (2 * y - 1) + difficulty
                                               + rng.normal(0, 1, y.size)))), 6)
                probs[enc, w, freeze, seed] = p
                for k in FOLDS:
                    idx = np.flatnonzero(fold_of == k)
                    rows = [{"item_id": _item(i), "patient": f"pat-{patient[i]:04x}", "fold": k, "label": "c",
                             "y": int(y[i]), "p_a": f"{1 - p[i]:.6f}", "p_b": f"{p[i]:.6f}", "p": f"{p[i]:.6f}"}
                            for i in idx]
                    metrics[enc, w, freeze, k, seed] = roc_auc_score(y[idx], p[idx])
                    fab.child({"encoder": enc, "weights": w, "freeze": freeze, "lr": "0.001"}, k, seed, rows,
                              metrics[enc, w, freeze, k, seed])
        paths = rep.build_report(STUDY, out_dir=tmp / "report", n_resamples=300)
        yield {"paths": paths, "metrics": metrics, "probs": probs, "y": y, "patient": patient, "tmp": tmp,
               "parent": fab.parent}


def test_pooled_means_and_wilcoxon_match_an_independent_computation(study):
    m = study["metrics"]
    rows = [r for r in _read(study["paths"]["comparisons.csv"]) if r["metric"] == "pooled test_auc"]
    assert [(r["source_a"], r["source_b"]) for r in rows] == [
        ("imagenet", "radimagenet"), ("imagenet", "scratch"), ("radimagenet", "scratch")]
    p_values = []
    for r in rows:
        assert r["group"] == "weights, pooled over encoder, freeze: lr=0.001" and r["cell_a"] == r["cell_b"] == ""
        # matched runs: same encoder, freeze, fold and seed (scratch has freeze none only)
        keys = [(e, f, k, s) for e in ENCODERS for f in ("none", "all") for k in FOLDS for s in SEEDS
                if (e, r["source_a"], f, k, s) in m and (e, r["source_b"], f, k, s) in m]
        a = np.array([m[(e, r["source_a"], f, k, s)] for e, f, k, s in keys])
        b = np.array([m[(e, r["source_b"], f, k, s)] for e, f, k, s in keys])
        assert r["n_cases"] == str(len(keys)) == ("24" if r["source_b"] == "radimagenet" else "12")
        assert float(r["a"]) == pytest.approx(a.mean()) and float(r["b"]) == pytest.approx(b.mean())
        assert float(r["difference"]) == pytest.approx((a - b).mean())
        # R's wilcox.test rule: exact below 50 non-zero differences without ties, else the normal approximation
        # with continuity correction (scipy corrects only when asked)
        d = (a - b)[a != b]
        exact = d.size < 50 and np.unique(np.abs(d)).size == d.size and d.size == a.size
        expected = sps.wilcoxon(a, b, method="exact" if exact else "approx", correction=not exact).pvalue
        assert float(r["p"]) == pytest.approx(expected, rel=1e-9)
        assert r["test"] == "Wilcoxon signed-rank (matched runs)"
        p_values.append(expected)
    order = np.argsort(p_values)  # Holm over the section's three pairs, by hand
    holm = np.minimum(1, np.maximum.accumulate([(3 - j) * p_values[i] for j, i in enumerate(order)]))
    for j, i in enumerate(order):
        assert float(rows[i]["p_holm"]) == pytest.approx(holm[j], rel=1e-9)
    assert float(rows[0]["p"]) != float(rows[0]["p_holm"])  # not the cell comparisons' family

    md = study["paths"]["report.md"].read_text()
    assert "## Pooled comparisons" in md and "### Weights, pooled over encoder, freeze" in md
    assert md.index("## Comparisons") < md.index("## Pooled comparisons") < md.index("## Figures")
    for w in (*SOURCES, "scratch"):  # per value: mean ± SD over every pooled run (runs' own test AUC)
        values = [v for (e, ww, f, k, s), v in m.items() if ww == w]
        line = f"| lr=0.001 | {w} | {len(values)} | {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} |"
        assert line in md
    assert "Wilcoxon signed-rank test on the paired run metrics" in md and "pooled-comparison" in md
    page = study["paths"]["report.html"].read_text()
    assert '<table id="pooled-1">' in page and '<table id="pooled-1-tests">' in page


def test_per_fold_transfer_score_as_cats_scans_computes_it(study):
    m = study["metrics"]
    rows = {r["cell"]: r for r in _read(study["paths"]["results.csv"])}
    noted = 0
    for enc in ENCODERS:
        for w in SOURCES:
            r = rows[f"classification/{enc}/{w}/none/0.001"]
            # each fold's AUC (seeds averaged) against scratch's of the same fold, then mean ± SD over folds;
            # a fold where scratch is at or below chance is left out (weak scratch, 16 items a fold: it happens)
            per_fold, left_out = [], []
            for k in FOLDS:
                src = np.mean([m[enc, w, "none", k, s] for s in SEEDS])
                base = np.mean([m[enc, "scratch", "none", k, s] for s in SEEDS])
                if base <= 0.5:
                    left_out.append(str(k))
                else:
                    per_fold.append((src - base) / base * 100)
            assert float(r["transfer_score_fold_mean"]) == pytest.approx(np.mean(per_fold), abs=1e-9)
            assert float(r["transfer_score_fold_sd"]) == pytest.approx(np.std(per_fold, ddof=1), abs=1e-9)
            assert r["transfer_folds"] == str(len(per_fold)) and r["transfer_flag"] == "" and r["flag"] == ""
            assert r["transfer_fold_note"] == ("" if not left_out else (
                f"per-fold: {len(left_out)} of 3 folds left out (scratch at or below chance in "
                f"fold{'s' if len(left_out) > 1 else ''} {', '.join(left_out)})"))
            noted += bool(left_out)
            assert r["transfer_score"] != ""  # the pooled one stays beside it
            frozen = rows[f"classification/{enc}/{w}/all/0.001"]  # no scratch cell with freeze all
            assert frozen["transfer_score"] == frozen["transfer_score_fold_mean"] == frozen["transfer_folds"] == ""
    assert noted  # the fabricated study has a scratch fold below chance
    md = study["paths"]["report.md"].read_text()
    assert "Transfer score (per fold)" in md and "| Notes |" in md
    assert all(r["flag"] == r["transfer_flag"] == "" for r in rows.values())  # nothing degenerate as a whole


def test_two_items_per_patient_use_the_clustered_delong_and_patient_bootstrap(study):
    y, patient, probs = study["y"], study["patient"], study["probs"]
    rows = {(r["group"], r["source_a"], r["source_b"]): r for r in _read(study["paths"]["comparisons.csv"])
            if r["metric"] == "AUC"}
    r = rows["encoder=resnet18, freeze=none, lr=0.001", "imagenet", "scratch"]
    assert r["test"] == f"DeLong (Obuchowski clustered by patient, {N_PATIENTS} patients)"
    # probabilities averaged over seeds per item, patients as clusters
    a = np.mean([probs["resnet18", "imagenet", "none", s] for s in SEEDS], axis=0)
    b = np.mean([probs["resnet18", "scratch", "none", s] for s in SEEDS], axis=0)
    clustered = stats.delong_test(y, a, b, clusters=patient)
    assert float(r["a"]) == pytest.approx(roc_auc_score(y, a)) and float(r["b"]) == pytest.approx(roc_auc_score(y, b))
    assert float(r["p"]) == pytest.approx(clustered.p_value, rel=1e-9)
    assert clustered.p_value != pytest.approx(stats.delong_test(y, a, b).p_value, rel=1e-3)  # it matters
    cells = {c["cell"]: c for c in _read(study["paths"]["results.csv"])}
    cell = cells["classification/resnet18/imagenet/none/0.001"]
    assert cell["n_cases"] == "48" and cell["n_patients"] == str(N_PATIENTS)
    # the CI resamples patients: all items and both seeds' rows of a patient together
    rows_y = np.concatenate([y, y])
    rows_p = np.concatenate([probs["resnet18", "imagenet", "none", s] for s in SEEDS])
    lo, hi = stats.bootstrap_auc_ci(rows_y, rows_p, n_resamples=300, seed=0, clusters=np.concatenate([patient] * 2))
    assert (float(cell["ci_low"]), float(cell["ci_high"])) == pytest.approx((lo, hi), abs=1e-12)
    md = study["paths"]["report.md"].read_text()
    assert f"| 48 ({N_PATIENTS} patients) |" in md and "the unit is the patient" in md
    assert "Obuchowski's clustered DeLong" in md
    assert "no patient column" not in md and "pat-" not in md  # patient pseudonyms never reach the report


def test_compare_from_the_command_line_instead_of_the_spec(study, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["study", "report", STUDY, "--compare", "freeze", "--pool", "encoder",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [r for r in _read(out / "comparisons.csv") if r["metric"] == "pooled test_auc"]
    # groups: weights × lr; scratch has freeze none only, so nothing to pair there
    assert [(r["group"], r["source_a"], r["source_b"], r["n_cases"]) for r in rows] == [
        (f"freeze, pooled over encoder: weights={w}, lr=0.001", "all", "none", "12") for w in SOURCES]
    m = study["metrics"]
    keys = list(itertools.product(ENCODERS, FOLDS, SEEDS))
    a = [m[e, "imagenet", "all", k, s] for e, k, s in keys]
    b = [m[e, "imagenet", "none", k, s] for e, k, s in keys]
    assert float(rows[0]["difference"]) == pytest.approx(np.mean(np.subtract(a, b)))
    assert "weights, pooled over" not in (out / "report.md").read_text()  # the spec's compare is replaced
    bad = CliRunner().invoke(main, ["study", "report", STUDY, "--compare", "optimizer", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "'optimizer' is not a grid key of the study" in bad.output
    lonely = CliRunner().invoke(main, ["study", "report", STUDY, "--pool", "encoder"])
    assert lonely.exit_code == 2 and "--pool needs --compare" in lonely.output


def test_compare_in_the_spec_is_validated(tmp_path):
    manifest = write_manifest(tmp_path, {"y": lambda i: i % 2})
    raw = {"name": "s", "data": {"manifest": str(manifest), "label": "y"}, "bundle": "classification",
           "grid": {"encoder": ["resnet18", "densenet121"], "weights": ["scratch", "imagenet"],
                    "freeze": ["none", "all"]}, "train": {"epochs": 1}}
    spec = parse_spec({**raw, "compare": [{"by": "weights", "pool": ["encoder", "freeze"]}]})
    assert spec.compare == [{"by": "weights", "pool": ["encoder", "freeze"]}]
    assert parse_spec({**raw, "compare": {"by": "freeze", "pool": "encoder"}}).compare == [
        {"by": "freeze", "pool": ["encoder"]}]
    assert spec.spec_hash() == parse_spec(raw).spec_hash()  # what the report shows, not what runs
    for bad, message in (({"by": "lr"}, r"compare\[0\]\.by: 'lr' is not a grid key"),
                         ({"by": "weights", "pool": ["weights"]}, r"compare\[0\]\.pool: \['weights'\]"),
                         ({"by": "weights", "pool": ["depth"]}, r"compare\[0\]\.pool: \['depth'\]"),
                         ({"by": "weights", "pooled": ["encoder"]}, r"unknown keys \['pooled'\].*did you mean 'pool'"),
                         ({"pool": ["encoder"]}, r"compare\[0\]\.by is required"),
                         ("weights", r"compare\[0\] is not a mapping")):
        with pytest.raises(SpecError, match=message):
            parse_spec({**raw, "compare": [bad]})
    # what the report reads back from the parent run's spec.yaml
    assert parse_compare([{"by": "weights", "pool": "encoder"}]) == [rep.PooledSpec("weights", ("encoder",))]
    assert rep.PooledSpec("weights", ("encoder",)).problem(["encoder", "weights"]) is None
    assert "not a grid key" in rep.PooledSpec("lr").problem(["encoder", "weights"])
    with pytest.raises(ValueError):
        parse_compare([{"by": "weights", "extra": 1}])


# ------------------------------------------------------------------------------------------------
# degenerate cells and baselines, in memory
# ------------------------------------------------------------------------------------------------
def _run(cell: str, weights: str, fold: int, y, p, metric: float, patient=None, seed: int = 0) -> rep.ChildRun:
    y = np.asarray(y)
    p = np.asarray(p, dtype=float)
    prob = p if p.ndim == 2 else np.c_[1 - p, p]
    return rep.ChildRun(run_id=f"{cell}-{fold}-{seed}", name=f"{cell}/fold{fold}/seed{seed}", cell=cell,
                        task="classification", grid={"encoder": "e", "weights": weights}, fold=str(fold),
                        seed=str(seed), metric=metric, item_id=np.array([f"f{fold}i{i}" for i in range(len(y))],
                                                                         dtype=object),
                        y=y, prob=prob, patient=None if patient is None else np.asarray(patient, dtype=object))


Y = np.arange(20) % 2
GOOD = np.linspace(0.1, 0.9, 20) * 0.3 + Y * 0.5  # separates the classes well
BAD = np.linspace(0, 0.5, 20) + 0.6 - Y * 0.2  # ranks most negatives above positives: AUC about 0.3
SCRATCH = {  # scratch cell's two folds: (probabilities, logged test AUC), and the flag the pretrained cell gets
    "constant": ((np.full(20, 0.5), GOOD), (0.5, roc_auc_score(Y, GOOD)),
                 "degenerate scratch baseline: constant predictions in 1 of 2 run(s) (fold0/seed0)"),
    "below chance": ((BAD, BAD), (roc_auc_score(Y, BAD),) * 2,
                     "degenerate scratch baseline: AUC below 0.5 in 2 of 2 folds"),
    "chance": ((np.tile([0.2, 0.2, 0.8, 0.8], 5), np.tile([0.2, 0.2, 0.8, 0.8], 5)), (0.6, 0.6),
               "degenerate scratch baseline: pooled AUC exactly 0.5 (chance)"),
}


@pytest.mark.parametrize("kind", list(SCRATCH))
def test_a_transfer_score_against_a_degenerate_scratch_baseline_is_flagged(kind, tmp_path):
    (p0, p1), (m0, m1), flag = SCRATCH[kind]
    runs = [_run("classification/e/imagenet", "imagenet", k, Y, GOOD, roc_auc_score(Y, GOOD)) for k in (0, 1)]
    runs += [_run("classification/e/scratch", "scratch", 0, Y, p0, m0),
             _run("classification/e/scratch", "scratch", 1, Y, p1, m1)]
    s = rep.summarize(rep.StudyRuns("degenerate", None, None, ["encoder", "weights"], runs), n_resamples=100)
    source, scratch = s.cells
    assert source.transfer_flag == flag and source.flag == ""
    assert scratch.flag == flag.removeprefix("degenerate scratch baseline: ").removeprefix("pooled AUC exactly 0.5 "
                                                                                            "(chance)")
    expected = (source.pooled - scratch.pooled) / scratch.pooled * 100
    assert source.transfer_score == pytest.approx(expected)  # kept, but flagged
    paths = rep.write_report(s, tmp_path / "r")
    row = _read(paths["results.csv"])[0]
    assert row["transfer_flag"] == flag and float(row["transfer_score"]) == pytest.approx(expected)
    md = paths["report.md"].read_text()
    assert "| n/a (degenerate baseline) | n/a (degenerate baseline) |" in md  # the pooled and the per-fold one
    assert f"| {flag} |" in md and "Notes flags a degenerate cell" in md


def test_constant_predictions_flag_the_cell_itself(tmp_path):
    runs = [_run("classification/e/imagenet", "imagenet", k, Y, np.full(20, 0.3), 0.5) for k in (0, 1)]
    runs += [_run("classification/e/scratch", "scratch", k, Y, GOOD, roc_auc_score(Y, GOOD)) for k in (0, 1)]
    s = rep.summarize(rep.StudyRuns("flat", None, None, ["encoder", "weights"], runs), n_resamples=100)
    source, scratch = s.cells
    assert source.flag == "constant predictions in 2 of 2 run(s) (fold0/seed0, fold1/seed0)"
    assert scratch.flag == "" and source.transfer_flag == ""
    md = rep.write_report(s, tmp_path / "r")["report.md"].read_text()
    assert f"| {source.flag} |" in md


def test_multiclass_with_patients_gets_clustered_cis_and_tests():
    """3 classes, two items per patient: macro OvR AUC with a patient bootstrap CI, compared by the paired
    bootstrap resampling patients (Holm with the others); "fewer than 2" when a class is too small."""
    rng = np.random.default_rng(2)
    n = 60
    y = (np.arange(n) // 2) % 3  # a patient's two items share the class
    patient = [f"pat{i // 2}" for i in range(n)]
    runs = []
    for w, signal in (("imagenet", 2.0), ("scratch", 0.6)):
        logits = rng.normal(0, 1, (n, 3)) + signal * np.eye(3)[y]
        prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        runs.append(_run(f"classification/e/{w}", w, 0, y, prob, 0.7, patient=patient))
    s = rep.summarize(rep.StudyRuns("mc", None, None, ["encoder", "weights"], runs), n_resamples=200)
    for c in s.cells:
        assert c.ci_low < c.pooled < c.ci_high and c.n_patients == 30 and c.n_cases == 60
    (cmp_,) = s.comparisons
    assert cmp_.test == "paired bootstrap (200 resamples, clustered by patient, 30 patients)"
    assert np.isfinite(cmp_.p) and cmp_.p_holm == cmp_.p and cmp_.metric == "AUC (macro OvR)"

    few = [_run(f"classification/e/{w}", w, 0, [0, 0, 0, 1, 0], [0.1, 0.2, 0.3, 0.8, q], 0.7)  # one positive
           for w, q in (("imagenet", 0.9), ("scratch", 0.25))]
    (cmp_,) = rep.summarize(rep.StudyRuns("few", None, None, ["encoder", "weights"], few), n_resamples=50).comparisons
    assert cmp_.test == "n/a (fewer than 2 positives)" and np.isnan(cmp_.p)


# ------------------------------------------------------------------------------------------------
# per-fold transfer against scratch folds at chance, skipped bootstrap resamples, items without patients
# ------------------------------------------------------------------------------------------------
def test_folds_with_scratch_at_or_below_chance_are_left_out_of_the_per_fold_transfer_score(tmp_path):
    """The reviewer's case: scratch below chance in two of five folds (pooled AUC fine, the cell not flagged)
    used to give a per-fold transfer score of several hundred percent without a word."""
    rng = np.random.default_rng(5)
    tie = np.tile([0.2, 0.2, 0.8, 0.8], 5)  # AUC exactly 0.5 against Y
    scratch_p = [BAD, tie] + [np.clip(Y * s + rng.uniform(0, 1, 20), 0, 2) for s in (0.6, 0.8, 1.0)]
    source_p = [np.clip(Y * 0.9 + rng.uniform(0, 1, 20), 0, 2) for _ in range(5)]
    runs = [_run("classification/e/imagenet", "imagenet", k, Y, p / 2, roc_auc_score(Y, p)) for k, p in
            enumerate(source_p)]
    runs += [_run("classification/e/scratch", "scratch", k, Y, p / 2, roc_auc_score(Y, p)) for k, p in
             enumerate(scratch_p)]
    s = rep.summarize(rep.StudyRuns("perfold", None, None, ["encoder", "weights"], runs), n_resamples=100)
    source, scratch = s.cells
    assert roc_auc_score(Y, BAD) < 0.5 and roc_auc_score(Y, tie) == 0.5
    assert scratch.flag == "" and source.transfer_flag == "" and scratch.pooled > 0.5  # nothing flagged before
    kept = [(roc_auc_score(Y, a) - roc_auc_score(Y, b)) / roc_auc_score(Y, b) * 100
            for a, b in zip(source_p[2:], scratch_p[2:])]
    everything = [(roc_auc_score(Y, a) - roc_auc_score(Y, b)) / roc_auc_score(Y, b) * 100
                  for a, b in zip(source_p, scratch_p)]
    assert np.mean(everything) > np.mean(kept) + 20  # what the folds at chance did to the mean
    assert source.transfer_fold_mean == pytest.approx(np.mean(kept), abs=1e-9)
    assert source.transfer_fold_sd == pytest.approx(np.std(kept, ddof=1), abs=1e-9) and source.transfer_folds == 3
    note = "per-fold: 2 of 5 folds left out (scratch at or below chance in folds 0, 1)"
    assert source.transfer_fold_note == note
    assert source.transfer_score == pytest.approx((source.pooled - scratch.pooled) / scratch.pooled * 100)
    paths = rep.write_report(s, tmp_path / "r")
    row = _read(paths["results.csv"])[0]
    assert row["transfer_fold_note"] == note and row["transfer_folds"] == "3" and row["transfer_flag"] == ""
    md = paths["report.md"].read_text()
    assert f"| {np.mean(kept):+.1f} ± {np.std(kept, ddof=1):.1f} % (3 folds) | {note} |" in md
    assert "left out of that mean" in md

    # a scratch fold with constant predictions is left out too (its cell is flagged as a baseline as well)
    (p0, p1), (m0, m1), _ = SCRATCH["constant"]
    runs = [_run("classification/e/imagenet", "imagenet", k, Y, GOOD, roc_auc_score(Y, GOOD)) for k in (0, 1)]
    runs += [_run("classification/e/scratch", "scratch", 0, Y, p0, m0), _run("classification/e/scratch", "scratch",
                                                                              1, Y, p1, m1)]
    source, _ = rep.summarize(rep.StudyRuns("flat", None, None, ["encoder", "weights"], runs), n_resamples=50).cells
    assert source.transfer_fold_note == "per-fold: 1 of 2 folds left out (scratch constant predictions in fold 0)"
    assert source.transfer_folds == 1 and source.transfer_fold_mean == pytest.approx(0.0)  # GOOD against GOOD


def test_cis_and_tests_resting_on_fewer_than_all_resamples_say_how_many():
    """Patients holding items of several classes, one class in two patients only: the patient bootstrap is
    unstratified and many resamples lack that class; the counts reach the cells, the comparison and the notes."""
    rng = np.random.default_rng(7)
    n_patients, per = 10, 4
    patient = np.repeat([f"pat{i}" for i in range(n_patients)], per)
    y = np.tile([0, 1, 0, 1], n_patients)
    y[:per] = [2, 0, 2, 1]  # class 2 in patients 0 and 1 only, each patient holding two or three classes
    y[per:2 * per] = [2, 2, 0, 1]
    runs = []
    for w, signal in (("imagenet", 2.0), ("scratch", 0.5)):
        logits = rng.normal(0, 1, (y.size, 3)) + signal * np.eye(3)[y]
        prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        runs.append(_run(f"classification/e/{w}", w, 0, y, prob, 0.7, patient=patient))
    n = 400
    s = rep.summarize(rep.StudyRuns("skips", None, None, ["encoder", "weights"], runs), n_resamples=n)
    # the chance that a resample of 10 patients misses both patients with class 2: (8/10)^10, about 11 %
    for c, r in zip(s.cells, runs):
        expected = stats.bootstrap_macro_auc_ci(y, r.prob, n_resamples=n, seed=0, clusters=patient).n_skipped
        assert c.ci_n_skipped == expected and 0.05 * n < expected < 0.2 * n
    (cmp_,) = s.comparisons
    test = stats.bootstrap_auc_test(y, runs[0].prob, runs[1].prob, n_resamples=n, seed=0, clusters=patient)
    assert cmp_.n_skipped == test.n_skipped > 0
    assert cmp_.test == f"paired bootstrap ({n - test.n_skipped} of {n} resamples, clustered by patient, 10 patients)"
    cis = [note for note in s.notes if note.startswith("Bootstrap CIs resting on fewer than all resamples")]
    assert len(cis) == 1 and all(f"{c.cell} on {n - c.ci_n_skipped} of {n}" in cis[0] for c in s.cells)
    assert any(f"imagenet vs scratch (encoder=e) on {n - test.n_skipped} of {n}" in note for note in s.notes)

    # every patient's items share a class: patients drawn within their class, nothing skipped, no note
    same = np.repeat(np.arange(20) % 2, 2)
    few = [_run(f"classification/e/{w}", w, 0, same, np.repeat(GOOD, 2), 0.9, patient=[f"p{i // 2}" for i in range(40)])
           for w in ("imagenet", "scratch")]
    clean = rep.summarize(rep.StudyRuns("clean", None, None, ["encoder", "weights"], few), n_resamples=50)
    assert [c.ci_n_skipped for c in clean.cells] == [0, 0] and clean.comparisons[0].n_skipped == 0
    assert not any("fewer than all resamples" in note for note in clean.notes)


def test_items_without_patient_pseudonyms_are_not_called_patients(store, tmp_path):
    """A manifest without patient ids (BUSI): predictions.csv has a patient column, every value empty. The items
    are the units, n_patients stays empty, and the methods say so instead of "the unit is the patient"."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    fab = FabricatedStudy(client, "no-patients", tmp_path / "staging", grid_keys=("encoder", "weights"))
    rng = np.random.default_rng(3)
    y = np.arange(30) % 2
    probs = {}
    for w, signal in (("imagenet", 1.5), ("scratch", 0.5)):
        for seed in (0, 1):
            probs[w, seed] = p = np.round(1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, y.size)))), 6)
            for k in (0, 1):
                idx = np.arange(k * 15, (k + 1) * 15)
                rows = [{"item_id": f"img{i}", "patient": "", "fold": k, "label": "c", "y": int(y[i]),
                         "p_a": f"{1 - p[i]:.6f}", "p_b": f"{p[i]:.6f}", "p": f"{p[i]:.6f}"} for i in idx]
                fab.child({"encoder": "resnet18", "weights": w}, k, seed, rows, roc_auc_score(y[idx], p[idx]))
    paths = rep.build_report("no-patients", out_dir=tmp_path / "report", n_resamples=200)
    cells = {c["weights"]: c for c in _read(paths["results.csv"])}
    assert cells["imagenet"]["n_patients"] == "" and cells["imagenet"]["n_cases"] == "30"
    # the statistics still draw each item with both seeds' predictions together
    items = np.concatenate([[f"img{i}" for i in range(30)]] * 2)
    rows_p = np.concatenate([probs["imagenet", s] for s in (0, 1)])
    lo, hi = stats.bootstrap_auc_ci(np.concatenate([y, y]), rows_p, n_resamples=200, seed=0, clusters=items)
    assert (float(cells["imagenet"]["ci_low"]), float(cells["imagenet"]["ci_high"])) == pytest.approx((lo, hi))
    md = paths["report.md"].read_text()
    assert "no patient pseudonyms in the predictions (the manifest names no patients): each item is its own unit" in md
    assert "the unit is the patient" not in md and "every patient has one item" not in md
    assert "no patient column" not in md and "(30 patients)" not in md

    # some items with a pseudonym: patients where named, the rest each its own unit
    named = [f"p{i // 2}" if i < 10 else "" for i in range(20)]
    runs = [_run(f"classification/e/{w}", w, 0, Y, GOOD, 0.9, patient=named) for w in ("imagenet", "scratch")]
    s = rep.summarize(rep.StudyRuns("some", None, None, ["encoder", "weights"], runs), n_resamples=50)
    assert [(c.n_patients, c.n_without_patient) for c in s.cells] == [(15, 10), (15, 10)]
    md = rep.write_report(s, tmp_path / "some")["report.md"].read_text()
    assert "the unit is the patient" in md and "items without a patient pseudonym are each their own unit" in md
