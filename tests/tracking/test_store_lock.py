"""Two runners using one new SQLite store at the same moment (two shards started together, the
documented use): the store's tables are created once, both runners go on, the store stays usable."""
from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3

EXPERIMENT = "medxfer/lock-test"


def _first_use(uri: str, cwd: str, barrier, results) -> None:
    """One runner: the project client on ``uri``, an experiment and a finished run, all at once with the other."""
    try:
        os.chdir(cwd)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        from medxfer.tracking import client, experiment_id  # imported before the start line: only the store races

        barrier.wait(timeout=120)
        c = client()
        run = c.create_run(experiment_id(c, EXPERIMENT), run_name=f"shard-{os.getpid()}")
        c.set_terminated(run.info.run_id)
        results.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent process
        results.put(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")


def test_two_processes_create_a_new_sqlite_store_at_once(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(uri, str(tmp_path), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    outcomes = [results.get(timeout=10) for _ in procs]
    assert outcomes == ["ok", "ok"], outcomes

    with sqlite3.connect(db) as con:
        tables = [name for (name,) in con.execute("select name from sqlite_master where type = 'table'")]
    assert not [t for t in tables if t.startswith("_alembic_tmp")], tables

    import mlflow

    c = mlflow.MlflowClient(tracking_uri=uri)  # the store works afterwards, for a third client too
    exp = c.get_experiment_by_name(EXPERIMENT)
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    c.set_terminated(c.create_run(exp.experiment_id).info.run_id)
    assert len(c.search_runs([exp.experiment_id])) == 3
