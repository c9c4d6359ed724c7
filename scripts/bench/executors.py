#!/usr/bin/env python
"""Grid throughput of the study executors on one 8-run CPU grid, same run.

    python scripts/bench/executors.py                  # 96 panoramics, ResNet18 at 128^2, 10 epochs per run
    python scripts/bench/executors.py --quick          # a smoke check: 24 panoramics, 64^2, 2 epochs, batch 8
    python scripts/bench/executors.py --num-workers auto   # the bundles' default loader setting in every row
    python scripts/bench/executors.py --background-load 1  # a shared machine: one core kept busy by another job

Grid: ResNet18, weights scratch, freeze none, lr {1e-3, 3e-4, 1e-4, 3e-5} x dropout {0, 0.3} = 8 runs,
fold 0, seed 0, no augmentation, on the CPU. Every row runs the whole grid through
`medxfer.study.run_study` into its own fresh MLflow store (a SQLite file) under its own spec name, so no
row finds another's runs. Before the rows, one untimed single-run study fills the disk item cache the
rows share (`<cohort>/.medxfer/items`) and loads torch and MONAI in this process: every row then starts
from the same warm cache.

Columns: wall-clock seconds for the 8 runs; Ray's start-up; first run = seconds from the row's start to its
first run's claim (the study's set-up, and for the pool and Ray rows their worker processes starting and
importing torch); runs/min; ratio = the row's runs/min / the sequential row's.
Rows:
  sequential   `--executor local --max-parallel 1`: today's runner, one run after the other in this process
  local x2     `--executor local --max-parallel 2`: a pool of 2 worker processes, the cores divided
  ray x2       `--executor ray --max-parallel 2` on a local Ray instance; its start-up (starting Ray,
               as `run_study` echoes it: "ray executor: ... started in X s") is reported on its own and
               left out of its runs/min
Targets (issue 16): local x2 / sequential >= 1.6 on 2 cores; ray x2 / local x2 >= 0.8 after start-up.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# A CPU grid on every machine: no GPU for this process, its pool workers or its Ray instance (a spec holds
# data, not a `device` expression, so the bundles' default device is what this leaves: the CPU).
os.environ["CUDA_VISIBLE_DEVICES"] = ""

GRID = {"encoder": ["resnet18"], "weights": ["scratch"], "freeze": ["none"], "lr": [1e-3, 3e-4, 1e-4, 3e-5],
        "dropout": [0.0, 0.3]}
RUNS = 8
# (row, executor, max_parallel)
ROWS = (("sequential", "local", 1), ("local x2", "local", 2), ("ray x2", "ray", 2))
STARTED = re.compile(r"ray executor:.*started in ([0-9.]+) s")


@dataclass
class RowTiming:
    """One row's wall-clock seconds for the grid and, for Ray, the start-up part of them."""

    seconds: float
    startup: float = 0.0
    first_run: float = float("nan")  # seconds from the row's start to its first run's start

    @property
    def runs_seconds(self) -> float:
        return self.seconds - self.startup

    def runs_per_minute(self) -> float:
        return RUNS * 60.0 / self.runs_seconds


def spec_for(args, manifest: Path, name: str, grid: dict, epochs: int | None = None):
    """The bench's study spec: ``grid`` on fold 0, CPU, no augmentation, the loader setting asked for."""
    from medxfer.study import parse_spec

    train = {"epochs": epochs or args.epochs, "image_size": args.image_size, "batch_size": args.batch_size,
             "augment": args.augment}
    workers = args.num_workers if args.num_workers == "auto" else int(args.num_workers)
    return parse_spec({"name": name, "bundle": "classification",
                       "data": {"manifest": str(manifest), "label": "supernumerary", "folds": [0]},
                       "grid": grid, "seeds": [0], "train": train, "resources": {"num_workers": workers}})


def fresh_store(work: Path, row: str) -> Path:
    """An empty folder for ``row``'s MLflow store and run folders, set as this process's tracking store
    (worker processes and Ray tasks inherit it)."""
    store = work / f"store-{re.sub(r'[^a-z0-9]+', '-', row)}"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    return store


def warm_up(args, manifest: Path, work: Path) -> None:
    """One untimed run of the grid's first cell (one epoch): fills the shared item cache."""
    from medxfer.study import run_study

    store = fresh_store(work, "warm-up")
    grid = {k: v[:1] for k, v in GRID.items()}
    spec = spec_for(args, manifest, "bench-executors-warm-up", grid, epochs=1)
    outcome = run_study(spec, runs_dir=store / "runs", max_parallel=1)
    if outcome.failed or not outcome.complete:
        raise SystemExit(f"warm-up: {outcome.failed or outcome}")


def timed_row(args, manifest: Path, work: Path, row: str, executor: str, max_parallel: int) -> RowTiming:
    """Seconds for the 8 runs of ``row`` in a fresh store; Ray's start-up as it echoes it."""
    from medxfer.study import run_study

    store = fresh_store(work, row)
    spec = spec_for(args, manifest, f"bench-executors-{store.name.removeprefix('store-')}", GRID)
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if args.verbose:
            print(f"  [{row}] {line}", file=sys.stderr, flush=True)

    began, start = time.time(), time.perf_counter()
    outcome = run_study(spec, echo=echo, runs_dir=store / "runs", executor=executor, max_parallel=max_parallel)
    seconds = time.perf_counter() - start
    if outcome.failed or len(outcome.ran) != RUNS or not outcome.complete:
        raise SystemExit(f"{row}: {outcome.failed or outcome}\n" + "\n".join(lines[-20:]))
    startup = next((float(m.group(1)) for m in map(STARTED.search, lines) if m), 0.0)
    if executor == "ray" and not startup:
        raise SystemExit(f"{row}: run_study did not echo Ray's start-up:\n" + "\n".join(lines[-20:]))
    return RowTiming(seconds, startup, first_run_after(spec, began))


def first_run_after(spec, began: float) -> float:
    """Seconds from the row's start to its first run's claim (the run's MLflow start time): the study's
    set-up, plus worker processes started and torch imported in them for the pool and Ray rows."""
    from medxfer.study import expand
    from medxfer.study.runner import study_state

    _, by_hash = study_state(spec, expand(spec))
    starts = [run.info.start_time / 1000.0 for runs in by_hash.values() for run in runs]
    return min(starts) - began if starts else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="24 patients, 64^2, 2 epochs: a smoke check")
    parser.add_argument("--patients", type=int, default=None, help="default 96 (--quick: 24)")
    parser.add_argument("--image-size", type=int, default=None, help="default 128 (--quick: 64)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run; default 10 (--quick: 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (--quick: 8)")
    parser.add_argument("--num-workers", default="0",
                        help="resources.num_workers of every row: a number or 'auto' (default 0: the loader in "
                             "the run's process, so that the rows differ only by their executor)")
    parser.add_argument("--rows", default=",".join(r for r, _, _ in ROWS),
                        help="the rows to time, comma-separated (default all)")
    parser.add_argument("--augment", action="store_true",
                        help="the bundles' default CPU augmentation in every run (default: none)")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="N single-threaded busy loops running through every row, as another user's jobs "
                             "on a shared machine would (default 0: an idle machine)")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the cohort here between invocations.")
    parser.add_argument("--verbose", action="store_true", help="echo each row's runner lines to stderr")
    args = parser.parse_args()
    args.patients = args.patients or (24 if args.quick else 96)
    args.image_size = args.image_size or (64 if args.quick else 128)
    args.epochs = args.epochs or (2 if args.quick else 10)
    args.batch_size = args.batch_size or (8 if args.quick else 16)
    if args.num_workers != "auto" and not args.num_workers.isdigit():
        parser.error("--num-workers: a number or 'auto'")
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(wanted) - {r for r, _, _ in ROWS})
    if unknown:
        parser.error(f"--rows: unknown {unknown}; rows are {[r for r, _, _ in ROWS]}")
    import logging

    import torch

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="medxfer-bench-executors-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDXFER_HOME", str(work / "home"))
    from medxfer.engine.loaders import available_cpus
    from medxfer.synthetic import dental_cohort

    manifest, _ = dental_cohort(work, n_patients=args.patients, ceph=False, workers=2)
    os.chdir(work)
    try:
        import ray
        ray_version = ray.__version__
    except ImportError:
        ray_version = None
        if "ray x2" in wanted:
            wanted.remove("ray x2")
            print("# ray is not installed (pip install 'medxfer[ray]'): the ray row is left out")
    print(f"# {RUNS}-run grid, {args.patients} patients (fold 0), resnet18 at {args.image_size}^2, {args.epochs} "
          f"epochs, batch {args.batch_size}, num_workers {args.num_workers}, augment {args.augment}, CPU; "
          f"{available_cpus()} cores, {args.background_load} busy loop(s) beside, "
          f"torch {torch.__version__}" + (f", ray {ray_version}" if ray_version else ""), flush=True)
    began = time.perf_counter()
    warm_up(args, manifest, work)
    print(f"# warm-up (item cache filled, untimed): {time.perf_counter() - began:.1f} s", flush=True)
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.background_load)]
    timings = {}
    try:
        for row, executor, max_parallel in ROWS:
            if row in wanted:
                timings[row] = timed_row(args, manifest, work, row, executor, max_parallel)
                print(f"# {row}: {timings[row].seconds:.1f} s", flush=True)
    finally:
        for process in load:
            process.kill()
            process.wait()
    base = timings.get("sequential")
    print(f"{'row':<12} {'seconds':>8} {'start-up':>9} {'first run':>10} {'runs/min':>9} {'ratio':>6}")
    for row, t in timings.items():
        ratio = f"{t.runs_per_minute() / base.runs_per_minute():6.2f}" if base else f"{'':>6}"
        startup = f"{t.startup:9.1f}" if row.startswith("ray") else f"{'':>9}"
        print(f"{row:<12} {t.seconds:8.1f} {startup} {t.first_run:10.1f} {t.runs_per_minute():9.2f} {ratio}")
    local, ray_row = timings.get("local x2"), timings.get("ray x2")
    if base and local:
        print(f"local x2 / sequential: {local.runs_per_minute() / base.runs_per_minute():.2f}x (target >= 1.6)")
    if local and ray_row:
        print(f"ray x2 / local x2 after start-up: {ray_row.runs_per_minute() / local.runs_per_minute():.2f}x "
              f"(target >= 0.8); ray start-up {ray_row.startup:.1f} s; with start-up "
              f"{local.seconds / ray_row.seconds:.2f}x")
    print(f"# total {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
