"""The executor and GPU benchmarks: the GPU one says it measured nothing without a GPU (and writes nothing);
the executor one runs end to end on the quick grid (slow: run with `pytest -m slow`)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would measure it")
def test_gpu_benchmark_without_a_gpu_measures_nothing_and_writes_nothing(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    out = subprocess.run([sys.executable, str(REPO / "scripts/bench/gpu_train.py"), "--docs", str(docs),
                          "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "no GPU: nothing measured"
    assert docs.read_text() == "# Benchmarks\n"
    assert not (tmp_path / "work").exists()  # no cohort generated for nothing


@pytest.mark.slow
def test_gpu_benchmark_logic_on_a_cpu_prints_both_rows_and_keeps_docs_untouched(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    out = subprocess.run([sys.executable, str(REPO / "scripts/bench/gpu_train.py"), "--device", "cpu",
                          "--images", "32", "--src-size", "64", "--size", "64", "--encoder", "resnet18",
                          "--batch-size", "8", "--epochs", "2", "--warmup", "1", "--docs", str(docs),
                          "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()
            if line.split()[:1] in (["synthetic"], ["bundle"])}
    assert set(rows) == {"synthetic", "bundle"}, out.stdout
    synthetic, bundle = float(rows["synthetic"][0]), float(rows["bundle"][0])
    assert synthetic > 0 and bundle > 0
    assert float(rows["bundle"][1]) == pytest.approx(bundle / synthetic, abs=0.01)  # the ratio of the two rows
    assert docs.read_text() == "# Benchmarks\n"  # CPU figures are never recorded
    assert "only GPU figures are recorded" in out.stdout


@pytest.mark.slow
def test_executor_benchmark_quick_times_every_row_on_the_same_grid(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts/bench/executors.py"), "--quick",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    names = ["sequential", "local x2"] + (["ray x2"] if _has_ray() else [])
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row "))
    # the table under the header: row, seconds, [start-up,] first run, runs/min, ratio
    rows = {name: [float(f) for f in line[len(name):].split()]
            for line in lines[header + 1:header + 1 + len(names)] for name in names if line.startswith(name + " ")}
    assert list(rows) == names, out.stdout
    startup = rows["ray x2"][1] if "ray x2" in rows else 0.0
    for name, values in rows.items():
        seconds, runs_per_min, ratio = values[0], values[-2], values[-1]
        runs_seconds = seconds - (startup if name == "ray x2" else 0.0)  # Ray's start-up is left out
        assert runs_per_min == pytest.approx(8 * 60 / runs_seconds, rel=0.02), out.stdout
        assert ratio == pytest.approx(runs_per_min / rows["sequential"][-2], abs=0.01), out.stdout
    if "ray x2" in rows:
        assert 0 < startup < rows["ray x2"][0]


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True
