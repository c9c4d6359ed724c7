"""`medxfer demo` ends with the exact command that opens its runs, from any folder (the full demo
runs in tests/test_demo.py; here its result is stubbed)."""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from click.testing import CliRunner

import medxfer.demo
from medxfer.cli import main
from medxfer.demo import DemoResult
from medxfer.tracking import resolve_tracking_uri


def test_the_printed_command_opens_the_demos_own_store(tmp_path, monkeypatch, migrated_mlflow_db):
    """The demo writes to the store under its own MEDXFER_HOME; the printed line, run as printed in another
    folder (a fresh shell: the user's MEDXFER_HOME, no MLFLOW_TRACKING_URI), serves exactly that store."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "user-home"))
    monkeypatch.chdir(tmp_path)

    def fake_run_demo(out, settings, echo):  # what run_demo does to the store: its own MEDXFER_HOME
        os.environ["MEDXFER_HOME"] = str(Path(out).resolve() / "home")
        db = Path(out).resolve() / "home" / "mlruns" / "mlflow.db"
        db.parent.mkdir(parents=True)
        shutil.copyfile(migrated_mlflow_db, db)
        c = mlflow.MlflowClient(f"sqlite:///{db}")
        c.create_run(c.create_experiment("medxfer/demo-dental", artifact_location=(db.parent / "a").as_uri()))
        return DemoResult(report=Path(out) / "report.html", study="demo-dental", parent_run_id=None, seconds=1.0,
                          tracking_uri=resolve_tracking_uri())

    monkeypatch.setattr(medxfer.demo, "run_demo", fake_run_demo)
    result = CliRunner().invoke(main, ["demo", "--out", "demo"])
    assert result.exit_code == 0, result.output
    line = next(s for s in result.stdout.splitlines() if s.startswith("browse the runs: "))
    words = shlex.split(line.removeprefix("browse the runs: ").split("   ")[0])
    store = f"sqlite:///{tmp_path / 'demo' / 'home' / 'mlruns' / 'mlflow.db'}"
    assert words == [f"MLFLOW_TRACKING_URI={store}", "medxfer", "ui"]

    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "user-home"))  # a fresh shell of the user
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    name, value = words[0].split("=", 1)
    monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append(env))
    opened = CliRunner().invoke(main, words[2:])
    assert opened.exit_code == 0, opened.output
    assert calls[0]["MLFLOW_BACKEND_STORE_URI"] == store
