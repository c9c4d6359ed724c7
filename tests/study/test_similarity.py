"""Dataset similarity: the distances behave as distances, and a near-duplicate source is closer
to the target than an unrelated one."""
from __future__ import annotations

import numpy as np
import pytest

from medxfer.study.similarity import dataset_similarity, frechet_distance, intensity_distance, mmd2_rbf


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
    import json

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
