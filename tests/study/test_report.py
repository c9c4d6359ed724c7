"""Study report: a study fabricated in a temporary SQLite MLflow store following
``docs/study-mlflow-layout.md``, reported, and checked against independent recomputations."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medxfer.core.errors import MedxferError
from medxfer.study import report as rep
from medxfer.study.report import ReportError
from medxfer.study.report.collect import read_localization
from tests.study.conftest import write_rows

CLS = "cls-demo"
SEG = "seg-demo"
N_ITEMS = 90
ENCODERS = ("resnet18", "densenet121")
WEIGHTS = ("imagenet", "scratch")
FOLDS = (0, 1, 2)
CLASSES = ("Xylophonist", "Zeppelinist")  # label names: must never reach the report
# signal strength per (encoder, weights): imagenet clearly better than scratch for resnet18 only
SIGNAL = {("resnet18", "imagenet"): 1.6, ("resnet18", "scratch"): 0.3,
          ("densenet121", "imagenet"): 0.8, ("densenet121", "scratch"): 0.8}


def item_id(i: int) -> str:
    return hashlib.sha256(f"medxfer-test-item-{i}".encode()).hexdigest()[:16]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _child_tags(study, task, grid, fold, seed, config_hash=None):
    cell = f"{task}/{grid['encoder']}/{grid['weights']}/{grid['freeze']}/lr{grid['lr']}"
    return {"medxfer.study": study, "medxfer.role": "cell", "task": task, "cell": cell,
            "config_hash": config_hash or hashlib.sha1(f"{cell}/{fold}/{seed}".encode()).hexdigest()[:20],
            "cell_hash": hashlib.sha1(cell.encode()).hexdigest()[:20], "fold": str(fold), "seed": str(seed),
            "medxfer.grid_keys": "encoder,weights,freeze,lr", **grid}, f"{cell}/fold{fold}/seed{seed}"



def _log_child(client, exp, parent, tmp, study, task, grid, fold, seed, rows, metric, status="FINISHED",
               end_time=None, config_hash=None, extra_artifacts=None, extra_metrics=None, params=None):
    """One child run; ``extra_artifacts`` {file name: rows} (e.g. localization.csv),
    ``extra_metrics`` {name: value} and ``params`` {name: value} are logged too."""
    tags, name = _child_tags(study, task, grid, fold, seed, config_hash)
    tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, run_name=name, tags=tags)
    rid = run.info.run_id
    for key, value in (params or {}).items():
        client.log_param(rid, key, value)
    client.log_metric(rid, "test_auc" if task == "classification" else "test_dice", metric)
    for key, value in (extra_metrics or {}).items():
        client.log_metric(rid, key, value)
    d = tmp / rid
    d.mkdir()
    fname = "predictions.csv" if task == "classification" else "per_case.csv"
    client.log_artifact(rid, str(write_rows(d / fname, rows)))
    for extra, extra_rows in (extra_artifacts or {}).items():
        client.log_artifact(rid, str(write_rows(d / extra, extra_rows)))
    client.set_terminated(rid, status=status, end_time=end_time)
    return rid


def _parent(client, exp, study, tmp):
    run = client.create_run(exp, run_name=f"study/{study}", tags={
        "medxfer.study": study, "medxfer.role": "study", "medxfer.spec_hash": "0" * 16})
    (tmp / "spec.yaml").write_text(f"name: {study}\n")
    client.log_artifact(run.info.run_id, str(tmp / "spec.yaml"))
    return run.info.run_id


def _cls_rows(items, y, p, fold):
    return [{"item_id": item_id(i), "fold": fold, "label": CLASSES[y[i]], "y": int(y[i]),
             f"p_{CLASSES[0]}": f"{1 - p[i]:.6f}", f"p_{CLASSES[1]}": f"{p[i]:.6f}", "p": f"{p[i]:.6f}"} for i in items]


@contextlib.contextmanager
def _count_mlflow_reads():
    """Record every artifact download ``(run id, artifact path)`` and count the run searches made
    through ``mlflow.MlflowClient`` while inside."""
    import mlflow

    calls = {"downloads": [], "searches": 0}
    download, search = mlflow.MlflowClient.download_artifacts, mlflow.MlflowClient.search_runs

    def counting_download(self, run_id, path, *args, **kwargs):
        calls["downloads"].append((run_id, path))
        return download(self, run_id, path, *args, **kwargs)

    def counting_search(self, *args, **kwargs):
        calls["searches"] += 1
        return search(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlflow.MlflowClient, "download_artifacts", counting_download)
        mp.setattr(mlflow.MlflowClient, "search_runs", counting_search)
        yield calls


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Both studies in one store; the classification report built once. Yields a dict of truths."""
    import mlflow

    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
        staging = tmp / "staging"
        staging.mkdir()
        truth = {"cls": {}, "seg": {}}

        # ---- classification: 2 encoders × {imagenet, scratch} × 3 folds, one seed ------------
        exp = client.create_experiment(f"medxfer/{CLS}")
        parent = _parent(client, exp, CLS, staging)
        rng = np.random.default_rng(1)
        y = np.array([i % 2 for i in range(N_ITEMS)])
        fold_of = np.array([(i // 2) % 3 for i in range(N_ITEMS)])
        shared_noise = rng.normal(0, 0.7, N_ITEMS)  # item difficulty, common to all models
        now = int(time.time() * 1000)
        for enc in ENCODERS:
            for w in WEIGHTS:
                grid = {"encoder": enc, "weights": w, "freeze": "none", "lr": "0.001"}
                p = np.round(_sigmoid(SIGNAL[enc, w] * (2 * y - 1) + shared_noise + rng.normal(0, 1.0, N_ITEMS)), 6)
                cell = f"classification/{enc}/{w}/none/lr0.001"
                aucs = []
                for k in FOLDS:
                    idx = np.flatnonzero(fold_of == k)
                    auc_k = roc_auc_score(y[idx], p[idx])
                    aucs.append(auc_k)
                    _log_child(client, exp, parent, staging, CLS, "classification", grid, k, 0,
                               _cls_rows(idx, y, p, k), auc_k, end_time=now)
                truth["cls"][cell] = {"p": p, "aucs": aucs}
        # a FAILED rerun of resnet18/scratch/fold0 with perfect predictions: must be ignored
        grid = {"encoder": "resnet18", "weights": "scratch", "freeze": "none", "lr": "0.001"}
        idx = np.flatnonzero(fold_of == 0)
        failed = _log_child(client, exp, parent, staging, CLS, "classification", grid, 0, 0,
                            _cls_rows(idx, y, y.astype(float), 0), 1.0, status="FAILED", end_time=now + 5000)
        # an older FINISHED run of resnet18/imagenet/fold1 (same config_hash, earlier end, later start)
        # with inverted predictions: superseded by the run above
        grid = {"encoder": "resnet18", "weights": "imagenet", "freeze": "none", "lr": "0.001"}
        idx = np.flatnonzero(fold_of == 1)
        chash = _child_tags(CLS, "classification", grid, 1, 0)[0]["config_hash"]
        superseded = _log_child(client, exp, parent, staging, CLS, "classification", grid, 1, 0,
                                _cls_rows(idx, y, 1.0 - y.astype(float), 1), 0.0, end_time=now - 60_000,
                                config_hash=chash)
        truth["cls_ignored"] = {failed, superseded}
        truth["cls_y"] = y
        truth["cls_parent"] = parent

        # ---- segmentation: resnet18 × {imagenet, scratch} × 2 folds × 2 seeds ----------------
        exp = client.create_experiment(f"medxfer/{SEG}")
        sparent = _parent(client, exp, SEG, staging)
        n = 40
        base = rng.uniform(0.55, 0.8, n)
        fold_of = np.arange(n) % 2
        for w, gain in (("imagenet", 0.08), ("scratch", 0.0)):
            grid = {"encoder": "resnet18", "weights": w, "freeze": "none", "lr": "0.001"}
            cell = f"segmentation/resnet18/{w}/none/lr0.001"
            dice = {}
            means = []
            for seed in (0, 1):
                d = np.round(np.clip(base + gain + rng.normal(0, 0.03, n), 0, 1), 6)
                dice[seed] = d
                for k in (0, 1):
                    idx = np.flatnonzero(fold_of == k)
                    rows = [{"item_id": item_id(i), "fold": k, "dice": f"{d[i]:.6f}", "hd95_px": "3.0",
                             "hd95_mm": ""} for i in idx]
                    means.append(float(np.mean(d[idx])))
                    _log_child(client, exp, sparent, staging, SEG, "segmentation", grid, k, seed, rows, means[-1],
                               end_time=now)
            truth["seg"][cell] = {"dice": dice, "means": means}
        truth["seg_parent"] = sparent

        # ---- an experiment whose only child failed --------------------------------------------
        exp = client.create_experiment("medxfer/all-failed")
        fparent = _parent(client, exp, "all-failed", staging)
        _log_child(client, exp, fparent, staging, "all-failed", "classification",
                   {"encoder": "resnet18", "weights": "scratch", "freeze": "none", "lr": "0.001"}, 0, 0,
                   _cls_rows(range(4), y, y.astype(float), 0), 1.0, status="FAILED")

        with _count_mlflow_reads() as calls:
            paths = rep.build_report(CLS)
        truth["mlflow_reads"] = calls
        truth["paths"] = paths
        truth["client"] = client
        truth["tmp"] = tmp
        yield truth


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_results_csv_matches_independent_recomputation(study):
    paths = study["paths"]
    assert paths["report.html"] == Path("reports") / CLS / "report.html"
    rows = {r["cell"]: r for r in _read(study["tmp"] / paths["results.csv"])}
    assert set(rows) == set(study["cls"])
    y = study["cls_y"]
    for cell, t in study["cls"].items():
        r = rows[cell]
        assert r["study"] == CLS and r["task"] == "classification" and r["metric"] == "test_auc"
        assert r["n_runs"] == "3" and r["folds"] == "0;1;2" and r["seeds"] == "0"
        assert float(r["mean"]) == pytest.approx(np.mean(t["aucs"]), abs=1e-12)
        assert float(r["sd"]) == pytest.approx(np.std(t["aucs"], ddof=1), abs=1e-12)
        pooled = roc_auc_score(y, t["p"])  # every item once, in its own test fold
        assert float(r["pooled"]) == pytest.approx(pooled, abs=1e-12)
        assert float(r["ci_low"]) < pooled < float(r["ci_high"])
        assert r["n_cases"] == str(N_ITEMS)
        assert r["encoder"] in ENCODERS and r["weights"] in WEIGHTS and r["freeze"] == "none" and r["lr"] == "0.001"
    # transfer score on the pooled AUC: clearly positive for resnet18, none for the scratch cells
    good = rows["classification/resnet18/imagenet/none/lr0.001"]
    scratch = rows["classification/resnet18/scratch/none/lr0.001"]
    expected = (float(good["pooled"]) - float(scratch["pooled"])) / float(scratch["pooled"]) * 100
    assert float(good["transfer_score"]) == pytest.approx(expected) and expected > 10
    assert scratch["transfer_score"] == ""


def test_failed_and_superseded_runs_are_ignored(study):
    rows = {r["cell"]: r for r in _read(study["tmp"] / study["paths"]["results.csv"])}
    # the FAILED perfect run would give resnet18/scratch a pooled AUC near 1; the superseded
    # inverted run would pull resnet18/imagenet down
    assert float(rows["classification/resnet18/scratch/none/lr0.001"]["pooled"]) < 0.8
    assert float(rows["classification/resnet18/imagenet/none/lr0.001"]["pooled"]) > 0.9
    assert all(r["n_runs"] == "3" for r in rows.values())
    runs = rep.collect_study(CLS)
    assert len(runs.runs) == 12 and runs.n_not_finished == 1 and runs.n_superseded == 1
    assert runs.parent_run_id == study["cls_parent"]


def test_comparisons_delong_and_holm(study):
    rows = _read(study["tmp"] / study["paths"]["comparisons.csv"])
    assert len(rows) == 2
    by_enc = {r["group"]: r for r in rows}
    r18 = by_enc["encoder=resnet18, freeze=none, lr=0.001"]
    assert (r18["source_a"], r18["source_b"], r18["test"]) == ("imagenet", "scratch", "DeLong")
    assert r18["n_cases"] == str(N_ITEMS)
    assert float(r18["p"]) < 0.001 and float(r18["difference"]) > 0.1
    y, t = study["cls_y"], study["cls"]
    assert float(r18["a"]) == pytest.approx(roc_auc_score(y, t["classification/resnet18/imagenet/none/lr0.001"]["p"]))
    assert float(r18["b"]) == pytest.approx(roc_auc_score(y, t["classification/resnet18/scratch/none/lr0.001"]["p"]))
    for r in rows:
        assert float(r["p_holm"]) >= float(r["p"])
    # Holm with two tests: the smaller p is doubled
    ps = sorted(float(r["p"]) for r in rows)
    assert float(r18["p_holm"]) == pytest.approx(min(1.0, 2 * ps[0]))


def test_report_files_logged_to_parent(study):
    client = study["client"]
    parent = study["cls_parent"]
    logged = {Path(a.path).name for a in client.list_artifacts(parent, "report")}
    assert {"report.html", "report.md", "results.csv", "comparisons.csv", "figures"} <= logged
    figs = {Path(a.path).name for a in client.list_artifacts(parent, "report/figures")}
    assert figs == {p.name for k, p in study["paths"].items() if k.startswith("figures/")}
    assert "bar_classification.png" in figs and {"roc_1.png", "roc_2.png"} <= figs


def test_markdown_and_html_content(study):
    tmp, paths = study["tmp"], study["paths"]
    md = (tmp / paths["report.md"]).read_text()
    assert md.startswith(f"# Study report: {CLS}")
    assert "## Cells" in md and "## Comparisons" in md and "| Task | encoder | weights | freeze | lr |" in md
    assert re.search(r"\| \d\.\d{3} ± \d\.\d{3} \| \d\.\d{3} \| \[\d\.\d{3}, \d\.\d{3}\] \|", md)
    assert "<0.001" in md and "DeLong" in md and "Holm" in md
    # runs written before predictions.csv named patients: every item its own patient, and the report says so
    assert "12 of 12 classification run(s) have no patient column in their predictions.csv" in md
    assert "every item counts as its own patient" in md and "Obuchowski clustered by patient" not in md
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (tmp / paths["report.md"]).parent.joinpath(link).is_file()
    page = (tmp / paths["report.html"]).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    # bars, ΔAUC forest plot, encoder × weights heatmap (2 encoders × 2 weights), ROC × 2, calibration
    assert page.count('<img class="figure"') == 6 and page.count('src="data:image/png;base64,') == 6
    assert 'alt="Calibration plot: fraction of class 1 against the mean predicted probability' in page
    assert '<table id="cells">' in page and '<table id="comparisons">' in page
    assert page.count("<tr data-cell=") == 4
    for text in (page, md, (tmp / paths["results.csv"]).read_text(), (tmp / paths["comparisons.csv"]).read_text()):
        assert not any(c.lower() in text.lower() for c in CLASSES)  # label names never reach the report


def test_segmentation_study(study, tmp_path):
    paths = rep.build_report(SEG, out_dir=tmp_path / "seg", n_resamples=2000, log_to_parent=False)
    rows = {r["cell"]: r for r in _read(paths["results.csv"])}
    assert len(rows) == 2
    for cell, t in study["seg"].items():
        r = rows[cell]
        assert r["metric"] == "test_dice" and r["n_runs"] == "4" and r["seeds"] == "0;1"
        assert float(r["mean"]) == pytest.approx(np.mean(t["means"]), abs=1e-12)
        assert float(r["sd"]) == pytest.approx(np.std(t["means"], ddof=1), abs=1e-12)
        per_item = (t["dice"][0] + t["dice"][1]) / 2  # seeds averaged per case
        assert float(r["pooled"]) == pytest.approx(per_item.mean(), abs=1e-9)
        assert float(r["ci_low"]) < float(r["pooled"]) < float(r["ci_high"])
        assert r["n_cases"] == "40"
    assert float(rows["segmentation/resnet18/imagenet/none/lr0.001"]["transfer_score"]) > 0
    (cmp_,) = _read(paths["comparisons.csv"])
    assert cmp_["test"] == "Wilcoxon signed-rank" and cmp_["n_cases"] == "40"
    assert float(cmp_["p"]) < 0.001 and float(cmp_["p_holm"]) >= float(cmp_["p"])
    assert float(cmp_["difference"]) == pytest.approx(0.08, abs=0.02)
    assert (paths["report.html"]).read_text().count('<img class="figure"') == 1  # bar chart, no ROC
    client = study["client"]
    assert not any(a.path.startswith("report") for a in client.list_artifacts(study["seg_parent"]))


def test_unknown_or_unfinished_study_errors(study):
    with pytest.raises(ReportError, match="no-such-study"):
        rep.collect_study("no-such-study")
    with pytest.raises(ReportError, match="all-failed.*no finished run"):
        rep.build_report("all-failed")
    assert issubclass(ReportError, ValueError) and issubclass(ReportError, MedxferError)


def _assert_reads_scale_with_runs(calls: dict, parent: str, n_runs: int, ignored: set[str] = frozenset()) -> None:
    """A report reads each artifact it needs once: per chosen child run its test rows and metrics.json (its
    validation operating point; and one try at localization.csv), on the parent grid.json, similarity.json and
    spec.yaml (its compare), one bundle config (the optimiser); nothing of ignored runs; and it finds the runs with
    one search per role (study, cell, pretrain; one page each), however many runs there are."""
    downloads = calls["downloads"]
    assert len(downloads) == len(set(downloads)), Counter(downloads).most_common(3)  # nothing read twice
    per_artifact = Counter(path for _, path in downloads)
    assert per_artifact["predictions.csv"] == n_runs and per_artifact["localization.csv"] == n_runs
    assert per_artifact["metrics.json"] == n_runs and per_artifact["bundle_configs/train.json"] == 1
    assert per_artifact["grid.json"] == per_artifact["similarity.json"] == per_artifact["spec.yaml"] == 1
    assert len(downloads) == 3 * n_runs + 4
    assert {run for run, path in downloads if path in ("grid.json", "similarity.json", "spec.yaml")} == {parent}
    assert not {run for run, _ in downloads} & ignored
    assert calls["searches"] == 3


def test_report_reads_each_artifact_once(study):
    """What keeps a large study's report quick: 12 runs × 90 items (2000 bootstrap resamples per
    cell, built by the fixture), each artifact downloaded once, nothing of the failed or superseded run."""
    _assert_reads_scale_with_runs(study["mlflow_reads"], study["cls_parent"], 12, study["cls_ignored"])


def _run(y, prob, item_ids, cell, weights, fold, seed, metric):
    return rep.ChildRun(run_id=f"r{cell}{fold}{seed}", name=f"{cell}/fold{fold}/seed{seed}", cell=cell,
                        task="classification", grid={"encoder": "e", "weights": weights}, fold=str(fold),
                        seed=str(seed), metric=metric, item_id=np.array(item_ids, dtype=object), y=np.asarray(y),
                        prob=np.asarray(prob, dtype=float))


def test_multiclass_and_multiseed_in_memory(tmp_path):
    """No MLflow: a 3-class study (macro OvR AUC with a bootstrap CI, paired bootstrap test) and a 2-seed
    binary study (clustered bootstrap, DeLong on seed-averaged probabilities)."""
    rng = np.random.default_rng(3)
    n = 60
    ids = [item_id(i) for i in range(n)]
    y3 = np.arange(n) % 3
    runs = []
    pooled_in = {}
    for w, s in (("imagenet", 2.0), ("scratch", 0.5)):
        logits = rng.normal(0, 1, (n, 3)) + s * np.eye(3)[y3]
        prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        pooled_in[w] = prob
        for k in (0, 1):
            idx = np.flatnonzero(np.arange(n) % 2 == k)
            runs.append(_run(y3[idx], prob[idx], [ids[i] for i in idx], f"classification/e/{w}", w, k, 0, 0.7))
    s3 = rep.summarize(rep.StudyRuns("mc", None, None, ["encoder", "weights"], runs), n_resamples=200)
    for c in s3.cells:
        w = c.grid["weights"]
        assert c.pooled == pytest.approx(roc_auc_score(y3, pooled_in[w], multi_class="ovr", average="macro"))
        assert c.ci_low < c.pooled < c.ci_high and c.n_classes == 3
    (cmp_,) = s3.comparisons
    assert cmp_.test == "paired bootstrap (200 resamples)" and cmp_.metric == "AUC (macro OvR)"
    assert cmp_.n_cases == n and cmp_.p < 0.05 and cmp_.p_holm == cmp_.p  # a family of one
    assert cmp_.difference == pytest.approx(
        roc_auc_score(y3, pooled_in["imagenet"], multi_class="ovr") - roc_auc_score(y3, pooled_in["scratch"],
                                                                                   multi_class="ovr"))

    y = np.arange(n) % 2
    runs, pa = [], {}
    for w, s in (("imagenet", 2.0), ("scratch", 0.3)):
        for seed in (0, 1):
            p = _sigmoid(s * (2 * y - 1) + rng.normal(0, 1, n))
            pa.setdefault(w, []).append(p)
            for k in (0, 1):
                idx = np.flatnonzero(np.arange(n) % 2 == k)  # fold k holds one class only: fine pooled
                runs.append(_run(y[idx], np.c_[1 - p[idx], p[idx]], [ids[i] for i in idx], f"classification/e/{w}",
                                 w, k, seed, float("nan")))
    s2 = rep.summarize(rep.StudyRuns("ms", None, None, ["encoder", "weights"], runs), n_resamples=500)
    for c in s2.cells:
        w = c.grid["weights"]
        assert c.pooled == pytest.approx(roc_auc_score(np.r_[y, y], np.r_[pa[w][0], pa[w][1]]))
        assert c.ci_low < c.pooled < c.ci_high and c.n_cases == n and c.seeds == ["0", "1"]
    (cmp_,) = s2.comparisons
    assert cmp_.test == "DeLong" and cmp_.n_cases == n
    assert cmp_.a == pytest.approx(roc_auc_score(y, (pa["imagenet"][0] + pa["imagenet"][1]) / 2))
    paths = rep.write_report(s2, tmp_path / "ms")
    assert "n/a" in (tmp_path / "ms" / "report.md").read_text()  # mean ± SD of an unlogged metric
    assert paths["report.html"].is_file()


def test_a_cell_whose_runs_loaded_different_weights_is_not_pooled(store, tmp_path):
    """Issue 20 item 6: fold 0 trained from weights c3008c…, fold 1 from 4951e1… (a file: replaced
    during a study, by a medxfer that did not pin weights yet): the report refuses to average them,
    naming the cell, both sha256 prefixes and the runs; runs of one sha256 (or none: scratch) pool."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    exp = client.create_experiment("medxfer/mixed-weights")
    parent = _parent(client, exp, "mixed-weights", tmp_path)
    y = np.arange(40) % 2
    p = np.round(_sigmoid(1.5 * (2 * y - 1) + np.random.default_rng(5).normal(0, 1, 40)), 6)
    shas = {0: "c3008c" + "1" * 58, 1: "4951e1" + "2" * 58}
    grid = {"encoder": "resnet18", "weights": "file:w.pt", "freeze": "none", "lr": "0.001"}
    ids = {}
    for k, sha in shas.items():
        idx = np.flatnonzero(np.arange(40) // 20 == k)
        ids[k] = _log_child(client, exp, parent, tmp_path, "mixed-weights", "classification", grid, k, 0,
                            _cls_rows(idx, y, p, k), 0.8, params={"weights.sha256": sha})
    with pytest.raises(ReportError) as err:
        rep.build_report("mixed-weights", out_dir=tmp_path / "report")
    message = str(err.value)
    assert "classification/resnet18/file:w.pt/none/lr0.001" in message
    assert f"c3008c111111… in fold0/seed0 (run {ids[0]})" in message and "4951e1222222… in fold1/seed0" in message
    assert "\n" not in message and not (tmp_path / "report").exists()

    runs = [_run(y[:20], np.c_[1 - p[:20], p[:20]], [item_id(i) for i in range(20)], "c", "w", 0, 0, 0.8),
            _run(y[20:], np.c_[1 - p[20:], p[20:]], [item_id(i) for i in range(20, 40)], "c", "w", 1, 0, 0.8)]
    for r in runs:
        r.weights_sha256 = shas[0]
    runs.append(_run(y[:20], np.c_[1 - p[:20], p[:20]], [item_id(i) for i in range(20)], "s", "scratch", 0, 0, 0.5))
    summary = rep.summarize(rep.StudyRuns("one", None, None, ["encoder", "weights"], runs), n_resamples=50)
    assert [c.n_runs for c in summary.cells] == [2, 1]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(study, tmp_path):
    from PIL import Image

    html_path = (study["tmp"] / study["paths"]["report.html"]).resolve()
    # DOM as the browser built it: the tables with their rows, the figures
    out = _chromium(html_path.as_uri(), tmp_path / "profile1", "--dump-dom")
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    cells = re.search(r'<table id="cells">(.*?)</table>', dom, re.S)
    assert cells and len(re.findall(r"<tr data-cell=", cells.group(1))) == 4
    for cell in study["cls"]:
        assert f'data-cell="{cell}"' in cells.group(1)
    assert '<table id="comparisons">' in dom
    assert len(re.findall(r'<img class="figure"', dom)) == 6

    # the images decode: a test-only copy with a probe script records each image's natural size
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace(
        "</body>", "<script>window.addEventListener('load',()=>{document.body.setAttribute('data-decoded',"
        "Array.from(document.images).map(i=>i.complete?i.naturalWidth+'x'+i.naturalHeight:'pending').join(' '))"
        "})</script></body>"))
    out = _chromium(probe.as_uri(), tmp_path / "profile2", "--virtual-time-budget=5000", "--dump-dom")
    assert out.returncode == 0, out.stderr[-2000:]
    decoded = re.search(r'data-decoded="([^"]*)"', out.stdout)
    assert decoded, out.stdout[:500]
    sizes = decoded.group(1).split()
    assert len(sizes) == 6
    for s in sizes:
        w, h = map(int, s.split("x"))
        assert w > 200 and h > 200

    # and they are drawn: the screenshot has coloured (non-gray) pixels, which only the figures have
    shot = tmp_path / "shot.png"  # tall enough to reach the coloured figures below the growing tables
    out = _chromium(html_path.as_uri(), tmp_path / "profile3", f"--screenshot={shot}", "--window-size=1200,4000",
                    "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000", "--hide-scrollbars")
    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert (img < 250).any(axis=2).mean() > 0.02  # not blank
    colour = (np.abs(img[..., 0] - img[..., 2]) > 60) | (np.abs(img[..., 1] - img[..., 2]) > 60)
    assert colour.sum() > 2000


# ------------------------------------------------------------------------------------------------
# lesion localization (Grad-CAM): localization.csv on classification runs
# ------------------------------------------------------------------------------------------------
LOC = "loc-demo"
LOC_N = 60
LOC_RESAMPLES = 1000


def _sorted_by_item(idx: np.ndarray) -> np.ndarray:
    """Items in the order the report pools them (sorted item ids), for order-dependent bootstraps."""
    return np.asarray(sorted(idx, key=item_id))


@pytest.fixture(scope="module")
def loc_study(study):
    """resnet18 × {imagenet, scratch} × 3 folds with localization.csv (imagenet clearly better),
    densenet121 × {imagenet, scratch} × 3 folds without."""
    client, tmp = study["client"], study["tmp"]
    staging = tmp / "staging-loc"
    staging.mkdir()
    exp = client.create_experiment(f"medxfer/{LOC}")
    parent = _parent(client, exp, LOC, staging)
    rng = np.random.default_rng(11)
    y = np.arange(LOC_N) % 2
    fold_of = (np.arange(LOC_N) // 2) % 3
    # scored cases: positives with a non-empty lesion mask (items 1 and 3 have an empty one)
    scored = np.array([i for i in range(LOC_N) if y[i] == 1 and i not in (1, 3)])
    hit = {"imagenet": rng.random(LOC_N) < 0.8, "scratch": rng.random(LOC_N) < 0.3}
    dice = {"imagenet": np.round(rng.uniform(0.35, 0.85, LOC_N), 6),
            "scratch": np.round(rng.uniform(0.02, 0.45, LOC_N), 6)}
    iou = {w: np.round(d / (2 - d), 6) for w, d in dice.items()}
    for enc, with_loc in (("resnet18", True), ("densenet121", False)):
        for w, signal in (("imagenet", 1.5), ("scratch", 0.5)):
            grid = {"encoder": enc, "weights": w, "freeze": "none", "lr": "0.001"}
            p = np.round(_sigmoid(signal * (2 * y - 1) + rng.normal(0, 1.0, LOC_N)), 6)
            for k in FOLDS:
                idx = np.flatnonzero(fold_of == k)
                extra, metrics = None, None
                if with_loc:
                    sc = scored[fold_of[scored] == k]
                    extra = {"localization.csv": [
                        {"item_id": item_id(i), "fold": k, "label": CLASSES[1], "hit": int(hit[w][i]),
                         "dice": f"{dice[w][i]:.6f}", "iou": f"{iou[w][i]:.6f}"} for i in sc]}
                    metrics = {"loc_hit": float(hit[w][sc].mean()), "loc_dice": float(dice[w][sc].mean()),
                               "loc_iou": float(iou[w][sc].mean()), "loc_cases": len(sc)}
                _log_child(client, exp, parent, staging, LOC, "classification", grid, k, 0, _cls_rows(idx, y, p, k),
                           roc_auc_score(y[idx], p[idx]), extra_artifacts=extra, extra_metrics=metrics)
    with _count_mlflow_reads() as calls:
        paths = rep.build_report(LOC, out_dir=tmp / "loc-report", n_resamples=LOC_RESAMPLES)
    return {"paths": paths, "mlflow_reads": calls, "scored": scored, "fold_of": fold_of,
            "hit": hit, "dice": dice, "iou": iou, "parent": parent}


def test_localization_results_match_recomputation(loc_study):
    from medxfer.study import stats

    t = loc_study
    rows = {r["cell"]: r for r in _read(t["paths"]["results.csv"])}
    assert len(rows) == 4 and all(r["n_runs"] == "3" for r in rows.values())  # AUC part: every run counts
    sc = _sorted_by_item(t["scored"])
    for w in ("imagenet", "scratch"):
        r = rows[f"classification/resnet18/{w}/none/lr0.001"]
        hit, dice, iou = t["hit"][w][sc].astype(float), t["dice"][w][sc], t["iou"][w][sc]
        assert r["loc_runs"] == "3" and r["loc_cases"] == str(len(sc)) == "28"
        assert float(r["loc_hit"]) == pytest.approx(hit.mean(), abs=1e-12)
        assert float(r["loc_dice"]) == pytest.approx(dice.mean(), abs=1e-12)
        assert float(r["loc_iou"]) == pytest.approx(iou.mean(), abs=1e-12)
        per_fold = [t["scored"][t["fold_of"][t["scored"]] == k] for k in FOLDS]
        for name, v in (("hit", t["hit"][w].astype(float)), ("dice", t["dice"][w]), ("iou", t["iou"][w])):
            fold_means = [v[f].mean() for f in per_fold]
            assert float(r[f"loc_{name}_mean"]) == pytest.approx(np.mean(fold_means), abs=1e-12)
            assert float(r[f"loc_{name}_sd"]) == pytest.approx(np.std(fold_means, ddof=1), abs=1e-12)
        # seeded bootstrap of the pooled mean Dice with the report's number of resamples
        lo, hi = stats.bootstrap_mean_ci(dice, n_resamples=LOC_RESAMPLES, seed=0)
        assert (float(r["loc_dice_ci_low"]), float(r["loc_dice_ci_high"])) == pytest.approx((lo, hi), abs=1e-12)
        assert lo < dice.mean() < hi
        assert float(r["loc_hit_ci_low"]) < hit.mean() < float(r["loc_hit_ci_high"])
    for w in ("imagenet", "scratch"):  # no localization.csv: empty loc columns
        r = rows[f"classification/densenet121/{w}/none/lr0.001"]
        assert all(r[c] == "" for c in r if c.startswith("loc_"))


def test_localization_comparisons_wilcoxon_mcnemar_holm(loc_study):
    from math import comb

    from scipy import stats as sps

    t = loc_study
    rows = _read(t["paths"]["comparisons.csv"])
    auc_rows = [r for r in rows if r["metric"] == "AUC"]
    loc_rows = {r["metric"]: r for r in rows if r["metric"].startswith("loc_")}
    assert len(auc_rows) == 2 and len(rows) == 4 and set(loc_rows) == {"loc_dice", "loc_hit"}
    sc = t["scored"]
    for r in loc_rows.values():
        assert r["group"] == "encoder=resnet18, freeze=none, lr=0.001"
        assert (r["source_a"], r["source_b"], r["n_cases"]) == ("imagenet", "scratch", str(len(sc)))
    d = loc_rows["loc_dice"]
    a, b = t["dice"]["imagenet"][sc], t["dice"]["scratch"][sc]
    assert d["test"] == "Wilcoxon signed-rank"
    assert float(d["a"]) == pytest.approx(a.mean()) and float(d["b"]) == pytest.approx(b.mean())
    assert float(d["difference"]) == pytest.approx(a.mean() - b.mean()) and a.mean() - b.mean() > 0.2
    assert float(d["p"]) == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-9)  # exact: n = 28, no ties
    h = loc_rows["loc_hit"]
    ha, hb = t["hit"]["imagenet"][sc], t["hit"]["scratch"][sc]
    n01, n10 = int(np.sum(ha & ~hb)), int(np.sum(~ha & hb))
    hand = min(1.0, 2 * sum(comb(n01 + n10, k) for k in range(min(n01, n10) + 1)) / 2 ** (n01 + n10))
    assert h["test"] == "McNemar exact" and n01 > n10
    assert float(h["p"]) == pytest.approx(hand, rel=1e-9)
    assert float(h["difference"]) == pytest.approx(ha.mean() - hb.mean())
    # Holm within the localization family (2 tests); the AUC family keeps its own
    ps = sorted(float(r["p"]) for r in loc_rows.values())
    for r in loc_rows.values():
        assert float(r["p_holm"]) >= float(r["p"])
    assert min(float(r["p_holm"]) for r in loc_rows.values()) == pytest.approx(min(1.0, 2 * ps[0]))
    aps = sorted(float(r["p"]) for r in auc_rows)
    assert min(float(r["p_holm"]) for r in auc_rows) == pytest.approx(min(1.0, 2 * aps[0]))


def test_localization_section_in_html_and_markdown(loc_study, study):
    paths = loc_study["paths"]
    page = paths["report.html"].read_text()
    md = paths["report.md"].read_text()
    assert '<table id="localization">' in page and '<table id="localization-comparisons">' in page
    assert "Lesion localization (Grad-CAM)" in page and "## Lesion localization (Grad-CAM)" in md
    assert "deepest encoder layer" in page and "0.5 × its maximum" in page and "non-empty lesion mask" in page
    assert "McNemar exact" in md and "own family" in page
    assert "6 of 12 classification run(s) have no" in page  # densenet121's runs, left out of the section
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    for text in (page, md, *(paths[k].read_text() for k in ("results.csv", "comparisons.csv"))):
        assert not any(c.lower() in text.lower() for c in CLASSES)
    assert all(item_id(i) not in page for i in loc_study["scored"])
    logged = {Path(a.path).name for a in study["client"].list_artifacts(loc_study["parent"], "report")}
    assert {"report.html", "results.csv", "comparisons.csv"} <= logged
    # a study without localization.csv: no section, no columns, no rows
    tmp, cpaths = study["tmp"], study["paths"]
    cls_page = (tmp / cpaths["report.html"]).read_text()
    assert 'id="localization' not in cls_page and "Lesion localization" not in cls_page
    assert "Lesion localization" not in (tmp / cpaths["report.md"]).read_text()
    assert not any(k.startswith("loc_") for k in _read(tmp / cpaths["results.csv"])[0])
    assert all(not r["metric"].startswith("loc_") for r in _read(tmp / cpaths["comparisons.csv"]))
    # one try at localization.csv per classification run, with or without one
    _assert_reads_scale_with_runs(loc_study["mlflow_reads"], loc_study["parent"], 12)


def test_localization_multiseed_in_memory():
    """Two seeds: per-case hits/Dice averaged over seeds; McNemar on the majority hit, cases tied
    over seeds left out."""
    from math import comb

    from medxfer.study import stats

    rng = np.random.default_rng(4)
    n = 40
    ids = [item_id(i) for i in range(n)]
    y = np.arange(n) % 2
    runs, truth = [], {}
    for w, q in (("imagenet", 0.8), ("scratch", 0.4)):
        hits = rng.random((2, n)) < q
        dices = rng.uniform(0, 1, (2, n)) * (0.9 if w == "imagenet" else 0.5)
        truth[w] = (hits.mean(0), dices.mean(0))
        for seed in (0, 1):
            p = _sigmoid(2 * y - 1 + rng.normal(0, 1, n))
            run = _run(y, np.c_[1 - p, p], ids, f"classification/e/{w}", w, 0, seed, 0.7)
            run.loc = rep.Localization(item_id=np.array(ids, dtype=object), hit=hits[seed].astype(float),
                                       dice=dices[seed], iou=dices[seed] / (2 - dices[seed]))
            runs.append(run)
    s = rep.summarize(rep.StudyRuns("ms-loc", None, None, ["encoder", "weights"], runs), n_resamples=200)
    for c in s.cells:
        h, d = truth[c.grid["weights"]]
        assert c.loc.n_runs == 2 and c.loc.n_cases == n
        assert c.loc.hit == pytest.approx(h.mean()) and c.loc.dice == pytest.approx(d.mean())
    dice_cmp, hit_cmp = s.loc_comparisons
    assert (dice_cmp.metric, hit_cmp.metric) == ("loc_dice", "loc_hit")
    order = np.argsort(ids)  # the report pairs cases in item-id order
    ha, hb = truth["imagenet"][0][order], truth["scratch"][0][order]
    assert dice_cmp.p == pytest.approx(stats.wilcoxon_signed_rank(truth["imagenet"][1][order],
                                                                 truth["scratch"][1][order])[1])
    decided = (ha != 0.5) & (hb != 0.5)
    n01 = int(np.sum((ha > 0.5) & (hb < 0.5) & decided))
    n10 = int(np.sum((ha < 0.5) & (hb > 0.5) & decided))
    m = n01 + n10
    hand = min(1.0, 2 * sum(comb(m, k) for k in range(min(n01, n10) + 1)) / 2 ** m) if m else 1.0
    assert hit_cmp.p == pytest.approx(hand)
    tied = int((~decided).sum())
    assert tied > 0 and f"{tied} case(s) tied over seeds left out" in hit_cmp.test
    assert hit_cmp.difference == pytest.approx(ha.mean() - hb.mean())


# ------------------------------------------------------------------------------------------------
# dataset similarity vs transfer: similarity.json on the parent run
# ------------------------------------------------------------------------------------------------
SIM = "sim-demo"
# resnet18: four stage sources + scratch; densenet121: two stage sources, imagenet (no distances), scratch
SIM_SIGNAL = {"resnet18": {"srcA": 1.5, "srcB": 1.0, "srcC": 0.6, "srcD": 0.35, "scratch": 0.1},
              "densenet121": {"srcA": 1.3, "srcB": 0.7, "imagenet": 0.9, "scratch": 0.3}}
SIM_DISTANCES = {  # frechet increases as transfer falls (rho = -1); mmd2 and intensity arbitrary
    "srcA": {"frechet": 5.0, "mmd2": 0.010, "intensity": 0.9, "n": 40},
    "srcB": {"frechet": 11.0, "mmd2": 0.030, "intensity": 0.2, "n": 32},
    "srcC": {"frechet": 20.0, "mmd2": 0.020, "intensity": 0.5, "n": 48},
    "srcD": {"frechet": 41.0, "mmd2": 0.080, "intensity": 0.7, "n": 24},
    "srcZ": {"frechet": 1.0, "mmd2": 0.001, "intensity": 0.1, "n": 10},  # not in the grid
}


@pytest.fixture(scope="module")
def sim_study(study):
    import json

    client, tmp = study["client"], study["tmp"]
    staging = tmp / "staging-sim"
    staging.mkdir()
    exp = client.create_experiment(f"medxfer/{SIM}")
    parent = _parent(client, exp, SIM, staging)
    (staging / "similarity.json").write_text(json.dumps({
        "encoder": "resnet18", "weights": "scratch", "image_size": 128, "target": {"n": 60},
        "sources": SIM_DISTANCES}))
    client.log_artifact(parent, str(staging / "similarity.json"))
    rng = np.random.default_rng(7)
    n = 60
    y = np.arange(n) % 2
    fold_of = (np.arange(n) // 2) % 2  # both classes in each fold
    pooled = {}
    for enc, signals in SIM_SIGNAL.items():
        for w, signal in signals.items():
            grid = {"encoder": enc, "weights": w, "freeze": "none", "lr": "0.001"}
            p = np.round(_sigmoid(signal * (2 * y - 1) + rng.normal(0, 1.0, n)), 6)
            pooled[enc, w] = roc_auc_score(y, p)  # every item once, in its own test fold
            for k in (0, 1):
                idx = np.flatnonzero(fold_of == k)
                _log_child(client, exp, parent, staging, SIM, "classification", grid, k, 0, _cls_rows(idx, y, p, k),
                           roc_auc_score(y[idx], p[idx]))
    ts = {(e, w): (pooled[e, w] - pooled[e, "scratch"]) / pooled[e, "scratch"] * 100
          for e, w in pooled if w != "scratch"}
    # the fabrication's premise: the transfer score falls from srcA to srcD
    assert ts["resnet18", "srcA"] > ts["resnet18", "srcB"] > ts["resnet18", "srcC"] > ts["resnet18", "srcD"]
    paths = rep.build_report(SIM, out_dir=tmp / "sim-report", n_resamples=500)
    return {"paths": paths, "ts": ts, "parent": parent}


def test_similarity_csv_and_spearman(sim_study):
    from scipy import stats as sps

    paths, ts = sim_study["paths"], sim_study["ts"]
    rows = _read(paths["similarity.csv"])
    got = {(r["encoder"], r["source"]): r for r in rows}
    assert set(got) == {("resnet18", w) for w in ("srcA", "srcB", "srcC", "srcD")} | {
        ("densenet121", "srcA"), ("densenet121", "srcB")}  # srcZ (not in the grid), imagenet (no distances): out
    for (enc, w), r in got.items():
        for m in ("frechet", "mmd2", "intensity"):
            assert float(r[m]) == SIM_DISTANCES[w][m]
        assert r["n_source"] == str(SIM_DISTANCES[w]["n"]) and r["n_target"] == "60"
        assert float(r["transfer_score"]) == pytest.approx(ts[enc, w], abs=1e-9)
        assert r["cell"] == f"classification/{enc}/{w}/none/lr0.001"
        assert r["scratch_cell"] == f"classification/{enc}/scratch/none/lr0.001"
    corr = {(r["group"].split(",")[0], r["measure"]): r for r in _read(paths["similarity_spearman.csv"])}
    assert len(corr) == 6
    srcs = ("srcA", "srcB", "srcC", "srcD")
    t18 = [ts["resnet18", w] for w in srcs]
    fr = corr["encoder=resnet18", "frechet"]
    assert fr["n"] == "4" and float(fr["rho"]) == pytest.approx(-1.0) and fr["p_method"] == "exact permutation"
    exact = sps.permutation_test((np.array(t18),), lambda b: sps.spearmanr([SIM_DISTANCES[w]["frechet"] for w in srcs],
                                                                           b).statistic,
                                 permutation_type="pairings", n_resamples=np.inf, vectorized=False).pvalue
    assert float(fr["p"]) == pytest.approx(exact) and exact == pytest.approx(2 / 24)
    for m in ("mmd2", "intensity"):
        x = [SIM_DISTANCES[w][m] for w in srcs]
        assert float(corr["encoder=resnet18", m]["rho"]) == pytest.approx(sps.spearmanr(x, t18).statistic, abs=1e-12)
    for m in ("frechet", "mmd2", "intensity"):  # two sources: undefined, not nan
        r = corr["encoder=densenet121", m]
        assert (r["n"], r["rho"], r["p"], r["note"]) == ("2", "", "", "n < 3: undefined")


def test_similarity_section_figure_and_notes(sim_study, study):
    from PIL import Image

    paths = sim_study["paths"]
    page = paths["report.html"].read_text()
    md = paths["report.md"].read_text()
    assert '<table id="similarity">' in page and '<table id="similarity-spearman">' in page
    assert "## Dataset similarity and transfer" in md
    assert "smaller = more similar" in page and "negative ρ" in page
    assert page.count("n &lt; 3: undefined") >= 3 and "n < 3: undefined" in md
    assert ">nan<" not in page.lower() and "| nan |" not in md.lower()
    assert re.search(r'<img class="figure" id="fig-similarity" alt="[^"]*" src="data:image/png;base64,', page)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert "(figures/similarity.png)" in md
    w, h = Image.open(paths["figures/similarity.png"]).size
    assert w > 600 and h > 200
    assert "srcZ not among the grid" in page and "no distances for weights source(s) imagenet" in page
    client = study["client"]
    logged = {Path(a.path).name for a in client.list_artifacts(sim_study["parent"], "report")}
    assert {"similarity.csv", "similarity_spearman.csv"} <= logged
    assert "similarity.png" in {Path(a.path).name for a in client.list_artifacts(sim_study["parent"], "report/figures")}
    # no similarity.json: no section, no CSV
    tmp, cpaths = study["tmp"], study["paths"]
    assert "similarity.csv" not in cpaths and not (tmp / cpaths["results.csv"]).with_name("similarity.csv").exists()
    cls_page = (tmp / cpaths["report.html"]).read_text()
    assert 'id="similarity' not in cls_page and "Dataset similarity" not in cls_page


def test_localization_csv_parsing(tmp_path):
    """Hits other than 0/1 read as unknown, rows with neither hit nor Dice dropped, iou optional,
    the label never read; a file without hit/dice columns is an error (the run stays in the AUC part)."""
    run = _run([1], [[0.2, 0.8]], ["a"], "classification/e/w", "w", 0, 0, 0.5)
    path = write_rows(tmp_path / "localization.csv", [
        {"item_id": "a", "fold": 0, "label": CLASSES[1], "hit": "True", "dice": "0.5"},
        {"item_id": "b", "fold": 0, "label": CLASSES[1], "hit": "0.5", "dice": "0.25"},
        {"item_id": "c", "fold": 0, "label": CLASSES[1], "hit": "", "dice": ""}])
    loc = read_localization(run, path)
    assert list(loc.item_id) == ["a", "b"] and np.isnan(loc.hit[1]) and loc.hit[0] == 1.0
    assert list(loc.dice) == [0.5, 0.25] and np.isnan(loc.iou).all()
    bad = write_rows(tmp_path / "bad.csv", [{"item_id": "a", "fold": 0, "score": 1}])
    with pytest.raises(ReportError, match="hit, dice"):
        read_localization(run, bad)
