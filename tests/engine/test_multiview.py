"""Multi-view samples (mammography CC + MLO per breast): assembly, fusion, the bundle and the grid."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medxfer.engine import CohortError, load_cohort
from medxfer.transforms.pipelines import classification_transforms
from medxfer.engine.multiview import MultiViewError, group_views
from medxfer.models import create_classifier
from medxfer.models.classifier import MultiViewClassifier


def _rows(manifest):
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def test_each_breast_of_each_exam_is_one_sample_with_its_views_in_order(mammography_cohort):
    rows = {r["item_id"]: r for r in _rows(mammography_cohort.manifest)}
    cohort = load_cohort(mammography_cohort.manifest, "pathology", fold=0, views=["cc", "MLO"])
    samples = cohort.train + cohort.val + cohort.test
    assert len(samples) == 12 * 2 and not cohort.skipped  # 12 patients × 2 breasts, nothing left out
    for s in samples:
        members = [rows[v["item_id"]] for v in s["views"]]
        assert [m["view"] for m in members] == ["CC", "MLO"]
        assert len({(m["study"], m["laterality"]) for m in members}) == 1
        assert s["item_id"] == "+".join(m["item_id"] for m in members)
        assert cohort.classes[s["label"]] == members[0]["pathology"] == members[1]["pathology"]
    assert len({s["item_id"] for s in samples}) == len(samples)
    # grouped by patient, a sample would mix a normal and an abnormal breast: an error, not a guess
    with pytest.raises(CohortError, match="different labels"):
        load_cohort(mammography_cohort.manifest, "pathology", fold=0, views=["CC", "MLO"], group_by="patient")
    with pytest.raises(CohortError, match="localization scores single images"):  # refused before training
        load_cohort(mammography_cohort.manifest, "pathology", fold=0, views=["CC", "MLO"], localization=True)


def _pairs(n_groups=3):
    pairs = []
    for g in range(n_groups):
        for view in ("CC", "MLO"):
            row = {"study": f"s{g}", "laterality": "L", "view": view, "item_id": f"{g}{view}"}
            pairs.append((row, {"item_id": f"{g}{view}", "label": g % 2, "fold": 0, "image_path": "x"}))
    return pairs


def test_incomplete_groups_extra_images_and_other_views_are_counted_never_silent():
    pairs = _pairs(3)
    del pairs[1]  # group 0 loses its MLO
    pairs.append(({"study": "s1", "laterality": "L", "view": "CC", "item_id": "0dup"},
                  {"item_id": "0dup", "label": 1, "fold": 0, "image_path": "x"}))  # a repeated CC exposure
    pairs.append(({"study": "s2", "laterality": "L", "view": "ML", "item_id": "2ML"},
                  {"item_id": "2ML", "label": 0, "fold": 0, "image_path": "x"}))
    samples, skipped = group_views(pairs, ["CC", "MLO"], None)
    assert [s["item_id"] for s in samples] == ["0dup+1MLO", "2CC+2MLO"]  # smallest item id kept
    assert skipped == {"incomplete_view_group": 1, "extra_view_image": 1, "other_view": 1}


def test_views_that_disagree_on_label_or_fold_are_an_error_naming_the_group():
    pairs = _pairs(1)
    pairs[1][1]["label"] = 1
    with pytest.raises(MultiViewError, match=r"0CC\+0MLO.*different labels"):
        group_views(pairs, ["CC", "MLO"], None)
    pairs = _pairs(1)
    pairs[1][1]["fold"] = 3
    with pytest.raises(MultiViewError, match="different folds"):
        group_views(pairs, ["CC", "MLO"], None)
    with pytest.raises(MultiViewError, match="at most 3 views"):
        create_classifier("resnet18", views=["CC", "MLO", "ML", "LM"], fusion="early")


def test_late_fusion_stacks_views_and_early_fusion_makes_them_channels(mammography_cohort):
    cohort = load_cohort(mammography_cohort.manifest, "malignant", fold=0, views=["CC", "MLO"])
    sample = cohort.train[0]
    late = create_classifier("resnet18", in_channels=1, views=["CC", "MLO"], fusion="late")
    x = classification_transforms(64, 1, late.preprocessing, False, views=late.views, fusion="late")(sample)["image"]
    assert tuple(x.shape) == (2, 1, 64, 64)
    single = classification_transforms(64, 1, late.preprocessing, False)
    for i, view in enumerate(sample["views"]):  # each view went through its own single-image pipeline
        torch.testing.assert_close(x[i], single(view)["image"])

    early = create_classifier("resnet18", in_channels=1, views=["CC", "MLO"], fusion="early")
    assert early.encoder.in_channels == 3  # a 3-channel stem reads [CC, MLO, mean]
    y = classification_transforms(64, 1, early.preprocessing, False, views=early.views, fusion="early")(sample)["image"]
    assert tuple(y.shape) == (3, 64, 64)
    p = early.preprocessing
    raw = torch.stack([y[c] * float(p.std[c]) + float(p.mean[c]) for c in range(3)])  # undo the normalisation
    raw = raw / float(p.scale) if getattr(p, "scale", None) else raw
    torch.testing.assert_close(raw[2], (raw[0] + raw[1]) / 2, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(raw[0], raw[1])


def test_late_fusion_shares_one_encoder_and_keeps_view_order():
    torch.manual_seed(0)
    single = create_classifier("resnet18", in_channels=1)
    model = create_classifier("resnet18", in_channels=1, views=["CC", "MLO"], fusion="late").eval()
    assert isinstance(model, MultiViewClassifier)
    n_encoder = lambda m: sum(p.numel() for p in m.encoder.parameters())  # noqa: E731
    assert n_encoder(model) == n_encoder(single)  # one encoder for both views
    assert model.head.in_features == 2 * single.head.in_features
    x = torch.randn(3, 2, 1, 64, 64)
    with torch.no_grad():
        out, swapped = model(x), model(x.flip(1))
        per_view = [model.features(torch.stack([x[:, i], x[:, i]], 1))[:, :512] for i in range(2)]
    assert out.shape == (3, 2) and not torch.allclose(out, swapped)
    torch.testing.assert_close(model.features(x), torch.cat(per_view, 1))
    with pytest.raises(ValueError, match="2 views"):
        model(torch.randn(3, 1, 64, 64))


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_the_classification_bundle_trains_on_exams(mammography_cohort, mlflow_store, tmp_path, fusion):
    import mlflow

    from medxfer.engine import train_bundle
    from medxfer.engine.predict import load_run_model

    result = train_bundle("classification", manifest=str(mammography_cohort.manifest), label="malignant",
                          encoder="resnet18", weights="scratch", epochs=1, image_size=64, batch_size=4,
                          in_channels=1, views=["CC", "MLO"], fusion=fusion, output_dir=str(tmp_path / "run"))
    run = mlflow.get_run(result.run_id)
    assert run.data.params["views"] == "CC+MLO" and run.data.params["fusion"] == fusion
    assert run.data.params["data.n_test"] == "6"  # 3 patients × 2 breasts in the test fold
    preds = _rows(tmp_path / "run" / "predictions.csv")
    assert len(preds) == 6 and all(r["item_id"].count("+") == 1 for r in preds)
    assert np.isfinite(result.metrics["test_auc"])
    with pytest.raises(CohortError, match="multi-view samples"):
        load_run_model(result.run_id)  # predict reads single images: said, not mis-run


def test_a_frozen_late_fusion_head_trains_from_per_sample_cached_features(mammography_cohort, mlflow_store, tmp_path):
    from medxfer.engine import train_bundle

    cache = tmp_path / "cache"
    kw = dict(manifest=str(mammography_cohort.manifest), label="pathology", encoder="resnet18", weights="scratch",
              epochs=1, image_size=64, batch_size=8, in_channels=1, views=["CC", "MLO"], fusion="late",
              feature_cache_dir=str(cache))
    result = train_bundle("classification", config="train_features", output_dir=str(tmp_path / "a"), **kw)
    files = list(cache.rglob("*.pt"))
    assert len(files) == 24  # one pooled (2 × 512) vector per breast sample
    assert torch.load(files[0], weights_only=True).shape == (1024,)
    assert np.isfinite(result.metrics["test_auc"])
