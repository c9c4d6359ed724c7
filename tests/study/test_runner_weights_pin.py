"""Weights pinned per cell (issue 20 item 6): a ``file:`` replaced or an imported name re-imported
(``--replace``) while a study runs fails the later runs of the cell with a one-line reason instead
of mixing two sets of weights in one cell; each run logs the sha256 of the weights it loaded."""
from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import torch

from medxfer.models import create_encoder
from medxfer.models.weights import import_weights, save_checkpoint
from medxfer.study import load_spec, run_study
from medxfer.study.grid import expand
from medxfer.study.report import build_report
from medxfer.study.runner import weights_pins

from .test_runner import write_spec


def _weights(path: Path, seed: int) -> str:
    """A medxfer checkpoint of a random resnet18 at ``path``; its sha256."""
    torch.manual_seed(seed)
    save_checkpoint(path, create_encoder("resnet18", "scratch", 3))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_changed_during_a_study_fail_the_runs_that_would_mix_them(dental_cohort, mlflow_store, tmp_path):
    file_sha = _weights(tmp_path / "w.pt", 1)
    _weights(tmp_path / "import.pt", 2)
    imported = import_weights(tmp_path / "import.pt", name="mine", arch="resnet18", fmt="medxfer")
    spec = load_spec(write_spec(tmp_path / "study.yaml", dental_cohort.manifest,
                                {"encoder": ["resnet18"], "weights": [f"file:{tmp_path / 'w.pt'}", "mine"],
                                 "freeze": ["none"]}, name="pinned", data={"folds": [0, 1]}, train={"epochs": 1}))
    pins = weights_pins(spec, expand(spec))
    assert pins == {(f"file:{tmp_path / 'w.pt'}", "resnet18"): file_sha, ("mine", "resnet18"): imported.sha256}

    def change_weights(line: str) -> None:
        """Runs 2 and 4 (fold 1 of each cell) start after the weights changed."""
        if line.startswith("[2/4]"):
            new_sha = _weights(tmp_path / "w.pt", 3)  # the file replaced in place
            assert new_sha != file_sha
        if line.startswith("[4/4]"):
            _weights(tmp_path / "other.pt", 4)
            import_weights(tmp_path / "other.pt", name="mine", arch="resnet18", fmt="medxfer", replace=True)

    outcome = run_study(spec, echo=change_weights)
    assert [name.split("/")[2] + "/" + name.split("/")[5] for name, _, _ in outcome.ran] == \
        ["file:w.pt/fold0", "mine/fold0"]
    reasons = dict(outcome.failed)
    assert len(reasons) == 2 and not outcome.complete
    file_reason = next(r for n, r in reasons.items() if "/file:w.pt/" in n and "/fold1/" in n)
    assert file_reason.startswith("weights file:w.pt: the file changed since the study was planned")
    assert f"sha256 {file_sha[:12]}… expected" in file_reason and str(tmp_path) not in file_reason
    mine_reason = next(r for n, r in reasons.items() if "/mine/" in n and "/fold1/" in n)
    assert mine_reason.startswith("weights mine: the name was re-imported since the study was planned")
    assert f"sha256 {imported.sha256[:12]}… expected" in mine_reason

    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    finished = [client.get_run(run_id) for _, run_id, _ in outcome.ran]
    loaded = {r.data.tags["cell"].split("/")[2]: r.data.params["weights.sha256"] for r in finished}
    assert loaded == {"file:w.pt": file_sha, "mine": imported.sha256}  # what each run actually loaded
    runs = client.search_runs([finished[0].info.experiment_id], "tags.`medxfer.role` = 'cell'")
    # a refused pin trains nothing: its claimed run is FAILED, with no weights loaded
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert not any("weights.sha256" in r.data.params for r in runs if r.info.status == "FAILED")
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FAILED"
    paths = build_report("pinned", out_dir=tmp_path / "report")  # one sha256 per cell: it reports
    assert paths["report.html"].is_file()
