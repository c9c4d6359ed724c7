"""`medxfer study run` shows each run's epochs with elapsed time and ETAs (issue 18): in a log file
(stderr not a terminal) one plain line per epoch, in order, on stderr; the study's ETA counts what is
still to train, pretraining stages included."""
from __future__ import annotations

import re

import yaml
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.study import load_spec
from medxfer.study.grid import expand, weights_identity
from medxfer.study.pretrain import stage_hash
from medxfer.study.runner import planned_epochs
from medxfer.tracking.layout import ROLE_PRETRAIN, TAG_CONFIG_HASH, TAG_ROLE, TAG_STUDY
from tests.study.test_pretrain import chain_spec
from tests.study.test_runner import write_spec

EPOCH_LINE = re.compile(r"^  epoch (\d+)/(\d+)  elapsed (\S+)  run ETA (\S+)  study ETA (\S+)$")


def seconds(text: str) -> int:
    """``1:02:03`` / ``0:42`` → seconds."""
    total = 0
    for part in text.split(":"):
        total = total * 60 + int(part)
    return total


def test_study_run_prints_epochs_elapsed_and_etas_per_run(dental_cohort, mlflow_store, tmp_path):
    spec_file = write_spec(tmp_path / "study.yaml", dental_cohort.manifest,
                           {"encoder": ["resnet18"], "weights": ["scratch"], "freeze": ["all"], "lr": [1e-3, 1e-2]},
                           name="progress", data={"folds": [0]}, train={"epochs": 2})
    result = CliRunner().invoke(main, ["study", "run", str(spec_file)])
    assert result.exit_code == 0, result.output
    assert "epoch" not in result.stdout  # progress is on stderr, with the runner's other lines

    lines = [line for line in result.stderr.splitlines() if line.startswith(("[", "  epoch", "  done"))]
    shapes = [re.sub(r"^(\[\d/\d\]|  done test_auc) .*|  (elapsed|run ETA|study ETA) \S+", r"\1", line)
              for line in lines]
    assert shapes == ["[1/2]", "  epoch 1/2", "  epoch 2/2", "  done test_auc",
                      "[2/2]", "  epoch 1/2", "  epoch 2/2", "  done test_auc"]

    epochs = [EPOCH_LINE.match(line).groups() for line in lines if line.startswith("  epoch")]
    for _, _, elapsed, run_eta, study_eta in epochs:
        assert seconds(study_eta) >= seconds(run_eta) >= 0 and seconds(elapsed) >= 0
    # the last epoch of a run has no time left in it; the last of the study none in the study
    assert epochs[1][3] == "0:00" and epochs[3][3:] == ("0:00", "0:00")


def test_the_study_eta_counts_the_pretraining_stages_still_to_train(dental_cohort, mlflow_store, tmp_path):
    """A stage counts its own epochs until the store has it FINISHED; a cell found FINISHED does not count."""
    import mlflow

    path = chain_spec(tmp_path / "chain.yaml", dental_cohort.manifest)
    raw = yaml.safe_load(path.read_text())
    raw["pretrain"][0]["train"]["epochs"], raw["pretrain"][1]["train"]["epochs"] = 3, 4
    raw["train"]["epochs"] = 2
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    runs = expand(spec)
    names = {str(r.overrides["weights"]): r.name for r in runs}
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    exp = client.create_experiment(spec.experiment)

    assert planned_epochs(client, exp, spec, runs, {}) == {
        "pretrain/ceph-sex/resnet18": 3, "pretrain/ceph-sex-again/resnet18": 4,
        names["scratch"]: 2, names["ceph-sex"]: 2, names["ceph-sex-again"]: 2}

    done = client.create_run(exp, tags={TAG_STUDY: spec.name, TAG_ROLE: ROLE_PRETRAIN, TAG_CONFIG_HASH:
                                        stage_hash(spec.stages, "ceph-sex", "resnet18", weights_identity)})
    client.set_terminated(done.info.run_id, status="FINISHED")
    finished_cell = next(r for r in runs if r.stage == "ceph-sex-again")
    # the cell is FINISHED: neither it nor its stage chain counts; the other cells still need ceph-sex, which is done
    by_hash = {finished_cell.config_hash: [client.get_run(done.info.run_id)]}
    assert planned_epochs(client, exp, spec, runs, by_hash) == {names["scratch"]: 2, names["ceph-sex"]: 2}
