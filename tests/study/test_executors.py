"""Executors end to end on a generated cohort: a local process pool and Ray tasks finish a 6-run grid with
exactly one FINISHED run per configuration, also when a worker is killed mid-run (retried, nothing left
RUNNING); two runners started at once never train one configuration twice; claims are atomic under a race.
The store is a local SQLite file and, as a team would run it, an MLflow tracking server on PostgreSQL with a
served artifact store (``shared_store``; skipped with the reason where PostgreSQL cannot be installed)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medxfer.study import load_spec, run_study
from medxfer.study.claims import claim_run
from medxfer.study.executors import ExecutorError, parse_gpus, settings_for
from medxfer.study.grid import expand
from medxfer.tracking.layout import ROLE_CELL, role_filter
from tests.study.test_runner import children, write_spec

SIX = {"encoder": ["resnet18"], "weights": ["scratch"], "freeze": ["none", "all"], "lr": [1e-3, 1e-2, 1e-1]}


@pytest.fixture(params=["sqlite", "server"])
def any_store(request) -> str:
    """The study's tracking store: a SQLite file, then an MLflow server on PostgreSQL."""
    return request.getfixturevalue("store" if request.param == "sqlite" else "shared_store")


def _six_run_spec(tmp_path: Path, manifest: Path, name: str, epochs: int = 2):
    path = write_spec(tmp_path / f"{name}.yaml", manifest, SIX, name=name, data={"folds": [0]},
                      train={"epochs": epochs, "feature_cache": False})
    spec = load_spec(path)
    assert len(expand(spec)) == 6
    return path, spec


def _statuses_by_config(spec) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for run in children(spec):
        out.setdefault(run.data.tags["config_hash"], []).append(run.info.status)
    return out


def _assert_one_finished_per_config(spec) -> None:
    statuses = _statuses_by_config(spec)
    assert set(statuses) == {r.config_hash for r in expand(spec)}
    assert all(s.count("FINISHED") == 1 for s in statuses.values()), statuses
    assert not any("RUNNING" in s for s in statuses.values()), statuses


def children_status(spec, run_id: str) -> str:
    return next((r.info.status for r in children(spec) if r.info.run_id == run_id), "gone")


class _KillOneWorker(threading.Thread):
    """Waits for a run in progress in another process (the pool's or Ray's worker, by the run's pid tag),
    lets it train a moment, then kills that process with SIGKILL (as the OOM killer or a lost node would)."""

    def __init__(self, spec):
        super().__init__(daemon=True)
        self.spec, self.killed, self.bystander = spec, None, None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.time() + 600
        while not self.stop.is_set() and time.time() < deadline:
            running = [r for r in children(self.spec) if r.info.status == "RUNNING"
                       and r.data.tags.get("medxfer.pid") not in (None, str(os.getpid()))]
            if running:
                time.sleep(1.5)  # into training
                run = running[0]
                if children_status(self.spec, run.info.run_id) != "RUNNING":  # finished meanwhile: another one
                    continue
                try:
                    os.kill(int(run.data.tags["medxfer.pid"]), signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.killed = run.data.tags["config_hash"]
                pids = (None, str(os.getpid()), run.data.tags["medxfer.pid"])
                others = [r for r in children(self.spec)
                          if r.info.status == "RUNNING" and r.data.tags.get("medxfer.pid") not in pids]
                self.bystander = others[0].data.tags["config_hash"] if others else None
                return
            time.sleep(0.3)


def test_local_pool_runs_two_at_once_and_retries_a_killed_worker(dental_cohort, any_store, tmp_path):
    _, spec = _six_run_spec(tmp_path, dental_cohort.manifest, "pool", epochs=12)
    killer = _KillOneWorker(spec)
    killer.start()
    lines: list[str] = []
    try:
        outcome = run_study(spec, echo=lines.append, runs_dir=tmp_path / "runs", max_parallel=2)
    finally:
        killer.stop.set()
    assert killer.killed, "no worker was killed: the test did not test a retry"
    assert outcome.complete and not outcome.failed, (outcome, lines)
    assert any("2 run(s) at once, 1 core(s) each" in line for line in lines)
    _assert_one_finished_per_config(spec)
    killed = _statuses_by_config(spec)[killer.killed]
    assert "FAILED" in killed  # the killed attempt, marked by the retry (its worker's pid is gone)
    assert any("its worker was killed by SIGKILL; trying again" in line for line in lines), lines
    if killer.bystander:  # the run training beside it in the other worker went on, undisturbed
        assert _statuses_by_config(spec)[killer.bystander] == ["FINISHED"]


def test_ray_runs_the_grid_as_tasks_and_retries_a_killed_worker(dental_cohort, any_store, tmp_path):
    pytest.importorskip("ray")
    _, spec = _six_run_spec(tmp_path, dental_cohort.manifest, "rays", epochs=12)
    killer = _KillOneWorker(spec)
    killer.start()
    lines: list[str] = []
    try:
        outcome = run_study(spec, echo=lines.append, runs_dir=tmp_path / "runs", executor="ray", max_parallel=2)
    finally:
        killer.stop.set()
    assert any(line.startswith("ray executor:") and "started in" in line for line in lines), lines
    assert killer.killed, "no worker was killed: the test did not test a retry"
    assert outcome.complete and not outcome.failed, (outcome, lines)
    _assert_one_finished_per_config(spec)
    assert "FAILED" in _statuses_by_config(spec)[killer.killed]


def test_two_runners_started_at_once_never_train_one_config_twice(dental_cohort, any_store, tmp_path):
    path, spec = _six_run_spec(tmp_path, dental_cohort.manifest, "twins")
    env = {**os.environ, "MLFLOW_TRACKING_URI": any_store}
    procs = [subprocess.Popen([sys.executable, "-m", "medxfer.cli", "study", "run", str(path)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for o in outputs]
    _assert_one_finished_per_config(spec)
    statuses = _statuses_by_config(spec)
    assert all(s == ["FINISHED"] for s in statuses.values()), statuses  # no attempt trained and then lost
    ran = [int(o.rsplit(f"study {spec.name}: ", 1)[1].split(" ran", 1)[0]) for o in outputs]
    assert sum(ran) == 6, outputs  # each configuration trained by exactly one of the two


def _claimer(uri: str, exp_id: str, query: str, go, results) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from medxfer.tracking.store import client

    c = client()
    go.wait()
    claim = claim_run(c, exp_id, query, "race", {"medxfer.study": "race", "medxfer.role": ROLE_CELL,
                                                  "config_hash": "c" * 20})
    results.put(claim.state)
    if claim.state == "claimed":
        time.sleep(3)  # still RUNNING while the others look
        c.set_terminated(claim.run_id, "FINISHED")


def test_claims_are_atomic_when_six_processes_race_for_one_config(any_store):
    from medxfer.tracking.store import client, experiment_id

    exp_id = experiment_id(client(), "medxfer/race")
    query = role_filter("race", ROLE_CELL, config_hash="c" * 20)
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(any_store, exp_id, query, go, results)) for _ in range(6)]
    for p in procs:
        p.start()
    time.sleep(4)  # all started and connected
    go.set()
    for p in procs:
        p.join(timeout=120)
    states = sorted(results.get(timeout=10) for _ in procs)
    assert states.count("claimed") == 1 and set(states) <= {"claimed", "elsewhere", "done"}, states
    from medxfer.tracking.store import search_all_runs

    runs = search_all_runs(client(), exp_id, query)
    assert [r.info.status for r in runs] == ["FINISHED"]  # withdrawn claims are deleted, not left behind


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigterm_stops_the_workers_and_leaves_nothing_running(executor, dental_cohort, store, tmp_path):
    """As a SLURM time limit (``--signal=B:TERM@…``) stops a runner: the runs in progress are marked FAILED and
    the runner exits with 143. For Ray, ``ray.init`` installs its own SIGTERM handler (``sys.exit``), which
    would end the driver without cancelling its tasks: the runner's is put back."""
    if executor == "ray":
        pytest.importorskip("ray")
    path, spec = _six_run_spec(tmp_path, dental_cohort.manifest, f"stop-{executor}", epochs=200)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    runner = subprocess.Popen([sys.executable, "-m", "medxfer.cli", "study", "run", str(path), "--max-parallel", "2",
                               "--executor", executor],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and sum(r.info.status == "RUNNING" for r in children(spec)) < 2:
            assert runner.poll() is None, runner.communicate()
            time.sleep(1)
        time.sleep(2)
        runner.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        _, stderr = runner.communicate(timeout=180)
        took = time.monotonic() - stopped
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 143, stderr[-2000:]
    statuses = [r.info.status for r in children(spec)]
    # the two runs in progress marked FAILED; no worker went on to start (and finish) a queued run
    assert statuses == ["FAILED", "FAILED"], statuses
    assert took < 60, f"the runner took {took:.0f} s to stop"


def test_gpu_indices_are_numbered_as_this_process_sees_them(monkeypatch):
    """``--gpus 0,1`` in a job whose CUDA_VISIBLE_DEVICES is ``2,3`` (SLURM, a shared machine) pins physical
    GPUs 2 and 3, never someone else's 0 and 1; UUIDs and MIG devices pass through."""
    from medxfer.study.executors import device_ids

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_ids((0, 1)) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert device_ids((0, 1)) == ["2", "3"] and device_ids((1,)) == ["3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2e,MIG-1c2d")
    assert device_ids((1, 0)) == ["MIG-1c2d", "GPU-8f2e"]


def test_executor_settings_are_checked_before_anything_runs():
    assert parse_gpus(None, 0) is None and parse_gpus("all", 2) == (0, 1) and parse_gpus("1", 2) == (1,)
    for text, visible in (("all", 0), ("2", 2), ("0,0", 2), ("x", 2)):
        with pytest.raises(ExecutorError, match="--gpus"):
            parse_gpus(text, visible)
    with pytest.raises(ExecutorError, match="--address"):
        settings_for("local", None, None, "auto", {})
    settings = settings_for("local", (0, 1, 2, 3), None, None, {"gpus_per_run": 2, "retries": 1})
    assert settings.parallel() == 2 and settings.retries == 1  # two runs of two GPUs each
    assert settings_for("local", None, 3, None, {}).parallel() == 3


def test_resources_and_tracking_are_not_in_the_config_hash_and_the_spec_names_the_store(dental_cohort, store,
                                                                                        tmp_path, monkeypatch):
    from click.testing import CliRunner

    from medxfer.cli import main

    plain = load_spec(write_spec(tmp_path / "plain.yaml", dental_cohort.manifest, SIX, name="hashes"))
    other_store = tmp_path / "team" / "mlflow.db"
    other_store.parent.mkdir()
    path = write_spec(tmp_path / "placed.yaml", dental_cohort.manifest, SIX, name="hashes")
    text = path.read_text() + (f"resources: {{gpus_per_run: 1, cpus_per_run: 4, num_workers: auto, retries: 3}}\n"
                               f"tracking: {{uri: 'sqlite:///{other_store}', artifact_root: '{tmp_path / 'art'}'}}\n")
    path.write_text(text)
    placed = load_spec(path)
    assert [r.config_hash for r in expand(placed)] == [r.config_hash for r in expand(plain)]
    assert placed.spec_hash() == plain.spec_hash()
    assert placed.resources == {"gpus_per_run": 1, "cpus_per_run": 4, "num_workers": "auto", "retries": 3}
    monkeypatch.setenv("MEDXFER_ARTIFACT_ROOT", "/unset")  # recorded, so the value use_tracking sets is undone
    monkeypatch.delenv("MEDXFER_ARTIFACT_ROOT")
    result = CliRunner().invoke(main, ["study", "run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (f"runs are looked up in the MLflow store sqlite:///{other_store} (from the spec's tracking.uri)"
            in result.output)  # the spec's store, and where it came from
    assert os.environ["MEDXFER_ARTIFACT_ROOT"] == str(tmp_path / "art")  # workers inherit both

    path.write_text(text.replace("num_workers: auto", "num_workers: many"))
    result = CliRunner().invoke(main, ["study", "run", str(path), "--dry-run"])
    assert result.exit_code != 0 and "resources.num_workers" in result.output and "'many'" in result.output


def test_executor_ray_without_ray_says_what_to_install(monkeypatch):
    from medxfer.study import ray_executor
    from medxfer.study.execute import StudyContext

    monkeypatch.setattr(ray_executor, "ray", None)
    with pytest.raises(ExecutorError, match=r"pip install 'medxfer\[ray\]'"):
        ray_executor.run_ray(StudyContext(spec=None, experiment_id="0", parent_run_id="p", runs_dir="/tmp"), [],
                             settings_for("ray", None, None, None, {}), print)


def test_ray_sizes_each_run_from_the_cluster_and_refuses_what_no_node_has():
    pytest.importorskip("ray")
    from medxfer.study.ray_executor import _per_run

    gpu_node = {"CPU": 64, "GPU": 8}
    assert _per_run(settings_for("ray", None, None, "auto", {}), gpu_node, local=False) == (8, 1)  # 8 cores per GPU
    assert _per_run(settings_for("ray", None, None, None, {"cpus_per_run": 4, "gpus_per_run": 0}),
                    gpu_node, local=False) == (4, 0)
    assert _per_run(settings_for("ray", None, 2, None, {}), {"CPU": 2}, local=True) == (1, 0)
    with pytest.raises(ExecutorError, match="1 GPU"):
        _per_run(settings_for("ray", None, None, None, {"gpus_per_run": 1}), {"CPU": 2}, local=True)


def test_a_clusters_workers_get_the_store_but_not_its_secrets(monkeypatch):
    """Ray shows a job's runtime environment to whoever reaches its dashboard: the tracking settings go to the
    cluster's workers, the passwords and tokens stay on the driver (the nodes hold their own), and the
    runner names what it kept back."""
    ray = pytest.importorskip("ray")
    from medxfer.study import ray_executor

    started = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    for name in [n for n in os.environ if n.startswith(("MLFLOW_", "MEDXFER_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@mlflow.lab:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-9f2")
    monkeypatch.setenv("MEDXFER_HOME", "/shared/medxfer")
    monkeypatch.setenv("MEDXFER_ARTIFACT_ROOT", "s3://bucket/artifacts")
    said = []
    assert ray_executor._start_ray(settings_for("ray", None, None, "ray://head:10001", {}), said.append)
    sent = started["runtime_env"]["env_vars"]
    assert started["address"] == "ray://head:10001"
    assert sent == {"MLFLOW_TRACKING_URI": "http://alice@mlflow.lab:5000", "MLFLOW_TRACKING_USERNAME": "alice",
                    "MEDXFER_HOME": "/shared/medxfer", "MEDXFER_ARTIFACT_ROOT": "s3://bucket/artifacts"}
    (line,) = said
    assert "MLFLOW_TRACKING_PASSWORD" in line and "MLFLOW_TRACKING_TOKEN" in line and "MLFLOW_TRACKING_URI" in line
    assert "s3cret" not in line + repr(sent) and "tok-9f2" not in line + repr(sent)


@pytest.mark.parametrize("uri, sent", [
    ("postgresql://alice:p@ss@db.lab/mlflow", "postgresql://alice@db.lab/mlflow"),  # an "@" in the password
    ("postgresql+psycopg2://alice@db:5432/m?sslmode=require&password=pw", "postgresql+psycopg2://alice@db:5432/m?sslmode=require"),
    ("http://mlflow:5000/base?x=a%20b", "http://mlflow:5000/base?x=a%20b"),  # nothing secret: exactly as given
    ("http://alice:pa/ss@mlflow:5000", None),  # a "/" in the password: not sent at all
])
def test_a_uri_goes_to_the_cluster_with_its_user_but_never_its_password(uri, sent):
    """The user name stays, so a node's own ``~/.pgpass`` line (host:port:db:user:password) or
    ``MLFLOW_TRACKING_PASSWORD`` still matches the URI the task gets."""
    pytest.importorskip("ray")
    from medxfer.study.ray_executor import forwarded_env

    variables, withheld = forwarded_env({"MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin"})
    assert variables.get("MLFLOW_TRACKING_URI") == sent and "PATH" not in variables
    assert withheld == ([] if sent == uri else ["MLFLOW_TRACKING_URI"])


def test_a_ray_cluster_that_turns_the_driver_away_is_one_clear_error(monkeypatch):
    """Ray >= 2.59 starts clusters with token authentication: a driver without ``RAY_AUTH_MODE=token`` is refused
    after Ray's retries, with an error that names neither the cause nor the fix; ``study run`` says both."""
    ray = pytest.importorskip("ray")
    from medxfer.study import ray_executor

    def refused(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ExecutorError) as error:
        ray_executor._start_ray(settings_for("ray", None, None, "10.0.0.5:6379", {}), print)
    message = str(error.value)
    assert "cannot join the Ray cluster at 10.0.0.5:6379" in message and "Failed to connect" in message
    assert "RAY_AUTH_MODE is unset" in message and "set RAY_AUTH_MODE=token" in message
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # set, yet refused: the token is the suspect
    with pytest.raises(ExecutorError, match="check that the token"):
        ray_executor._start_ray(settings_for("ray", None, None, "10.0.0.5:6379", {}), print)
