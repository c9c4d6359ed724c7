"""A runner ended by SIGTERM (a SLURM time limit, a preemption) leaves nothing RUNNING: the run in progress and the
study's parent run are marked FAILED before the process exits, and the next ``study run`` runs the cell again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow

from medxfer.core.signals import Terminated, terminate_raises
from medxfer.study import load_spec
from tests.study.test_runner import children, write_spec


def test_terminate_raises_turns_sigterm_into_an_exception_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    caught = None
    with terminate_raises():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode boundary
        except Terminated as exc:
            caught = exc
    assert caught is not None and caught.code == 143
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_marks_the_running_child_and_the_parent_failed(dental_cohort, mlflow_store, tmp_path):
    spec_file = write_spec(tmp_path / "study.yaml", dental_cohort.manifest, {"encoder": ["resnet18"]},
                           name="stopped", data={"folds": [0]}, train={"epochs": 200})
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    runner = subprocess.Popen([sys.executable, "-m", "medxfer.cli", "study", "run", str(spec_file)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spec = load_spec(spec_file)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not any(r.info.status == "RUNNING" for r in children(spec)):
            assert runner.poll() is None, runner.communicate()
            time.sleep(1)
        time.sleep(3)  # into training
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 143, stderr[-2000:]
    (child,) = children(spec)
    assert child.info.status == "FAILED"
    client = mlflow.MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("medxfer/stopped")
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert statuses["study/stopped"] == "FAILED" and "RUNNING" not in statuses.values()
