"""Pretraining stages in a study spec: self-pretraining and an incremental chain, recorded as
weights sources with their provenance, resumed like grid runs."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.study import load_spec, run_study
from medxfer.study.grid import expand
from medxfer.study.spec import SpecError, parse_spec


def chain_spec(path, manifest):
    path.write_text(yaml.safe_dump({
        "name": "chain",
        "data": {"manifest": str(manifest), "label": "supernumerary", "folds": [0], "modalities": ["PX"]},
        "pretrain": [
            {"name": "ceph-sex", "data": {"manifest": str(manifest), "label": "sex", "modalities": ["DX"]},
             "train": {"epochs": 1}},
            {"name": "ceph-sex-again", "from": "ceph-sex", "train": {"epochs": 1},
             "data": {"manifest": str(manifest), "label": "sex", "fold": 0, "modalities": ["DX"]}}],
        "grid": {"encoder": ["resnet18"], "weights": ["scratch", "ceph-sex", "ceph-sex-again"], "freeze": ["all"]},
        "train": {"epochs": 1, "image_size": 64, "batch_size": 8}}))
    return path


def test_pretraining_chain_runs_once_and_feeds_the_grid(dental_cohort, mlflow_store, tmp_path):
    import mlflow

    spec_file = chain_spec(tmp_path / "chain.yaml", dental_cohort.manifest)
    dry = CliRunner().invoke(main, ["study", "run", str(spec_file), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "todo     pretrain/ceph-sex/resnet18" in dry.stdout and "pretrain/ceph-sex-again/resnet18" in dry.stdout

    spec = load_spec(spec_file)
    outcome = run_study(spec)
    assert not outcome.failed and len(outcome.ran) == 3 and outcome.complete
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    exp = client.get_experiment_by_name("medxfer/chain").experiment_id
    stages = {r.data.tags["medxfer.stage"]: r for r in
              client.search_runs([exp], "tags.`medxfer.role` = 'pretrain'")}
    assert set(stages) == {"ceph-sex", "ceph-sex-again"}
    first, second = stages["ceph-sex"], stages["ceph-sex-again"]
    # provenance: where each stage started, and the chain it belongs to
    assert first.data.params["weights"] == "scratch" and first.data.params["label"] == "sex"
    assert second.data.params["weights"] == f"run:{first.info.run_id}"
    assert second.data.tags["medxfer.chain"] == "scratch → ceph-sex → ceph-sex-again"
    assert second.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
    # the grid's runs use the stage checkpoints, and keep the stage name in their name and tags
    cells = {r.data.tags["weights"]: r for r in client.search_runs([exp], "tags.`medxfer.role` = 'cell'")}
    assert cells["ceph-sex-again"].data.params["weights"] == f"run:{second.info.run_id}"
    assert cells["ceph-sex"].data.tags["cell"] == "classification/resnet18/ceph-sex/all/lr0.001"
    assert cells["ceph-sex"].info.run_name.split("/")[0] == "ceph-sex"  # the short name: what differs

    again = run_study(spec)  # stages and grid are done: nothing trains
    assert again.ran == [] and len(client.search_runs([exp], "tags.`medxfer.role` = 'pretrain'")) == 2
    dry = CliRunner().invoke(main, ["study", "run", str(spec_file), "--dry-run"])
    assert "done     pretrain/ceph-sex-again/resnet18" in dry.stdout


def test_a_changed_stage_is_a_new_configuration_downstream(dental_cohort, tmp_path):
    base = yaml.safe_load(chain_spec(tmp_path / "a.yaml", dental_cohort.manifest).read_text())
    hashes = {r.name: r.config_hash for r in expand(parse_spec(base))}
    base["pretrain"][0]["train"]["epochs"] = 2  # the chain's first stage changes
    changed = {r.name: r.config_hash for r in expand(parse_spec(base))}
    for name in hashes:
        assert (hashes[name] == changed[name]) == ("/scratch/" in name)


def test_stage_settings_read_yaml_numbers_like_the_study(dental_cohort, tmp_path):
    # PyYAML reads 1e-3 as the string "1e-3": a stage's lr must still reach the optimizer as a number
    text = chain_spec(tmp_path / "a.yaml", dental_cohort.manifest).read_text()
    with_lr = text.replace("train:\n    epochs: 1\n", "train:\n    epochs: 1\n    lr: 1e-3\n", 1)
    spec = parse_spec(yaml.safe_load(with_lr))
    assert spec.stages["ceph-sex"].train["lr"] == 0.001


@pytest.mark.parametrize("stages, message", [
    ([{"name": "x", "data": {"label": "sex"}}], "data needs manifest and label"),
    ([{"name": "scratch", "data": {"manifest": "m", "label": "y"}}], "must be a new weights name"),
    ([{"name": "a", "from": "b", "data": {"manifest": "m", "label": "y"}},
      {"name": "b", "data": {"manifest": "m", "label": "y"}}], "must be an earlier stage"),
    ([{"name": "a", "data": {"manifest": "m", "label": "y"}, "train": {"weights": "x"}}], "may not set"),
])
def test_stage_errors(dental_cohort, tmp_path, stages, message):
    raw = yaml.safe_load(chain_spec(tmp_path / "a.yaml", dental_cohort.manifest).read_text())
    for stage in stages:
        if stage["data"].get("manifest") == "m":
            stage["data"]["manifest"] = str(dental_cohort.manifest)
    raw["pretrain"] = stages
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def _small_manifest(tmp_path):
    path = tmp_path / "cohort" / "manifest.csv"
    path.parent.mkdir()
    rows = ["item_id,image,fold,y"] + [f"i{i},images/i{i}.nii,{i % 5},{i % 2}" for i in range(20)]
    path.write_bytes("".join(row + "\r\n" for row in rows).encode())  # as csv.writer writes it
    return path


def test_stage_hashes_keep_their_stored_values(tmp_path, monkeypatch):
    """A stage's run is found again by its hash: a change here re-trains every stage of a stored study."""
    from medxfer.study.grid import weights_identity
    from medxfer.study.pretrain import chain, stage_hash

    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    manifest = str(_small_manifest(tmp_path))
    spec = parse_spec({
        "name": "s1", "data": {"manifest": manifest, "label": "y", "modalities": ["PX"]}, "seeds": [0],
        "grid": {"encoder": ["resnet18"], "weights": ["scratch", "a"], "lr": ["1e-3", 1e-4]},
        "train": {"epochs": 3, "image_size": 64},
        "pretrain": [{"name": "a", "data": {"manifest": manifest, "label": "y", "fold": 1},
                      "train": {"epochs": "2", "lr": "1e-3"}},
                     {"name": "b", "from": "a", "data": {"manifest": manifest, "label": "y", "modalities": ["PX"]}}]})
    assert spec.stages["a"].train == {"epochs": 2, "lr": 0.001, "image_size": 64}  # the study's input size
    assert stage_hash(spec.stages, "a", "resnet18", weights_identity) == "8f598594df46dcc81dd9"
    assert stage_hash(spec.stages, "b", "resnet18", weights_identity) == "00031dc1282947bd389d"
    assert chain(spec.stages, "b") == ["scratch", "a", "b"]
    assert next(r for r in expand(spec) if r.stage == "a").config_hash == "8c18135baa9e026d4f8a"


@pytest.mark.parametrize("stages, message", [
    ({"name": "a"}, r"^pretrain is a list of stages"),
    ([{"name": "a", "data": {"manifest": "M", "label": "y"}}, "b"], r"^pretrain\[1\] is not a mapping$"),
    ([{"name": "a", "form": "imagenet", "data": {"manifest": "M", "label": "y"}}],
     r"^pretrain\[0\]: unknown keys \['form'\] \(allowed: data, from, name, train\); did you mean 'from'"),
    ([{"name": "a", "data": {"manifest": "M", "label": "y"}}, {"name": "a", "data": {"manifest": "M", "label": "y"}}],
     r"^pretrain\[1\]: name 'a' must be a new weights name"),
    ([{"name": "a", "from": "no such/source", "data": {"manifest": "M", "label": "y"}}],
     r"^pretrain a: from 'no such/source' is not a weights source"),
    ([{"name": "a", "data": {"manifest": "M", "label": "y", "fold": "first"}}], r"^pretrain\[0\]\.data\.fold: "),
])
def test_stage_errors_name_the_stage(tmp_path, stages, message):
    manifest = str(_small_manifest(tmp_path))
    for stage in stages if isinstance(stages, list) else []:
        if isinstance(stage, dict):
            stage["data"]["manifest"] = manifest
    raw = {"name": "s1", "data": {"manifest": manifest, "label": "y"}, "grid": {"lr": [1e-3]}, "pretrain": stages}
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)
