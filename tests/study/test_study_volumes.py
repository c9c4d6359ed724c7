"""Studies on volumes (issue 13): a NIfTI-volume cohort cut into 2.5D slice samples runs through
`medxfer study run` (full networks and `freeze: all` cells on cached per-slice features), and the
report's AUCs, CIs and DeLong tests are per volume, computed from predictions.csv rows that are
volumes, with the methods text saying so. A study of 2D items keeps its methods text."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from medxfer.cli import main
from medxfer.study import load_spec
from medxfer.study import report as rep
from medxfer.study.grid import expand
from medxfer.study.report.prose import methods
from medxfer.study.runner import study_state
from tests.conftest import find_identifiers

N_VOLUMES = 24
SHAPE = (16, 16, 12)  # 12 slices: range:0.25-0.75 keeps slices 3..8
SLICES_KEPT = 6
NAMES = [f"Quigley_Zebediah_{i:03d}" for i in range(N_VOLUMES)]  # source file names: never in an output


def _write_volumes(src: Path) -> None:
    """Volumes whose positive class has a bright block in slices 4-7 (inside the kept range)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    src.mkdir(parents=True)
    rows = []
    for i, name in enumerate(NAMES):
        volume = rng.integers(0, 90, SHAPE).astype(np.uint8)
        if i % 2:
            volume[5:11, 5:11, 4:8] += 60
        nib.save(nib.Nifti1Image(volume, np.eye(4)), src / f"{name}.nii.gz")
        rows.append({"image": f"{name}.nii.gz", "label": ["neg", "pos"][i % 2]})
    with open(src / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "label"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def volume_cohort(tmp_path) -> Path:
    """24 NIfTI volumes ingested (`medxfer ingest`) and split into 3 folds: the manifest."""
    src, out = tmp_path / "src", tmp_path / "cohort"
    _write_volumes(src)
    runner = CliRunner()
    ingest = runner.invoke(main, ["ingest", str(src), "--out", str(out), "--labels", str(src / "labels.csv"),
                                  "--key", "image", "--modality", "OT", "--workers", "1", "--no-progress"])
    assert ingest.exit_code == 0, ingest.output
    split = runner.invoke(main, ["split", str(out), "--folds", "3", "--stratify", "label"])
    assert split.exit_code == 0, split.output
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == N_VOLUMES and {r["kind"] for r in rows} == {"volume"}
    return out / "manifest.csv"


def _import_random_weights(tmp_path: Path) -> None:
    """A second weights source, ``mine``: a randomly initialised ResNet18 imported as a weights file."""
    import torch

    from medxfer.models import create_encoder
    from medxfer.models.weights import import_weights, save_checkpoint

    torch.manual_seed(7)
    path = save_checkpoint(tmp_path / "mine.pt", create_encoder("resnet18", "scratch", 3))
    import_weights(path, name="mine", arch="resnet18", fmt="medxfer")


def _predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_volume_study_reports_per_volume_auc_cis_and_delong(volume_cohort, mlflow_store, tmp_path, monkeypatch):
    from medxfer.engine import features

    _import_random_weights(tmp_path)
    saves = []
    save = features._save_atomic
    monkeypatch.setattr(features, "_save_atomic", lambda tensor, path: (saves.append(path), save(tensor, path)))
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "vols", "data": {"manifest": str(volume_cohort), "label": "label", "folds": 3},
        "grid": {"weights": ["scratch", "mine"], "freeze": ["none", "all"]}, "seeds": [0],
        "train": {"encoder": "resnet18", "epochs": 1, "image_size": 32, "batch_size": 16, "input": "2.5d",
                  "slices": "range:0.25-0.75", "aggregate": "mean"}}))
    spec = load_spec(spec_file)
    runner = CliRunner()
    result = runner.invoke(main, ["study", "run", str(spec_file)])
    assert result.exit_code == 0, result.output
    assert "12 ran, 0 already done, 0 failed" in result.output

    # every run trained on slice samples and tested per volume: predictions.csv rows are volumes
    _, by_hash = study_state(spec, expand(spec))
    runs = [r for found in by_hash.values() for r in found]
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    items = {r["item_id"] for r in csv.DictReader(open(volume_cohort))}
    tested: dict[str, list[dict[str, str]]] = {}
    for run in runs:
        params = run.data.params
        assert (params["input"], params["slices"], params["aggregate"]) == ("2.5d", "range:0.25-0.75", "mean")
        assert params["data.results_per"].startswith("item")
        tags = run.data.tags  # the run folder is named by the full name: cell, fold, seed
        folder = f"{tags['cell']}/fold{tags['fold']}/seed{tags['seed']}".replace("/", "_")
        rows = _predictions(Path("runs") / "vols" / folder / "predictions.csv")
        assert len(rows) == int(params["data.n_test"]) == len({r["item_id"] for r in rows})
        assert int(params["data.n_test_samples"]) == SLICES_KEPT * len(rows)  # slices went in, volumes came out
        tested.setdefault(run.data.tags["cell"], []).extend(rows)
    assert len(tested) == 4
    for rows in tested.values():  # over the 3 test folds: every volume once, no slice rows
        assert len(rows) == N_VOLUMES and {r["item_id"] for r in rows} == items

    # freeze: all cells: features per slice computed once per encoder + weights, then read from the cache
    cache = volume_cohort.parent / ".medxfer" / "features"
    extractors = [p for p in cache.iterdir() if p.is_dir()]
    assert len(extractors) == 2  # (resnet18, scratch) and (resnet18, mine)
    assert all(len(list(p.glob("*.pt"))) == N_VOLUMES * SLICES_KEPT for p in extractors)
    assert len(saves) == len(set(saves)) == 2 * N_VOLUMES * SLICES_KEPT  # folds 1 and 2 read fold 0's features

    report = runner.invoke(main, ["study", "report", "vols", "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    cells = {r["cell"]: r for r in csv.DictReader(open(tmp_path / "report" / "results.csv"))}
    assert len(cells) == 4
    for cell, row in cells.items():
        y = np.array([int(r["y"]) for r in tested[cell]])
        p = np.array([float(r["p"]) for r in tested[cell]])
        assert row["n_cases"] == str(N_VOLUMES) and row["pooled_kind"] == "OOF AUC"
        assert float(row["pooled"]) == pytest.approx(roc_auc_score(y, p), abs=1e-6)  # volume-level OOF AUC
        assert float(row["ci_low"]) <= float(row["pooled"]) <= float(row["ci_high"])
    comparisons = list(csv.DictReader(open(tmp_path / "report" / "comparisons.csv")))
    assert {(c["group"], c["source_a"], c["source_b"], c["test"]) for c in comparisons} == {
        ("freeze=none", "mine", "scratch", "DeLong"), ("freeze=all", "mine", "scratch", "DeLong")}
    for c in comparisons:
        assert c["n_cases"] == str(N_VOLUMES) and 0.0 <= float(c["p"]) <= 1.0
        y = np.array([int(r["y"]) for r in sorted(tested[c["cell_a"]], key=lambda r: r["item_id"])])
        for side in ("a", "b"):
            rows = sorted(tested[c[f"cell_{side}"]], key=lambda r: r["item_id"])
            assert float(c[side]) == pytest.approx(roc_auc_score(y, [float(r["p"]) for r in rows]), abs=1e-6)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "every result is per item (volume / cine), never per sample" in md
    assert "input 2.5d (slice k with its neighbours k−1 and k+1 as the three channels" in md
    assert "slices range:0.25-0.75 (the slices / frames from 25 % to 75 % of the slice axis)" in md
    assert "aggregate mean (an item's probability is the mean of its samples' probabilities)" in md
    assert f"{SLICES_KEPT:.1f} samples per tested item on average" in md

    outputs = [tmp_path / p for p in ("report", "runs", "mlruns", "artifacts", "mlflow.db")] + [cache]
    leaks = [hit for root in outputs if root.exists()
             for hit in find_identifiers(root, NAMES + ["Quigley", "Zebediah"], (".png",))]
    assert leaks == [], leaks


# ---- the methods text, from runs as collected (no training)


def _run(cell: str, weights: str, fold: int, y: np.ndarray, p: np.ndarray, ids: list[str],
         sampling: dict[str, str]) -> rep.ChildRun:
    return rep.ChildRun(run_id=f"{cell}-{fold}", name=f"{cell}/fold{fold}/seed0", cell=cell, task="classification",
                        grid={"encoder": "resnet18", "weights": weights}, fold=str(fold), seed="0",
                        metric=roc_auc_score(y, p), item_id=np.array(ids, dtype=object), y=y,
                        prob=np.c_[1 - p, p], sampling=dict(sampling))


def _study(sampling: dict[str, dict[str, str]]) -> rep.StudySummary:
    rng = np.random.default_rng(0)
    runs = []
    for weights in ("imagenet", "scratch"):
        for fold in (0, 1):
            y = np.arange(20) % 2
            p = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, 20))))
            ids = [f"item{fold}-{i}" for i in range(20)]
            runs.append(_run(f"classification/resnet18/{weights}", weights, fold, y, p, ids,
                             sampling.get(weights, {})))
    return rep.summarize(rep.StudyRuns("s", None, None, ["encoder", "weights"], runs), n_resamples=50)


SLICED = {"input": "2.5d", "slices": "every:2", "aggregate": "top:3", "data.n_test": "20",
          "data.n_test_samples": "160", "data.results_per": "item (top:3 of its slice / frame samples)"}


def test_methods_say_results_are_per_item_with_the_runs_slice_settings():
    text = methods(_study({"imagenet": SLICED, "scratch": SLICED}))
    assert ("The items are volumes or cines, cut into 2D slice / frame samples for the 2D networks, and every "
            "result is per item (volume / cine), never per sample: input 2.5d (slice k with its neighbours k−1 and "
            "k+1 as the three channels, the end slice repeated at the edges), slices every:2 (every 2nd slice / "
            "frame: 0, 2, 4, …), aggregate top:3 (an item's probability is the mean of its 3 highest sample "
            "probabilities); 8.0 samples per tested item on average (640 sample predictions made 80 item "
            "predictions in 4 runs).") in text
    assert "so the AUCs, their CIs, the DeLong tests and the Cases column count items" in text
    assert "(cells " not in text and "The other cells" not in text  # one setting for the whole study

    # settings that differ between cells are told apart; 2D cells are named as such
    mixed = methods(_study({"imagenet": SLICED, "scratch": {**SLICED, "input": "2d", "slices": "center",
                                                              "aggregate": "max"}}))
    assert "(cells classification/resnet18/imagenet)" in mixed
    assert "input 2d (one slice or frame per sample), slices center (the middle slice / frame), aggregate max" in mixed
    only_one = methods(_study({"imagenet": SLICED}))
    assert "The other cells (classification/resnet18/scratch) trained on 2D items, one image per sample." in only_one


def test_a_study_of_2d_items_keeps_its_methods_text():
    plain = _study({})
    assert plain.sampling == []
    text = methods(plain)
    assert text.startswith("Each cell is one combination of grid values, trained once per cross-validation fold and "
                           "seed. Mean ± SD is over the cell's runs, each scored on its own held-out test fold "
                           "(sample SD). The pooled out-of-fold (OOF) AUC")
    assert "volume" not in text and "slice" not in text
