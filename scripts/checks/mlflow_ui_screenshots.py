"""Screenshots of a study in the MLflow UI and of its report, in headless Chromium.

A small study is run as ``medxfer study run`` runs it — the grid, the parent run, the child runs' names
and tags, the experiment's type and comparison view — with the training itself replaced by a stub that
logs what a finished run logs (params, per-epoch validation metrics, ``test_auc``, predictions.csv), so
the check takes seconds, not the demo's minutes. The report is then built and logged as ``study report``
does, ``mlflow server`` is started on a free port, and Chromium saves:

* ``mlflow-study-runs.png``: the link ``medxfer.tracking.ui.study_page`` gives (the runs table);
* ``mlflow-study-parent.png``: the parent run's page (its description links the report);
* ``report.png``: the report's HTML.

Usage: ``python scripts/checks/mlflow_ui_screenshots.py [--out docs/screenshots] [--chromium PATH]``.
Exit 0 when every PNG was written; 2 when no Chromium is found.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
STUDY = "ui-check"
GRID = {"encoder": ["resnet18"], "weights": ["scratch", "mine"], "freeze": ["none", "all"], "lr": [0.001]}
EPOCHS = 5


def find_chromium(explicit: str | None = None) -> str | None:
    """``explicit``, else the first Chromium or Chrome on PATH (or /usr/bin/chromium); None when there is none."""
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stub_training(manifest: Path):
    """A ``train_bundle`` stand-in: one MLflow run as the engine writes it, with made-up but plausible results
    (the ``mine`` weights and a trained encoder score higher) and predictions for the test fold's items."""
    from medxfer.engine.bundles import TrainResult
    from medxfer.engine.mlflow_run import RunTracker

    with open(manifest, newline="") as f:
        items = [row for row in csv.DictReader(f) if row["modality"] == "PX"]

    def train_bundle(bundle, config: str = "train", progress=None, **overrides) -> TrainResult:
        rng = np.random.default_rng([len(overrides["weights"]), len(overrides["freeze"]), int(overrides["fold"])])
        tracker = RunTracker(overrides["experiment"], overrides["run_name"],
                             params={k: v for k, v in overrides.items()
                                     if k not in ("experiment", "parent_run_id", "tags", "run_name", "output_dir")},
                             tags=overrides["tags"], parent_run_id=overrides["parent_run_id"])
        tracker.start()
        skill = 0.58 + 0.1 * (overrides["weights"] != "scratch") + 0.04 * (overrides["freeze"] == "none")
        for epoch in range(1, EPOCHS + 1):
            tracker.log_metrics({"train_loss": 0.7 - 0.05 * epoch + rng.normal(0, 0.01),
                                 "val_auc": skill - 0.1 / epoch + rng.normal(0, 0.02)}, step=epoch)
        test = [row for row in items if int(row["fold"]) == int(overrides["fold"])]
        rows = []
        for row in test:
            y = int(row["supernumerary"])
            p = float(np.clip(0.5 + (skill - 0.5) * (1 if y else -1) + rng.normal(0, 0.3), 0.01, 0.99))
            rows.append({"item_id": row["item_id"], "patient": row["patient"], "fold": row["fold"], "label": y,
                         "y": y, "p_0": round(1 - p, 4), "p_1": round(p, 4), "p": round(p, 4)})
        out = Path(overrides["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        from sklearn.metrics import roc_auc_score

        ys = [r["y"] for r in rows]
        auc = roc_auc_score(ys, [r["p"] for r in rows]) if len(set(ys)) == 2 else skill
        metrics = {"test_auc": float(auc), "test_accuracy": float(np.mean([(r["p"] > 0.5) == r["y"] for r in rows]))}
        tracker.log_metrics(metrics)
        tracker.log_artifact(out / "predictions.csv")
        config = {k: v for k, v in overrides.items() if isinstance(v, (str, int, float, bool)) and k != "run_name"}
        (out / "metrics.json").write_text(json.dumps({  # the validation operating point the report applies
            "metrics": metrics, "youden_threshold_source": "validation", "youden_thresholds": [0.5],
            "config": config}))
        tracker.log_artifact(out / "metrics.json")
        tracker.finish()
        return TrainResult(run_id=tracker.run_id, run_name=tracker.name, output_dir=out, metrics=metrics)

    return train_bundle


def make_study(work: Path) -> tuple[str, str, Path]:
    """The study in ``work``'s store: (experiment id, parent run id, report.html)."""
    import torch

    from medxfer import synthetic
    from medxfer.models import create_encoder
    from medxfer.models.weights import import_weights, save_checkpoint
    from medxfer.study import load_spec, run_study
    from medxfer.study import runner
    from medxfer.study.report.build import build_report
    from medxfer.tracking import client

    manifest, _ = synthetic.dental_cohort(work / "cohort", n_patients=40, folds=4)
    torch.manual_seed(7)
    import_weights(save_checkpoint(work / "mine.pt", create_encoder("resnet18", "scratch", 3)), name="mine",
                   arch="resnet18", fmt="medxfer")
    spec_file = work / "study.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": STUDY, "bundle": "classification", "grid": GRID, "seeds": [0],
        "data": {"manifest": str(manifest), "label": "supernumerary", "folds": 4, "modalities": ["PX"]},
        "train": {"epochs": EPOCHS, "image_size": 64, "batch_size": 8}}, sort_keys=False))
    spec = load_spec(spec_file)
    runner.train_bundle = _stub_training(manifest)  # the one thing not as `study run` does it
    outcome = run_study(spec, runs_dir=work / "runs")
    assert outcome.complete, outcome
    paths = build_report(STUDY, out_dir=work / "report", n_resamples=200)
    exp_id = client().get_experiment_by_name(spec.experiment).experiment_id
    return exp_id, outcome.parent_run_id, paths["report.html"]


def wait_for(url: str, seconds: float = 120.0) -> None:
    """Until ``url`` answers 200 (the server is up); RuntimeError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url}: no answer after {seconds:.0f} s")


def _chromium_command(chromium: str, profile: str, *args: str) -> list[str]:
    cmd = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return cmd


def screenshot(chromium: str, url: str, png: Path, size: str = "1600,1000", budget_ms: int = 15000) -> Path:
    """Chromium's headless screenshot of ``url`` (JavaScript given ``budget_ms`` of virtual time) as ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="medxfer-chromium-") as profile:
        cmd = _chromium_command(chromium, profile, f"--window-size={size}", f"--virtual-time-budget={budget_ms}",
                                f"--screenshot={png}", url)
        subprocess.run(cmd, check=False, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url}")
    return png


# What a user's browser holds once the MLflow Assistant panel (opened by itself on a first visit from this
# machine, over a third of the page) was closed: keys of the UI's local storage, "<key>_v<version>" -> JSON.
ASSISTANT_CLOSED = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


class DevTools:
    """Chromium driven over ``--remote-debugging-pipe`` (the DevTools protocol, NUL-separated JSON on file
    descriptors 3 and 4): no library beyond the standard one."""

    def __init__(self, chromium: str, size: tuple[int, int]):
        self._profile = tempfile.TemporaryDirectory(prefix="medxfer-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        cmd = _chromium_command(chromium, self._profile.name, "--remote-debugging-pipe",
                                f"--window-size={size[0]},{size[1]}", "about:blank")

        def fds():  # the browser reads fd 3 and writes fd 4; copies above them first (a pipe may be 3 or 4)
            reading = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            writing = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(reading, 3)
            os.dup2(writing, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.log = open(Path(self._profile.name) / "chromium.log", "w+")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(cmd, preexec_fn=fds, close_fds=False, stdout=self.log, stderr=self.log)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._id = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False, session=True)

    def call(self, method: str, session: bool = False, **params) -> dict:
        """Send one command (to the page's session when ``session``) and return its result."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            self.log.seek(0)
            raise RuntimeError(f"chromium ended before {method}: {self.log.read()[-2000:]}") from None
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    self.log.seek(0)
                    raise RuntimeError(f"chromium closed the DevTools pipe during {method}: {self.log.read()[-2000:]}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str, seconds: float) -> None:
        """Go to ``url`` and give its scripts ``seconds`` (real time) to render."""
        self.call("Page.navigate", url=url, session=True)
        time.sleep(seconds)

    def local_storage(self, origin_url: str, items: dict[str, str]) -> None:
        """Set ``items`` in the local storage of ``origin_url``'s origin (a page of it is opened)."""
        self.open(origin_url, 1.0)
        script = ";".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)})" for k, v in items.items())
        self.call("Runtime.evaluate", expression=script, session=True)

    def evaluate(self, expression: str):
        """The value of JavaScript ``expression`` in the page."""
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True, session=True)
        return reply["result"].get("value")

    def screenshot(self, url: str, png: Path, seconds: float = 12.0) -> Path:
        """``url`` as ``png``, after ``seconds``."""
        import base64

        self.open(url, seconds)
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png", session=True)["data"]))
        return png

    def close(self) -> None:
        """End the browser we started and remove its profile."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.log.close()
        self._profile.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--chromium", default=None, help="the browser (default: chromium on PATH)")
    parser.add_argument("--keep", action="store_true", help="keep the study's temporary folder (printed)")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no Chromium found (--chromium PATH)", file=sys.stderr)
        return 2
    out = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="medxfer-ui-check-"))
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", MEDXFER_HOME=str(work / "home"),
                      KMP_DUPLICATE_LIB_OK="TRUE")
    os.chdir(work)
    server = None
    try:
        from medxfer.tracking import ui_command
        from medxfer.tracking.ui import REPORT_PAGE, run_page, study_page

        exp_id, parent, report_html = make_study(work)
        port = free_port()
        cmd, env = ui_command(port=port)
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health")
        shots = {
            "mlflow-study-runs.png": study_page(base, exp_id),
            "mlflow-study-parent.png": f"{base}/{run_page(exp_id, parent)}?workflowType=machine_learning",
            "mlflow-study-report-artifact.png": f"{base}/{run_page(exp_id, parent, REPORT_PAGE)}"
                                                "?workflowType=machine_learning",
        }
        browser = DevTools(chromium, (1600, 1000))
        try:
            browser.local_storage(f"{base}/health", ASSISTANT_CLOSED)  # a page of the origin without the app
            for name, url in shots.items():
                print(f"{name}: {url}")
                browser.screenshot(url, out / name)
                if name == "mlflow-study-parent.png":  # the description's links, as the browser resolved them
                    links = browser.evaluate("[...document.querySelectorAll('a')].map(a => a.href)") or []
                    for wanted in (study_page(base, exp_id), f"{base}/{run_page(exp_id, parent, REPORT_PAGE)}"):
                        if wanted not in links:
                            raise RuntimeError(f"the parent run's page has no link to {wanted}")
        finally:
            browser.close()
        screenshot(chromium, report_html.resolve().as_uri(), out / "report.png", size="1600,2600", budget_ms=3000)
        print(f"report.png: {report_html}")
    finally:
        if server is not None:
            os.killpg(server.pid, 15)  # the server and its workers, which we started
            server.wait(timeout=30)
        if args.keep:
            print(f"study kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
