"""Study runs end to end on a generated cohort: grid → MLflow parent/child runs → resume, kill,
shards, the frozen-encoder feature cache, failures, report; no identifier anywhere."""
from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.study import load_spec, run_study
from medxfer.study.grid import expand
from medxfer.study.runner import study_state
from tests.conftest import find_identifiers

BINARY = (".png",)  # figures: no text fields, compressed bytes can match 4 letters by chance

SMALL = {"epochs": 2, "image_size": 64, "batch_size": 8}


def write_spec(path: Path, manifest: Path, grid: dict, name: str = "s", **extra) -> Path:
    data = {"manifest": str(manifest), "label": "supernumerary", "folds": 4, "modalities": ["PX"]}
    data.update(extra.pop("data", {}))
    spec = {"name": name, "data": data, "bundle": "classification", "grid": grid, "seeds": [0],
            "train": {**SMALL, **extra.pop("train", {})}}
    path.write_text(yaml.safe_dump(spec))
    return path


def children(spec) -> list:
    _, by_hash = study_state(spec, expand(spec))
    return [run for runs in by_hash.values() for run in runs]


def finished_by_hash(spec) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in children(spec):
        if run.info.status == "FINISHED":
            counts[run.data.tags["config_hash"]] = counts.get(run.data.tags["config_hash"], 0) + 1
    return counts


def import_random_weights(tmp_path: Path, name: str = "mine") -> None:
    import torch

    from medxfer.models import create_encoder
    from medxfer.models.weights import import_weights, save_checkpoint

    torch.manual_seed(7)
    path = save_checkpoint(tmp_path / "mine.pt", create_encoder("resnet18", "scratch", 3))
    import_weights(path, name=name, arch="resnet18", fmt="medxfer")


def test_study_shards_resume_feature_cache_and_report(dental_cohort, mlflow_store, tmp_path):
    """The issue's acceptance path: two shards cover the grid disjointly, a re-run adds no run,
    freeze: all cells compute each encoder's features once, the report is built and logged, and
    no fake identifier from the DICOM headers reaches the MLflow store or the report."""
    import mlflow

    import_random_weights(tmp_path)
    spec_file = write_spec(tmp_path / "study.yaml", dental_cohort.manifest,
                           {"encoder": ["resnet18"], "weights": ["scratch", "mine"], "freeze": ["all"],
                            "lr": [1e-3, 1e-2]}, train={"feature_cache_dir": str(tmp_path / "features")})
    spec = load_spec(spec_file)
    assert len(expand(spec)) == 16
    cache = tmp_path / "features"

    runner = CliRunner()
    dry = runner.invoke(main, ["study", "run", str(spec_file), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.count(" todo ") == 16 and not children(spec)  # a dry run writes nothing

    first = runner.invoke(main, ["study", "run", str(spec_file), "--shard", "1/2"])
    assert first.exit_code == 0, first.output
    shard1 = {r.data.tags["config_hash"] for r in children(spec)}
    assert len(shard1) == 8
    second = runner.invoke(main, ["study", "run", str(spec_file), "--shard", "2/2"])
    assert second.exit_code == 0, second.output
    everything = {r.data.tags["config_hash"] for r in children(spec)}
    assert len(everything) == 16 and everything == {r.config_hash for r in expand(spec)}
    assert finished_by_hash(spec) == {h: 1 for h in everything}  # disjoint: nothing ran twice

    # the frozen encoders' features were computed once per (encoder, weights), not per cell
    extractors = [p for p in cache.iterdir() if p.is_dir()]
    assert len(extractors) == 2
    px_items = sum(1 for r in csv.DictReader(open(dental_cohort.manifest)) if r["modality"] == "PX")
    assert all(len(list(p.glob("*.pt"))) == px_items for p in extractors)
    mtimes = {p: p.stat().st_mtime_ns for e in extractors for p in e.glob("*.pt")}

    again = run_study(spec)
    assert again.ran == [] and len(again.already_done) == 16 and again.complete
    assert len(children(spec)) == 16
    assert mtimes == {p: p.stat().st_mtime_ns for e in extractors for p in e.glob("*.pt")}

    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    parent = client.get_run(again.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["medxfer.progress"] == "16/16"
    child = children(spec)[0]
    assert child.data.tags["mlflow.parentRunId"] == again.parent_run_id
    assert child.data.params["feature_cache"] == "True" and child.data.params["augment"] == "False"
    # short run name: the grid values that differ (weights, lr), then the fold; the full name is tag `cell`
    tags = child.data.tags
    assert child.info.run_name == f"{tags['weights']}/lr{float(tags['lr']):g}/fold{tags['fold']}"
    assert tags["cell"] == f"classification/resnet18/{tags['weights']}/all/lr{float(tags['lr']):g}"

    report = runner.invoke(main, ["study", "report", "s", "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    rows = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    assert len(rows) == 4 and {r["weights"] for r in rows} == {"scratch", "mine"}
    assert all(r["n_runs"] == "4" for r in rows)
    logged = {a.path for a in client.list_artifacts(again.parent_run_id, "report")}
    assert "report/report.html" in logged

    # the spec narrowed to one lr: nothing to run, and the report shows the current grid only
    narrowed = write_spec(tmp_path / "narrow.yaml", dental_cohort.manifest,
                          {"encoder": ["resnet18"], "weights": ["scratch", "mine"], "freeze": ["all"],
                           "lr": [1e-3]}, train={"feature_cache_dir": str(tmp_path / "features")})
    assert run_study(load_spec(narrowed)).ran == []
    report = runner.invoke(main, ["study", "report", "s", "--out", str(tmp_path / "report2")])
    assert report.exit_code == 0, report.output
    assert len(list(csv.DictReader(open(tmp_path / "report2" / "results.csv")))) == 2
    assert "8 run(s) of other configurations" in (tmp_path / "report2" / "report.md").read_text()

    leaks = find_identifiers(tmp_path, dental_cohort.identifiers, BINARY)
    assert leaks == [], leaks


def test_killed_run_is_marked_failed_and_rerun(dental_cohort, mlflow_store, tmp_path):
    """kill -9 in the middle of a run: the next `study run` marks the orphan FAILED, re-runs it,
    and every configuration ends with exactly one FINISHED run."""
    spec_file = write_spec(tmp_path / "study.yaml", dental_cohort.manifest,
                           {"encoder": ["resnet18"], "weights": ["scratch"], "freeze": ["none"]},
                           name="killed", train={"epochs": 6})
    spec = load_spec(spec_file)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    proc = subprocess.Popen([sys.executable, "-m", "medxfer.cli", "study", "run", str(spec_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            runs = children(spec) if proc.poll() is None else []
            if any(r.info.status == "FINISHED" for r in runs) and any(r.info.status == "RUNNING" for r in runs):
                break
            assert proc.poll() is None, "the study ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no run in progress within 300 s")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    orphan = next(r for r in children(spec) if r.info.status == "RUNNING")  # kill -9 cannot close its run

    outcome = run_study(spec)
    orphan_name = f"{orphan.data.tags['cell']}/fold{orphan.data.tags['fold']}/seed{orphan.data.tags['seed']}"
    assert orphan_name in outcome.reset and not outcome.failed and outcome.complete
    runs = children(spec)
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert statuses[orphan.info.run_id] == "FAILED"
    assert finished_by_hash(spec) == {r.config_hash: 1 for r in expand(spec)}
    assert len(outcome.ran) + len(outcome.already_done) == 4


def test_a_failing_cell_is_reported_and_the_rest_completes(dental_cohort, mlflow_store, tmp_path):
    """A cell that fails when it runs (here a weights file that is not a weights file: the plan can only see that
    it is readable) is reported, and the other cells complete."""
    junk = tmp_path / "not-weights.pt"
    junk.write_bytes(b"this is not a state dict")
    spec_file = write_spec(tmp_path / "study.yaml", dental_cohort.manifest,
                           {"encoder": ["resnet18"], "weights": ["scratch", f"file:{junk}"], "freeze": ["all"]},
                           name="partial", data={"folds": [0]})
    result = CliRunner().invoke(main, ["study", "run", str(spec_file)])
    assert result.exit_code == 1
    assert "1 ran" in result.output and "1 failed" in result.output
    assert "not-weights.pt" in result.output
    spec = load_spec(spec_file)
    assert len(finished_by_hash(spec)) == 1
    dry = CliRunner().invoke(main, ["study", "run", str(spec_file), "--dry-run"])
    assert "done" in dry.output and "failed" in dry.output  # the failed cell (its claimed run FAILED) runs again


def test_feature_cache_gives_the_full_networks_predictions(dental_cohort, mlflow_store):
    """Heads trained from cached features predict what the same frozen network trained through its
    encoder predicts (no augmentation either way)."""
    from medxfer.engine import train_bundle

    probs = {}
    for config in ("train_features", "train"):
        result = train_bundle("classification", config=config, manifest=str(dental_cohort.manifest),
                              label="supernumerary", encoder="resnet18", freeze="all", augment=False, fold=1,
                              modalities=["PX"], output_dir=f"out_{config}", **SMALL)
        probs[config] = [float(r["p"]) for r in csv.DictReader(open(result.output_dir / "predictions.csv"))]
    assert probs["train_features"] == pytest.approx(probs["train"], abs=1e-4)
    assert len(set(probs["train"])) > 1


def test_a_run_alive_on_another_machine_is_left_alone_until_its_heartbeat_is_stale(
        dental_cohort, mlflow_store, tmp_path, monkeypatch):
    """Shards on several machines share one store: a RUNNING run of another host with a fresh
    heartbeat is not started twice; once its heartbeat is older than MEDXFER_STALE_SECONDS it is
    taken to be orphaned, marked FAILED and re-run."""
    import mlflow

    from medxfer.tracking import experiment_id

    spec = load_spec(write_spec(tmp_path / "study.yaml", dental_cohort.manifest,
                                {"encoder": ["resnet18"], "weights": ["scratch"], "freeze": ["all"]},
                                name="remote", data={"folds": [0]}))
    (planned,) = expand(spec)
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    exp = experiment_id(client, spec.experiment)
    remote = client.create_run(exp, run_name=planned.name, tags={
        **planned.tags(spec.name, list(spec.grid)), "medxfer.host": "gpu-node-7", "medxfer.pid": "4242",
        "medxfer.heartbeat": f"{time.time():.0f}"})

    lines: list[str] = []
    outcome = run_study(spec, echo=lines.append)
    assert outcome.ran == [] and not outcome.complete and any("running elsewhere" in s for s in lines)
    assert client.get_run(remote.info.run_id).info.status == "RUNNING"

    monkeypatch.setenv("MEDXFER_STALE_SECONDS", "0")
    time.sleep(1.1)
    outcome = run_study(spec)
    assert outcome.reset == [planned.name] and len(outcome.ran) == 1 and outcome.complete
    assert client.get_run(remote.info.run_id).info.status == "FAILED"


def _fake_run(tags: dict, start_s: float | None = None):
    """A RUNNING run as the store returns it: tags and a start time (ms)."""
    from types import SimpleNamespace

    start = (time.time() if start_s is None else start_s) * 1000
    return SimpleNamespace(data=SimpleNamespace(tags=tags),
                           info=SimpleNamespace(status="RUNNING", start_time=start, run_id="r"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_runner_is_identified_by_more_than_its_hostname(monkeypatch):
    """Issue 20 item 8: hosts sharing a hostname (containers, cloned nodes) never judge each other's
    runs by pid — only by heartbeat age; on this machine a dead pid, a reused pid or this very
    runner still mean orphaned; runs of an older medxfer (no runner tag) keep the hostname rule."""
    from medxfer.study.claims import is_orphaned as _orphaned
    from medxfer.study.claims import machine_id, runner_identity

    me = runner_identity()
    assert me.host == socket.gethostname() and me.pid == os.getpid() and len(me.runner) == 32
    assert me.machine == machine_id() and runner_identity() is me
    if Path("/proc/sys/kernel/random/boot_id").exists():
        assert me.machine.startswith("boot:" + Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    now, dead = time.time(), _dead_pid()
    twin = {"medxfer.host": me.host, "medxfer.machine": "boot:another-machine/pid:[1]", "medxfer.runner": "f" * 32,
            "medxfer.heartbeat": f"{now:.0f}"}
    for pid in (os.getpid(), dead):  # the pids mean nothing on the other machine: its heartbeat is fresh
        assert not _orphaned(_fake_run({**twin, "medxfer.pid": str(pid)}), me, now)
    assert _orphaned(_fake_run({**twin, "medxfer.pid": str(os.getpid())}), me, now + 601)  # stale heartbeat

    local = {**twin, "medxfer.machine": me.machine}
    assert _orphaned(_fake_run({**local, "medxfer.pid": str(dead)}), me, now)  # its process is gone
    assert _orphaned(_fake_run({**local, "medxfer.pid": str(os.getpid())}), me, now)  # pid reused by this process
    assert not _orphaned(_fake_run({**local, "medxfer.pid": str(os.getppid())}), me, now)  # alive
    assert _orphaned(_fake_run({**local, "medxfer.runner": me.runner, "medxfer.pid": str(os.getppid())}), me, now)

    old = {"medxfer.host": me.host, "medxfer.heartbeat": f"{now:.0f}"}  # a store written before runner ids
    assert _orphaned(_fake_run({**old, "medxfer.pid": str(dead)}), me, now)
    assert not _orphaned(_fake_run({**old, "medxfer.pid": str(os.getppid())}), me, now)
    assert not _orphaned(_fake_run({**old, "medxfer.host": "gpu-node-7", "medxfer.pid": str(dead)}), me, now)


def test_a_heartbeat_from_the_future_is_reported_as_clock_skew(caplog):
    """Heartbeats are compared across machines: one well ahead of this clock says the clocks disagree (and a
    run of a machine whose clock runs behind would look orphaned too early), so the runner says so."""
    import logging

    from medxfer.study.claims import warn_clock_skew

    now = time.time()
    ahead = _fake_run({"medxfer.host": "gpu-node-7", "medxfer.heartbeat": f"{now + 900:.0f}"})
    fine = _fake_run({"medxfer.host": "gpu-node-8", "medxfer.heartbeat": f"{now + 20:.0f}"})  # jitter, not skew
    with caplog.at_level(logging.WARNING, logger="medxfer.study.claims"):
        assert warn_clock_skew([ahead, fine], now) == [ahead]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "clock skew" in message and "gpu-node-7" in message and "900 s ahead" in message and "NTP" in message


def test_the_heartbeat_refreshes_this_runners_run_only(store, monkeypatch):
    """A twin machine's run with this hostname and pid keeps its own heartbeat: were it refreshed
    here, a dead twin's run would look alive for ever."""
    from medxfer.study import claims
    from medxfer.tracking import client, experiment_id

    monkeypatch.setattr(claims, "HEARTBEAT_SECONDS", 0.2)
    me, c = claims.runner_identity(), client()
    exp = experiment_id(c, "medxfer/beat")
    tags = {"config_hash": "h" * 20, "medxfer.heartbeat": "1000", "medxfer.host": me.host,
            "medxfer.pid": str(me.pid)}
    mine = c.create_run(exp, tags={**tags, **me.tags()}).info.run_id
    twin_tags = {**tags, "medxfer.machine": "boot:twin/pid:[1]", "medxfer.runner": "0" * 32}
    twin = c.create_run(exp, tags=twin_tags).info.run_id
    with claims.Heartbeat(c) as beat:
        beat.run_id = mine
        deadline = time.time() + 60
        while c.get_run(mine).data.tags["medxfer.heartbeat"] == "1000" and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    assert float(c.get_run(mine).data.tags["medxfer.heartbeat"]) > time.time() - 120
    assert c.get_run(twin).data.tags["medxfer.heartbeat"] == "1000"


def test_a_live_run_of_a_machine_with_the_same_hostname_and_pid_is_left_alone(dental_cohort, mlflow_store, tmp_path):
    """Two containers called ``worker`` whose runners both have pid 7: the other one's RUNNING run
    (fresh heartbeat) is not reset and not run a second time; a new run carries the runner's
    identity (hostname, machine, pid, runner id)."""
    import mlflow

    from medxfer.study.claims import runner_identity
    from medxfer.tracking import experiment_id

    spec = load_spec(write_spec(tmp_path / "study.yaml", dental_cohort.manifest,
                                {"encoder": ["resnet18"], "weights": ["scratch"], "freeze": ["all"]},
                                name="twin", data={"folds": [0]}))
    (planned,) = expand(spec)
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    twin = client.create_run(experiment_id(client, spec.experiment), run_name=planned.name, tags={
        **planned.tags(spec.name, list(spec.grid)), "medxfer.host": socket.gethostname(),
        "medxfer.pid": str(os.getpid()), "medxfer.machine": "boot:0f1e2d3c/pid:[4026531836]",
        "medxfer.runner": "0" * 32, "medxfer.heartbeat": f"{time.time():.0f}"})
    lines: list[str] = []
    outcome = run_study(spec, echo=lines.append)
    assert outcome.reset == [] and outcome.ran == [] and outcome.running_elsewhere == [planned.name]
    assert client.get_run(twin.info.run_id).info.status == "RUNNING"
    assert "medxfer.reset" not in client.get_run(twin.info.run_id).data.tags

    client.delete_run(twin.info.run_id)
    outcome = run_study(spec)
    assert len(outcome.ran) == 1 and outcome.complete
    tags = client.get_run(outcome.ran[0][1]).data.tags
    me = runner_identity()
    assert tags["medxfer.runner"] == me.runner and tags["medxfer.machine"] == me.machine
    assert tags["medxfer.host"] == me.host and tags["medxfer.pid"] == str(os.getpid())


def test_the_parent_run_names_file_weights_by_base_name(dental_cohort, mlflow_store, tmp_path):
    """Issue 20 item 4: like the child runs, the parent's params and its spec.yaml hold
    ``file:<base name>`` only — a folder path can carry a person's name; comments stay."""
    import mlflow

    from medxfer.study.grid import expand
    from medxfer.study.runner import _log_grid, _parent_run
    from medxfer.tracking import experiment_id

    folder = tmp_path / "Dr Jane Roe" / "weights"
    folder.mkdir(parents=True)
    for name in ("w.pt", "w.pt.v2"):
        (folder / name).write_bytes(b"weights")
    spec_file = write_spec(tmp_path / "study.yaml", dental_cohort.manifest,
                           {"encoder": ["resnet18"], "weights": ["scratch", f"file:{folder / 'w.pt'}",
                                                                 f"file:{folder / 'w.pt.v2'}"]}, name="paths",
                           train={"dropout": 0.1})
    spec_file.write_text("# compare my weights\n" + spec_file.read_text())
    spec = load_spec(spec_file)
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    parent = _parent_run(client, spec, experiment_id(client, spec.experiment))
    _log_grid(client, parent, spec, expand(spec), [])  # grid.json and spec.yaml, logged by every study run
    params = client.get_run(parent).data.params
    assert params["grid.weights"] == "['scratch', 'file:w.pt', 'file:w.pt.v2']"
    logged = Path(client.download_artifacts(parent, "spec.yaml", str(tmp_path / "dl"))).read_text()
    assert "Jane" not in logged and "Jane" not in str(params)
    assert logged.startswith("# compare my weights")
    assert yaml.safe_load(logged)["grid"]["weights"] == ["scratch", "file:w.pt", "file:w.pt.v2"]
    assert yaml.safe_load(logged)["data"] == yaml.safe_load(spec.text)["data"]


def test_segmentation_study_compares_sources_on_per_case_dice(mlflow_store, tmp_path):
    """A segmentation grid runs through the same runner; the report pairs per-case Dice."""
    from medxfer import synthetic
    from medxfer.ingest import ingest, split
    from medxfer.study.report import build_report

    labels = synthetic.write_lesion_pngs(tmp_path / "src", n_images=16)
    ingest(tmp_path / "src" / "images", tmp_path / "cohort", labels=labels, key="image", modality="US", workers=1)
    split(tmp_path / "cohort", 4, seed=0)
    import_random_weights(tmp_path)
    spec_file = tmp_path / "seg.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "seg", "bundle": "segmentation",
        "data": {"manifest": str(tmp_path / "cohort" / "manifest.csv"), "label": "mask", "folds": [0, 1],
                 "mask_root": str(tmp_path / "src")},
        "grid": {"encoder": ["resnet18"], "weights": ["scratch", "mine"]},
        "train": {"epochs": 1, "image_size": 64, "batch_size": 4}}))
    outcome = run_study(load_spec(spec_file))
    assert not outcome.failed and len(outcome.ran) == 4
    assert all(name.startswith("segmentation/resnet18/") for name, _, _ in outcome.ran)
    paths = build_report("seg", out_dir=tmp_path / "report")
    rows = list(csv.DictReader(open(paths["comparisons.csv"])))
    assert len(rows) == 1 and "Wilcoxon" in rows[0]["test"] and int(rows[0]["n_cases"]) == 8
