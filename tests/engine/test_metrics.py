"""Classification metrics: AUC (binary / macro one-vs-rest), Youden operating point, class weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medxfer.engine.classification import classification_metrics, class_weights, roc_auc, youden_thresholds
from medxfer.engine.data import Cohort


def test_binary_youden_point_and_metrics():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    prob = np.stack([1 - p1, p1], 1)
    assert roc_auc(y, prob) == pytest.approx(roc_auc_score(y, p1)) == pytest.approx(15 / 16)
    (t,) = youden_thresholds(y, prob)
    assert t == pytest.approx(0.7) or t == pytest.approx(0.4)  # both give J = 0.75
    m = classification_metrics(y, prob, [0.4])
    assert m["test_sensitivity"] == 1.0 and m["test_specificity"] == 0.75 and m["test_accuracy"] == 0.75
    m = classification_metrics(y, prob, [0.65])  # a threshold chosen elsewhere (validation) is applied as is
    assert m["test_sensitivity"] == 0.75 and m["test_specificity"] == 1.0


def test_multiclass_auc_is_macro_one_vs_rest_and_undefined_when_a_class_is_missing():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    logits = rng.normal(size=(30, 3)) + np.eye(3)[y] * 1.5
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert roc_auc(y, prob) == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert len(youden_thresholds(y, prob)) == 3
    assert math.isnan(roc_auc(y[y < 2], prob[y < 2]))  # class 2 absent
    assert math.isnan(roc_auc(np.zeros(5, int), np.full((5, 2), 0.5)))


def test_class_weights_are_inverse_frequency():
    items = [{"label": 0}] * 6 + [{"label": 1}] * 2
    cohort = Cohort(task="classification", label="x", classes=["a", "b"], fold=0, folds=[0, 1, 2], train=items)
    w = class_weights(cohort, True, "cpu")
    assert torch.allclose(w, torch.tensor([8 / 12, 8 / 4])) and class_weights(cohort, False, "cpu") is None
