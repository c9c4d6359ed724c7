"""``medxfer ui``: loopback unless exposed on purpose, and the store's credentials never on the
command line (``ps``) nor in what it prints."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from medxfer.cli import main
from medxfer.tracking import ui_command

PASSWORD = "s3cr3t-Pw-9f2e"
SERVER_URI = f"postgresql://medxfer:{PASSWORD}@db.example.org:5432/mlflow"


@pytest.fixture
def exec_calls(monkeypatch):
    """``os.execve`` (and ``os.execv``, which would inherit the environment) replaced by a recorder: the
    command ends instead of becoming MLflow."""
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, list(argv), dict(env))))
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, list(argv), dict(os.environ))))
    return calls


def _ui(*args):
    return CliRunner().invoke(main, ["ui", *args])


def test_ui_command_binds_loopback_and_reads_the_store_from_the_environment(mlflow_store):
    argv, env = ui_command()
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5000"
    assert env["MLFLOW_BACKEND_STORE_URI"] == mlflow_store  # the env var mlflow server's --backend-store-uri reads
    assert "--backend-store-uri" not in argv and not any(mlflow_store in a for a in argv)


def test_the_store_password_is_neither_in_argv_nor_printed(monkeypatch, tmp_path, exec_calls):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER_URI)
    argv, env = ui_command()
    assert not any(PASSWORD in a for a in argv)
    assert env["MLFLOW_BACKEND_STORE_URI"] == SERVER_URI

    result = _ui()
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output and PASSWORD not in result.stderr
    assert "postgresql://db.example.org:5432/mlflow" in result.stderr  # the store is still named
    (path, run_argv, run_env), = exec_calls
    assert path == run_argv[0] and not any(PASSWORD in a for a in run_argv)
    assert run_env["MLFLOW_BACKEND_STORE_URI"] == SERVER_URI


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"])
def test_loopback_hosts_need_no_flag_and_get_no_warning(store_with_a_run, exec_calls, host):
    result = _ui("--host", host)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr.lower()
    assert exec_calls[0][1][exec_calls[0][1].index("--host") + 1] == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "myworkstation.example.org"])
def test_binding_beyond_loopback_is_refused_without_expose(mlflow_store, exec_calls, host):
    result = _ui("--host", host)
    assert result.exit_code == 2 and exec_calls == []
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medxfer: error: --host")
    assert "--expose" in lines[0] and "no authentication" in lines[0]


def test_expose_binds_with_a_warning_about_authentication(store_with_a_run, exec_calls):
    result = _ui("--host", "0.0.0.0", "--expose", "--port", "5123")
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "no authentication" in result.stderr and "reverse proxy" in result.stderr
    argv = exec_calls[0][1]
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "5123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_ui_reads_its_backend_store_from_that_environment_variable():
    """The variable is the one MLflow's own CLI declares for ``mlflow ui --backend-store-uri`` (click envvar)."""
    import click
    from mlflow.cli import cli

    command = cli.get_command(click.Context(cli), "ui")
    option = next(p for p in command.params if "--backend-store-uri" in p.opts)
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"


@pytest.mark.slow  # starts the real server: about 30 s on 2 cores
def test_mlflow_ui_serves_the_store_given_through_the_environment(store, tmp_path):
    """The real ``mlflow ui`` started as medxfer starts it (argv + env) serves the project store, and its
    command line, as ``ps`` shows it, does not hold the store's URI."""
    import mlflow

    mlflow.MlflowClient(store).create_experiment("medxfer/ui-check")
    port = _free_port()
    argv, env = ui_command("127.0.0.1", port)
    argv += ["--workers", "1"]  # one uvicorn worker starts faster than MLflow's default four
    env.pop("MLFLOW_TRACKING_URI", None)  # only MLFLOW_BACKEND_STORE_URI tells the server where the store is
    elsewhere = tmp_path / "elsewhere"  # not the store's folder: a default ./mlflow.db would not be it
    elsewhere.mkdir()
    server = subprocess.Popen(argv, env=env, cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=medxfer/ui-check"
        deadline, body = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "mlflow ui did not answer"
        assert body["experiment"]["name"] == "medxfer/ui-check"
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode() if Path("/proc").is_dir() else ""
        assert store.removeprefix("sqlite:///") not in cmdline
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
