"""The MLflow layout: study experiments and the tag filters the study runner queries runs with."""
from __future__ import annotations


import pytest

from medxfer.tracking import client, experiment_id, search_all_runs
from medxfer.tracking.layout import (CHECKPOINT_ARTIFACT, EXPERIMENT_PREFIX, ROLE_CELL, ROLE_PRETRAIN, ROLE_STUDY,
                                     TAG_CONFIG_HASH, TAG_ROLE, TAG_STAGE, TAG_STUDY, TRAIN_EXPERIMENT, role_filter,
                                     study_experiment)


def test_study_experiment_names():
    """A study's experiment is ``medxfer/<name>``, beside ``medxfer/train`` (names users see in the UI)."""
    assert study_experiment("dental-ceph-sex") == "medxfer/dental-ceph-sex"
    assert study_experiment("busi.v2") == EXPERIMENT_PREFIX + "busi.v2"
    assert TRAIN_EXPERIMENT == study_experiment("train")
    assert CHECKPOINT_ARTIFACT == "checkpoint/medxfer_checkpoint.pt"  # the `run:<id>` weights contract


@pytest.fixture
def study_runs(store):
    """Runs of two studies (names that share a prefix) with every role, in one experiment."""
    c = client()
    exp = experiment_id(c, study_experiment("mixed"))
    runs = {}
    specs = {
        "parent": {TAG_STUDY: "dental", TAG_ROLE: ROLE_STUDY},
        "cell-a": {TAG_STUDY: "dental", TAG_ROLE: ROLE_CELL, TAG_CONFIG_HASH: "aaaa"},
        "cell-b": {TAG_STUDY: "dental", TAG_ROLE: ROLE_CELL, TAG_CONFIG_HASH: "bbbb"},
        "cell-a-again": {TAG_STUDY: "dental", TAG_ROLE: ROLE_CELL, TAG_CONFIG_HASH: "aaaa"},
        "stage-1": {TAG_STUDY: "dental", TAG_ROLE: ROLE_PRETRAIN, TAG_STAGE: "self", TAG_CONFIG_HASH: "cccc"},
        "stage-2": {TAG_STUDY: "dental", TAG_ROLE: ROLE_PRETRAIN, TAG_STAGE: "chain", TAG_CONFIG_HASH: "dddd"},
        "other-cell": {TAG_STUDY: "dental-2", TAG_ROLE: ROLE_CELL, TAG_CONFIG_HASH: "aaaa"},
        "other-parent": {TAG_STUDY: "dental_", TAG_ROLE: ROLE_STUDY},
        "untagged": {},
    }
    for name, tags in specs.items():
        runs[name] = c.create_run(exp, run_name=name, tags=tags).info.run_id
    return c, exp


def _names(c, exp, filter_string):
    return sorted(r.info.run_name for r in search_all_runs(c, exp, filter_string))


def test_role_filter_selects_exactly_the_runs_of_a_study_and_role(study_runs):
    """In a real store the filter finds one study's runs of one role: not another study's (even one whose
    name extends it), not another role, not untagged runs."""
    c, exp = study_runs
    assert _names(c, exp, role_filter("dental", ROLE_CELL)) == ["cell-a", "cell-a-again", "cell-b"]
    assert _names(c, exp, role_filter("dental", ROLE_STUDY)) == ["parent"]
    assert _names(c, exp, role_filter("dental", ROLE_PRETRAIN)) == ["stage-1", "stage-2"]
    assert _names(c, exp, role_filter("dental-2", ROLE_CELL)) == ["other-cell"]
    assert _names(c, exp, role_filter("dental_", ROLE_STUDY)) == ["other-parent"]
    assert _names(c, exp, role_filter("dent", ROLE_CELL)) == []


def test_role_filter_with_extra_tags(study_runs):
    """Extra tags (dotted keys included) narrow the selection: a config hash finds its cells and only those."""
    c, exp = study_runs
    assert _names(c, exp, role_filter("dental", ROLE_CELL, **{TAG_CONFIG_HASH: "aaaa"})) == ["cell-a", "cell-a-again"]
    assert _names(c, exp, role_filter("dental", ROLE_CELL, **{TAG_CONFIG_HASH: "cccc"})) == []
    assert _names(c, exp, role_filter("dental", ROLE_PRETRAIN, **{TAG_STAGE: "chain", TAG_CONFIG_HASH: "dddd"})) == \
        ["stage-2"]
    assert _names(c, exp, role_filter("dental", ROLE_PRETRAIN, **{TAG_STAGE: "chain", TAG_CONFIG_HASH: "cccc"})) == []
