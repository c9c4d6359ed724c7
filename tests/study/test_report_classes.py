"""Per-class results of native 3D segmentation studies: runs whose per_case.csv carries ``dice_<class>``
columns (fabricated in a SQLite MLflow store, no training) get per-class mean ± SD, bootstrap CIs and
Wilcoxon comparisons in the report's tables and CSVs; a study without them keeps its outputs."""
from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from medxfer.study import report as rep
from medxfer.study.report.csv_export import write_results_csv
from tests.study.conftest import write_rows

STUDY = "seg3d"
N_CASES = 30
GAIN = {("organs", "anterior"): 0.1, ("organs", "posterior"): 0.0, ("scratch", "anterior"): 0.0,
        ("scratch", "posterior"): 0.0}
LEFT_OUT = ("grid: 1 of 4 cells left out, combinations that cannot run (a sparse grid): encoder=unet_3d with "
            "weights=organs (unet_3d is a plain MONAI baseline: weights scratch and freeze none only)")
PARAMS_3D = {"input": "3d", "roi_size": "[32, 32, 32]", "spacing": "None", "slices": "None",
             "data.results_per": "volume (sliding-window prediction of the whole volume; Dice and HD95 per class, "
                                 "test_dice their mean)"}


def _item(i: int) -> str:
    return hashlib.sha256(f"medxfer-3d-case-{i}".encode()).hexdigest()[:16]



def _per_case(dice: dict[str, np.ndarray], cases: np.ndarray, fold: int) -> list[dict]:
    rows = []
    for i in cases:
        per_class = {f"dice_{name}": f"{d[i]:.6f}" for name, d in dice.items()}
        mean = float(np.mean([float(v) for v in per_class.values()]))
        rows.append({"item_id": _item(i), "fold": fold, "dice": f"{mean:.6f}", "hd95_px": "2.0", "hd95_mm": "3.0",
                     **per_class, **{f"hd95_mm_{name}": "3.0" for name in dice}})
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """resnet18_3d × {organs, scratch} and unet_3d × scratch, 2 folds, one seed; per_case.csv with two classes.
    Yields the per-case Dice each cell was given (cell -> class -> array over cases) and the report paths."""
    import mlflow

    tmp = tmp_path_factory.mktemp("report3d")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.create_experiment(f"medxfer/{STUDY}")
        parent = client.create_run(exp, run_name=f"study/{STUDY}", tags={
            "medxfer.study": STUDY, "medxfer.role": "study", "medxfer.spec_hash": "0" * 16}).info.run_id
        rng = np.random.default_rng(3)
        base = {name: rng.uniform(0.5, 0.8, N_CASES) for name in ("anterior", "posterior")}
        fold_of = np.arange(N_CASES) % 2
        truth, hashes = {}, []
        for encoder, weights in (("resnet18_3d", "organs"), ("resnet18_3d", "scratch"), ("unet_3d", "scratch")):
            cell = f"segmentation/{encoder}/{weights}/none/lr0.001"
            dice = {name: np.round(np.clip(base[name] + GAIN[weights, name] + rng.normal(0, 0.02, N_CASES), 0, 1), 6)
                    for name in ("anterior", "posterior")}
            truth[cell] = dice
            for fold in (0, 1):
                config_hash = hashlib.sha1(f"{cell}/{fold}".encode()).hexdigest()[:20]
                hashes.append(config_hash)
                tags = {"medxfer.study": STUDY, "medxfer.role": "cell", "task": "segmentation", "cell": cell,
                        "config_hash": config_hash, "fold": str(fold), "seed": "0", "mlflow.parentRunId": parent,
                        "medxfer.grid_keys": "encoder,weights,freeze,lr", "encoder": encoder, "weights": weights,
                        "freeze": "none", "lr": "0.001"}
                run = client.create_run(exp, run_name=f"{cell}/fold{fold}/seed0", tags=tags).info.run_id
                for key, value in PARAMS_3D.items():
                    client.log_param(run, key, value)
                rows = _per_case(dice, np.flatnonzero(fold_of == fold), fold)
                client.log_metric(run, "test_dice", float(np.mean([float(r["dice"]) for r in rows])))
                (tmp / run).mkdir()
                client.log_artifact(run, str(write_rows(tmp / run / "per_case.csv", rows)))
                client.set_terminated(run, "FINISHED")
        (tmp / "grid").mkdir()
        (tmp / "grid" / "grid.json").write_text(json.dumps({"spec_hash": "0" * 16, "config_hashes": hashes,
                                                            "left_out": [LEFT_OUT]}))
        client.log_artifact(parent, str(tmp / "grid" / "grid.json"))
        paths = rep.build_report(STUDY, out_dir=tmp / "report", log_to_parent=False)
        yield {"truth": truth, "paths": paths}


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_results_csv_has_each_class_pooled_with_its_ci_and_per_run_mean(study):
    rows = {r["cell"]: r for r in _read(study["paths"]["results.csv"])}
    assert len(rows) == 3
    for cell, dice in study["truth"].items():
        row = rows[cell]
        for name, d in dice.items():
            assert float(row[f"dice_{name}"]) == pytest.approx(d.mean(), abs=1e-9)  # every case once (one seed)
            assert float(row[f"dice_{name}_ci_low"]) < d.mean() < float(row[f"dice_{name}_ci_high"])
            runs = [d[np.arange(N_CASES) % 2 == fold].mean() for fold in (0, 1)]
            assert float(row[f"dice_{name}_mean"]) == pytest.approx(np.mean(runs), abs=1e-9)
            assert float(row[f"dice_{name}_sd"]) == pytest.approx(np.std(runs, ddof=1), abs=1e-9)
            assert row[f"dice_{name}_cases"] == str(N_CASES)
        assert float(row["pooled"]) == pytest.approx(np.mean([dice["anterior"], dice["posterior"]]), abs=1e-5)


def test_classes_are_compared_between_sources_as_a_holm_family_of_their_own(study):
    rows = _read(study["paths"]["comparisons.csv"])
    assert [r["metric"] for r in rows] == ["Dice", "dice_anterior", "dice_posterior"]  # unet_3d has no pair
    mean, anterior, posterior = rows
    assert {(r["source_a"], r["source_b"], r["test"], r["n_cases"]) for r in rows} == {
        ("organs", "scratch", "Wilcoxon signed-rank", str(N_CASES))}
    assert float(mean["p_holm"]) == float(mean["p"])  # the mean Dice: a family of one
    assert float(anterior["difference"]) == pytest.approx(0.1, abs=0.02) and float(anterior["p"]) < 0.001
    assert abs(float(posterior["difference"])) < 0.03
    p = sorted([float(anterior["p"]), float(posterior["p"])])
    assert float(anterior["p_holm"]) == pytest.approx(min(1.0, 2 * p[0]))  # Holm over the two classes
    assert float(posterior["p_holm"]) == pytest.approx(max(min(1.0, 2 * p[0]), p[1]))


def test_the_report_shows_per_class_tables_the_3d_methods_and_the_cells_left_out(study):
    md = study["paths"]["report.md"].read_text()
    assert f"- {LEFT_OUT}" in md
    assert ("The networks are native 3D (input 3d): they train on patches of [32, 32, 32] voxels, each volume on its "
            "own voxel grid (or the weights' spacing), random patches centred on foreground") in md
    assert "cut into 2D slice / frame samples" not in md  # whole volumes, not slices
    assert "the per-class p-values form a family of their own (see there)" in md
    assert "## Per-class Dice" in md and "### Per-class comparisons" in md
    assert "| encoder | weights | freeze | lr | Class | Runs | Mean ± SD (per run) | Dice | 95 % CI | Cases |" in md
    assert md.count("| resnet18_3d | organs | none | 0.001 | anterior | 2 |") == 1
    assert "| encoder=resnet18_3d, freeze=none, lr=0.001 | posterior | organs | scratch | 30 |" in md
    assert md.index("## Comparisons") < md.index("## Per-class Dice") < md.index("## Figures")
    page = study["paths"]["report.html"].read_text()
    assert '<table id="classes">' in page and '<table id="class-comparisons">' in page
    assert page.count('data-cell="segmentation/unet_3d/scratch/none/lr0.001"') == 3  # cells table + 2 classes


def _run(cell: str, weights: str, fold: int, classes: dict[str, np.ndarray]) -> rep.ChildRun:
    ids = np.array([f"case{fold}-{i}" for i in range(12)], dtype=object)
    dice = np.mean(list(classes.values()), axis=0) if classes else np.linspace(0.6, 0.8, 12)
    return rep.ChildRun(run_id=f"{cell}-{fold}", name=f"{cell}/fold{fold}/seed0", cell=cell, task="segmentation",
                        grid={"encoder": "resnet18", "weights": weights}, fold=str(fold), seed="0",
                        metric=float(np.mean(dice)), item_id=ids, dice=dice, class_dice=dict(classes))


@pytest.mark.parametrize("classes", [{}, {"foreground": np.linspace(0.6, 0.8, 12)}])
def test_without_two_classes_the_outputs_stay_as_they_were(tmp_path, classes):
    """2D studies (no dice_<class> columns) and binary 3D ones (dice_foreground is the dice column itself)."""
    runs = [_run(f"segmentation/resnet18/{w}", w, fold, classes) for w in ("imagenet", "scratch") for fold in (0, 1)]
    summary = rep.summarize(rep.StudyRuns("s", None, None, ["encoder", "weights"], runs), n_resamples=50)
    assert summary.class_cells == [] and summary.class_comparisons == [] and summary.native == []
    assert [c.metric for c in summary.comparisons] == ["Dice"]
    write_results_csv(summary, tmp_path / "results.csv")
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == (
        "study,cell,task,encoder,weights,n_runs,folds,seeds,metric,mean,sd,pooled,ci_low,ci_high,transfer_score,"
        "pooled_kind,n_cases,scratch_cell,transfer_score_fold_mean,transfer_score_fold_sd,transfer_folds,"
        "transfer_flag,flag,n_patients")
    paths = rep.write_report(summary, tmp_path / "report")
    md = paths["report.md"].read_text()
    assert "Per-class" not in md and "native 3D" not in md
    assert "All p-values of this report are adjusted together with Holm's step-down method (p (Holm))." in md
    assert not math.isnan(summary.cells[0].pooled)
