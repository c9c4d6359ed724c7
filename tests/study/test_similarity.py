"""Dataset similarity: the distances behave as distances, and a near-duplicate source is closer
to the target than an unrelated one; Task2Vec tells the same task from another on the same images."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medxfer.study.similarity import (CohortSource, Task2VecSettings, dataset_similarities, dataset_similarity,
                                      filterwise, fisher_diagonal, frechet_distance, intensity_distance, mmd2_rbf,
                                      normalized_cosine_distance, similarity_hash, study_similarity)


def test_frechet_matches_the_gaussian_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (20000, 1))
    b = rng.normal(1.5, 2.0, (20000, 1))
    # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    assert frechet_distance(a, b) == pytest.approx(1.5 ** 2 + 1.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_mmd_and_intensity_grow_with_the_shift():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, (200, 8))
    same = rng.normal(0, 1, (200, 8))
    near, far = rng.normal(0.3, 1, (200, 8)), rng.normal(1.5, 1, (200, 8))
    assert abs(mmd2_rbf(base, same)) < mmd2_rbf(base, near) < mmd2_rbf(base, far)
    assert intensity_distance(base, same) < intensity_distance(base, near) < intensity_distance(base, far)


def test_a_near_duplicate_source_is_closer_than_an_unrelated_one(dental_cohort, tmp_path):
    from medxfer import synthetic
    from medxfer.ingest import ingest

    twin = synthetic.write_dental_export(tmp_path / "twin", n_patients=12, ceph=False, rng=np.random.default_rng(9))
    ingest(twin.root, tmp_path / "twin_cohort", workers=1)
    labels = synthetic.write_lesion_pngs(tmp_path / "us", n_images=12)
    ingest(tmp_path / "us" / "images", tmp_path / "us_cohort", labels=labels, key="image", modality="US", workers=1)

    kw = dict(target_modalities=["PX"], image_size=64, cache_dir=tmp_path / "cache")
    near = dataset_similarity(tmp_path / "twin_cohort", dental_cohort.manifest, **kw)
    far = dataset_similarity(tmp_path / "us_cohort", dental_cohort.manifest, **kw)
    assert near.n_source == 12 and near.n_target == 16 and far.n_source == 12
    assert near.frechet < far.frechet
    assert near.mmd2 < far.mmd2
    assert near.intensity < far.intensity
    again = dataset_similarity(tmp_path / "twin_cohort", dental_cohort.manifest, **kw)
    assert again == near  # seeded encoder, cached features: reproducible


def test_similarity_cli_prints_the_distances_and_names_a_bad_cohort(dental_cohort, tmp_path):
    from click.testing import CliRunner

    from medxfer import synthetic
    from medxfer.cli import main
    from medxfer.ingest import ingest

    labels = synthetic.write_lesion_pngs(tmp_path / "us", n_images=8)
    ingest(tmp_path / "us" / "images", tmp_path / "us_cohort", labels=labels, key="image", modality="US", workers=1)
    args = ["study", "similarity", str(tmp_path / "us_cohort"), str(dental_cohort.manifest), "--target-modality", "PX",
            "--image-size", "64", "--cache-dir", str(tmp_path / "cache")]
    out = CliRunner().invoke(main, args + ["--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["n_source"] == 8 and record["n_target"] == 16
    assert record["frechet"] > 0 and record["intensity"] > 0
    human = CliRunner().invoke(main, args)
    assert "Fréchet distance" in human.stdout and "smaller = more similar" in human.stdout
    bad = CliRunner().invoke(main, ["study", "similarity", str(tmp_path / "us"), str(dental_cohort.manifest)])
    assert bad.exit_code != 0 and "no manifest" in bad.output


# ---- Task2Vec


def test_normalized_cosine_distance_is_symmetric_zero_on_itself_and_scale_free():
    from scipy.spatial.distance import cosine

    rng = np.random.default_rng(0)
    a, b = rng.gamma(1.0, 1.0, 50), rng.gamma(1.0, 1.0, 50)
    d = normalized_cosine_distance(a, b)
    assert d == pytest.approx(cosine(a / (a + b), b / (a + b)), abs=1e-12)  # the paper's formula, via scipy
    assert d == pytest.approx(normalized_cosine_distance(b, a), abs=1e-15) and d > 0
    assert normalized_cosine_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert normalized_cosine_distance(a, 1e-9 * a) == pytest.approx(0.0, abs=1e-12)  # a Fisher's scale drops out
    assert normalized_cosine_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)  # disjoint: as far as can be
    assert normalized_cosine_distance([1.0, 0.0, 2.0], [3.0, 0.0, 6.0]) == pytest.approx(0.0, abs=1e-12)
    assert normalized_cosine_distance([0.0, 0.0], [1.0, 2.0]) == 1.0  # a task the probe is certain of everywhere
    with pytest.raises(ValueError, match="different lengths"):
        normalized_cosine_distance(a, b[:3])


@pytest.mark.parametrize("classes", [2, 3])
def test_fisher_of_logistic_regression_matches_the_closed_form(classes):
    """Softmax regression z = W x + c: ∂ log p(y|x) / ∂W_kj = (1[y = k] − p_k) x_j, so the Fisher's
    diagonal is E_x[p_k (1 − p_k) x_j²] (and E_x[p_k (1 − p_k)] for the bias)."""
    torch.manual_seed(0)
    model = nn.Linear(3, classes).double()
    x = torch.randn(4000, 3, dtype=torch.float64)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    weight = ((p * (1 - p)).T @ x ** 2 / len(x)).numpy()
    bias = (p * (1 - p)).mean(0).numpy()
    params = [model.weight, model.bias]
    exact = fisher_diagonal(model, (xi[None] for xi in x), params)
    assert np.allclose(exact[0].numpy(), weight, rtol=1e-8) and np.allclose(exact[1].numpy(), bias, rtol=1e-8)
    sampled = fisher_diagonal(model, (xi[None] for xi in x), params, torch.Generator().manual_seed(1))
    assert np.allclose(sampled[0].numpy(), weight, rtol=0.15) and np.allclose(sampled[1].numpy(), bias, rtol=0.15)
    assert not np.allclose(sampled[0].numpy(), weight, rtol=1e-6)  # drawn labels: an estimate, not the expectation
    assert np.allclose(filterwise(exact), np.concatenate([weight.mean(1), bias]))  # one value per output unit


def _two_property_pngs(root, n: int, seed: int):
    """``n`` gray 48×48 PNGs with two independent balanced properties: a bright disc or none
    (``disc``), horizontal or vertical stripes (``stripes``); the labels CSV names both."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    yy, xx = np.mgrid[0:48, 0:48].astype(np.float32)
    lines = ["image,disc,stripes"]
    for i in range(n):
        disc, vertical = i % 2, (i // 2) % 2
        img = 100 + 20 * rng.normal(size=(48, 48)) + 40 * np.sin((yy if vertical else xx) * np.pi / 4
                                                                   + rng.uniform(0, 2 * np.pi))
        if disc:
            cy, cx = rng.uniform(12, 36, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 250
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"img{i:03d}.png")
        lines.append(f"images/img{i:03d}.png,{'yes' if disc else 'no'},{'vertical' if vertical else 'horizontal'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    """Two ingested cohorts of such images (other draws), each labelled by both properties."""
    from medxfer.ingest import ingest

    root = tmp_path_factory.mktemp("two_tasks")
    for name, seed in (("target", 1), ("other", 2)):
        labels = _two_property_pngs(root / name, 32, seed)
        ingest(root / name / "images", root / f"{name}_cohort", labels=labels, key="image", modality="OT", workers=1)
    return root


@pytest.mark.usefixtures("one_torch_thread")
def test_task2vec_puts_the_same_task_closer_than_another_task_on_the_same_images(two_tasks):
    """Target: disc or not. Close: disc or not on other images. Far: stripe orientation on those same
    other images, so only the labels differ from close: Fréchet / MMD / intensity cannot tell them
    apart, Task2Vec must (a scratch resnet18 as the probe, two seeds)."""
    target = CohortSource(two_tasks / "target_cohort", label="disc")
    sources = {"close": CohortSource(two_tasks / "other_cohort", label="disc"),
               "far": CohortSource(two_tasks / "other_cohort", label="stripes")}
    for seed in (0, 1):
        sims = dataset_similarities(sources, target, image_size=32, cache_dir=two_tasks / "cache", seed=seed,
                                    task2vec=Task2VecSettings(max_items=32))
        close, far = sims["close"], sims["far"]
        assert (close.frechet, close.mmd2, close.intensity) == (far.frechet, far.mmd2, far.intensity)
        assert 0 < close.task2vec < far.task2vec, (seed, close.task2vec, far.task2vec)
        assert close.task2vec_note == far.task2vec_note == ""


def test_study_similarity_records_task2vec_and_why_a_source_has_none(two_tasks):
    """similarity.json: a distance for a labelled source, null with the reason for one without a
    label column, the settings and estimator; the cache key follows the Task2Vec settings."""
    labelled = {"manifest": str(two_tasks / "other_cohort" / "manifest.csv"), "modalities": None, "label": "disc",
                "classes": None}
    settings = {"encoder": "resnet18", "weights": "scratch", "image_size": 32, "in_channels": 1,
                "task2vec": {"max_items": 4, "epochs": 20},
                "sources": {"labelled": labelled, "imported": {**labelled, "label": None},
                            "itself": {**labelled, "manifest": str(two_tasks / "target_cohort" / "manifest.csv")}}}
    spec = SimpleNamespace(similarity=settings, manifest=two_tasks / "target_cohort" / "manifest.csv", label="disc",
                           data={}, train={"feature_cache_dir": str(two_tasks / "cache")}, task="classification")
    record = json.loads(json.dumps(study_similarity(spec)))
    assert record["task2vec"]["max_items"] == 4 and "Fisher" in record["task2vec"]["estimator"]
    assert math.isfinite(record["sources"]["labelled"]["task2vec"]) and record["sources"]["labelled"]["task2vec"] > 0
    assert record["sources"]["imported"]["task2vec"] is None
    assert "no label column" in record["sources"]["imported"]["task2vec_note"]
    assert record["sources"]["imported"]["frechet"] == record["sources"]["labelled"]["frechet"]
    assert record["sources"]["itself"]["task2vec"] == pytest.approx(0.0, abs=1e-12)  # seeded, no label draws

    def key(**change) -> str:
        return similarity_hash(SimpleNamespace(**{**vars(spec), **change}))

    base = key()
    assert key(similarity={**settings, "task2vec": {"max_items": 8, "epochs": 20}}) != base
    assert key(similarity={**settings, "task2vec": None}) != base
    assert key(label="stripes") != base  # the target's task changed
    relabelled = {**settings, "sources": {**settings["sources"], "labelled": {**labelled, "label": "stripes"}}}
    assert key(similarity=relabelled) != base
    off = {**settings, "task2vec": None}
    assert key(similarity={**relabelled, "task2vec": None}) == key(similarity=off)  # labels matter only with Task2Vec


def test_task2vec_needs_both_label_columns_and_a_segmentation_study_has_none(two_tasks):
    kw = dict(image_size=32, cache_dir=two_tasks / "cache", task2vec=Task2VecSettings(max_items=2, epochs=5))
    sim = dataset_similarity(two_tasks / "other_cohort", two_tasks / "target_cohort", source_label="disc", **kw)
    assert sim.task2vec is None and sim.task2vec_note.startswith("target: no label column")
    with pytest.raises(ValueError, match="no label column 'nope'"):
        dataset_similarity(two_tasks / "other_cohort", two_tasks / "target_cohort", source_label="nope",
                           target_label="disc", **kw)
    settings = {"encoder": "resnet18", "weights": "scratch", "image_size": 32, "in_channels": 1,
                "task2vec": {"max_items": 2, "epochs": 5},
                "sources": {"s": {"manifest": str(two_tasks / "other_cohort" / "manifest.csv"), "label": "disc"}}}
    spec = SimpleNamespace(similarity=settings, manifest=two_tasks / "target_cohort" / "manifest.csv", label="mask",
                           data={}, train={"feature_cache_dir": str(two_tasks / "cache")}, task="segmentation")
    entry = study_similarity(spec)["sources"]["s"]
    assert entry["task2vec"] is None and "segmentation study" in entry["task2vec_note"]


# ---- the report's similarity section with Task2Vec


def _cell(weights: str, transfer: float | None, flag: str = ""):
    from medxfer.study.report.model import CellSummary

    grid = {"encoder": "resnet18", "weights": weights}
    return CellSummary(cell=f"classification/resnet18/{weights}", task="classification", grid=grid, n_runs=1,
                       folds=["0"], seeds=["0"], metric="test_auc", mean=0.8, sd=math.nan, run_values=[0.8],
                       pooled=0.8, ci_low=0.7, ci_high=0.9, n_cases=40, transfer_score=transfer,
                       scratch_cell=None if weights == "scratch" else "classification/resnet18/scratch",
                       transfer_flag=flag)


# transfer falls from srcA to srcD; Task2Vec rises (rho = -1), Fréchet does not
DISTANCES = {"srcA": {"frechet": 9.0, "mmd2": 0.01, "intensity": 0.9, "n": 40, "task2vec": 0.10},
             "srcB": {"frechet": 3.0, "mmd2": 0.03, "intensity": 0.2, "n": 40, "task2vec": 0.20},
             "srcC": {"frechet": 5.0, "mmd2": 0.02, "intensity": 0.5, "n": 40, "task2vec": 0.35},
             "srcD": {"frechet": 7.0, "mmd2": 0.08, "intensity": 0.7, "n": 40, "task2vec": 0.50}}
TRANSFER = {"srcA": 12.0, "srcB": 8.0, "srcC": 3.0, "srcD": -1.0}


def _similarity_section(sources: dict, flags: dict[str, str] | None = None, **record):
    from medxfer.study.report.summarize import _similarity

    cells = [_cell("scratch", None)] + [_cell(w, TRANSFER[w], (flags or {}).get(w, "")) for w in TRANSFER]
    notes: list[str] = []
    data = {"encoder": "resnet18", "weights": "scratch", "image_size": 64, "target": {"n": 40},
            "sources": sources, **record}
    return _similarity(data, cells, ["encoder", "weights"], {"classification"}, notes), notes


def test_the_report_correlates_task2vec_with_the_transfer_score():
    from medxfer.study.report.tables import correlation_table, similarity_table

    sim, notes = _similarity_section(DISTANCES, task2vec={"max_items": 64, "epochs": 100})
    corr = {c.measure: c for c in sim.correlations}
    assert set(corr) == {"frechet", "mmd2", "intensity", "task2vec"}
    assert corr["task2vec"].n == 4 and corr["task2vec"].rho == pytest.approx(-1.0)
    assert corr["frechet"].rho == pytest.approx(0.2)  # ranks 4 1 2 3 against 4 3 2 1: 1 − 6·8 / (4·15)
    assert {r.source: r.task2vec for r in sim.rows} == {w: d["task2vec"] for w, d in DISTANCES.items()}
    table = similarity_table(SimpleNamespace(similarity=sim))
    assert "Task2Vec distance" in table.header and not any("Task2Vec" in n for n in notes)
    assert any(row[1] == "Task2Vec distance" for row in correlation_table(SimpleNamespace(similarity=sim)).rows)


def test_an_older_similarity_json_reports_without_task2vec():
    from medxfer.study.report.tables import similarity_table

    old = {w: {k: v for k, v in d.items() if k != "task2vec"} for w, d in DISTANCES.items()}
    sim, notes = _similarity_section(old)
    assert {c.measure for c in sim.correlations} == {"frechet", "mmd2", "intensity"}
    assert all(math.isnan(r.task2vec) for r in sim.rows)
    assert "Task2Vec distance" not in similarity_table(SimpleNamespace(similarity=sim)).header
    assert any("written before medxfer computed Task2Vec" in n for n in notes)


def test_a_source_without_task2vec_and_a_degenerate_baseline_leave_the_correlation_with_a_note():
    sources = {**DISTANCES, "srcD": {**DISTANCES["srcD"], "task2vec": None,
                                     "task2vec_note": "source: no label column (Task2Vec compares labelled tasks)"}}
    sim, notes = _similarity_section(sources, task2vec={"max_items": 64, "epochs": 100})
    corr = {c.measure: c for c in sim.correlations}
    assert corr["task2vec"].n == 3 and corr["frechet"].n == 4
    assert any("no Task2Vec distance for srcD: source: no label column" in n for n in notes)
    sim, notes = _similarity_section(DISTANCES, flags={"srcB": "scratch baseline AUC 0.50"},
                                     task2vec={"max_items": 64, "epochs": 100})
    assert {r.source for r in sim.rows} == set(DISTANCES)  # still in the table
    assert all(c.n == 3 for c in sim.correlations)  # but not correlated
    assert any("degenerate scratch baseline" in n and "srcB" in n for n in notes)


def test_the_spec_turns_task2vec_on_by_default_off_with_false_and_checks_its_labels(tmp_path):
    from medxfer.study.spec import SpecError, parse_spec

    from .conftest import write_manifest

    manifest = write_manifest(tmp_path, {"finding": lambda i: i % 2, "organ": lambda i: "ab"[i % 2]})

    def similarity(section) -> dict:
        raw = {"name": "t2v", "data": {"manifest": str(manifest), "label": "finding"},
               "grid": {"encoder": ["resnet18"], "weights": ["scratch"]}, "train": {"epochs": 1},
               "similarity": {"sources": {"imported": str(manifest)}, **section}}
        return parse_spec(raw).similarity

    default = similarity({})
    assert default["task2vec"] == {"max_items": 64, "epochs": 100}
    assert default["sources"]["imported"]["label"] is None  # an imported source has no label column unless named
    assert similarity({"task2vec": False})["task2vec"] is None
    named = similarity({"task2vec": {"max_items": 16, "labels": {"imported": "organ"}}})
    assert named["task2vec"] == {"max_items": 16, "epochs": 100} and named["sources"]["imported"]["label"] == "organ"
    with pytest.raises(SpecError, match=r"similarity.task2vec.labels: \['other'\] not among similarity.sources"):
        similarity({"task2vec": {"labels": {"other": "organ"}}})
    with pytest.raises(SpecError, match=r"similarity.task2vec.labels.imported: 'organs' is not a column"):
        similarity({"task2vec": {"labels": {"imported": "organs"}}})
    with pytest.raises(SpecError, match=r"max_items"):
        similarity({"task2vec": {"max_items": 1}})
