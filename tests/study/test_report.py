"""Study report: a study fabricated in a temporary SQLite MLflow store following
``docs/study-mlflow-layout.md``, reported, and checked against independent recomputations."""
from __future__ import annotations

import csv
import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medxfer.study import report as rep
from medxfer.study.report import ReportError

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
               end_time=None, config_hash=None):
    tags, name = _child_tags(study, task, grid, fold, seed, config_hash)
    tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, run_name=name, tags=tags)
    rid = run.info.run_id
    client.log_metric(rid, "test_auc" if task == "classification" else "test_dice", metric)
    d = tmp / rid
    d.mkdir()
    fname = "predictions.csv" if task == "classification" else "per_case.csv"
    with open(d / fname, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    client.log_artifact(rid, str(d / fname))
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
        _log_child(client, exp, parent, staging, CLS, "classification", grid, 0, 0,
                   _cls_rows(idx, y, y.astype(float), 0), 1.0, status="FAILED", end_time=now + 5000)
        # an older FINISHED run of resnet18/imagenet/fold1 (same config_hash, earlier end, later start)
        # with inverted predictions: superseded by the run above
        grid = {"encoder": "resnet18", "weights": "imagenet", "freeze": "none", "lr": "0.001"}
        idx = np.flatnonzero(fold_of == 1)
        chash = _child_tags(CLS, "classification", grid, 1, 0)[0]["config_hash"]
        _log_child(client, exp, parent, staging, CLS, "classification", grid, 1, 0,
                   _cls_rows(idx, y, 1.0 - y.astype(float), 1), 0.0, end_time=now - 60_000, config_hash=chash)
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

        t0 = time.perf_counter()
        paths = rep.build_report(CLS)
        truth["seconds"] = time.perf_counter() - t0
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
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (tmp / paths["report.md"]).parent.joinpath(link).is_file()
    page = (tmp / paths["report.html"]).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert page.count('<img class="figure"') == 3 and page.count('src="data:image/png;base64,') == 3
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
    assert issubclass(ReportError, ValueError)


def test_report_is_fast(study):
    assert study["seconds"] < 20  # 12 runs × 90 items, 2000 bootstrap resamples per cell


def _run(y, prob, item_ids, cell, weights, fold, seed, metric):
    return rep.ChildRun(run_id=f"r{cell}{fold}{seed}", name=f"{cell}/fold{fold}/seed{seed}", cell=cell,
                        task="classification", grid={"encoder": "e", "weights": weights}, fold=str(fold),
                        seed=str(seed), metric=metric, item_id=np.array(item_ids, dtype=object), y=np.asarray(y),
                        prob=np.asarray(prob, dtype=float))


def test_multiclass_and_multiseed_in_memory(tmp_path):
    """No MLflow: a 3-class study (macro OvR AUC, no CI/DeLong) and a 2-seed binary study
    (clustered bootstrap, DeLong on seed-averaged probabilities)."""
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
        assert np.isnan(c.ci_low) and c.n_classes == 3
    (cmp_,) = s3.comparisons
    assert cmp_.test == "n/a (multi-class)" and np.isnan(cmp_.p) and np.isnan(cmp_.p_holm)

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
    assert len(re.findall(r'<img class="figure"', dom)) == 3

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
    assert len(sizes) == 3
    for s in sizes:
        w, h = map(int, s.split("x"))
        assert w > 200 and h > 200

    # and they are drawn: the screenshot has coloured (non-gray) pixels, which only the figures have
    shot = tmp_path / "shot.png"
    out = _chromium(html_path.as_uri(), tmp_path / "profile3", f"--screenshot={shot}", "--window-size=1200,2000",
                    "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000", "--hide-scrollbars")
    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert (img < 250).any(axis=2).mean() > 0.02  # not blank
    colour = (np.abs(img[..., 0] - img[..., 2]) > 60) | (np.abs(img[..., 1] - img[..., 2]) > 60)
    assert colour.sum() > 2000
