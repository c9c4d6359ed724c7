"""``medxfer`` answers help and argument errors before torch, MONAI and MLflow load (seconds each), and the
errors that need the libraries come before any work: one line, exit code 2, the hint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medxfer.cli import main

HEAVY = ("torch", "monai", "mlflow")
# run in a fresh interpreter: which heavy libraries a command imported before it exited
_PROBE = """
import json, sys
from medxfer.cli import main
try:
    main(sys.argv[1:], prog_name="medxfer")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _probe(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


@pytest.mark.parametrize("args", [
    ["--help"], ["train", "--help"], ["study", "run", "--help"], ["predict", "--help"],
    ["train", "classification", "--manifest", "/nonexistent/manifest.csv", "--label", "y", "--encoder", "resnet18"],
    ["train", "classification", "--manifest", "/nonexistent/manifest.csv", "--label", "y"],
    ["study", "run", "/nonexistent/spec.yaml"],
    ["study", "report", "x", "--pool", "encoder"],
    ["predict", "0" * 32, "/nonexistent"],
    ["weights", "import", "/nonexistent/w.pt", "--name", "imagenet", "--arch", "resnet18"],
])
def test_help_and_argument_errors_load_no_heavy_library(args):
    result = _probe(*args)
    assert result["heavy"] == [], (args, result)
    assert result["code"] in (0, 2), result


def test_a_missing_manifest_is_one_line_before_training_loads(tmp_path):
    missing = tmp_path / "manifest.csv"
    result = _probe("train", "classification", "--manifest", str(missing), "--label", "y", "--encoder", "resnet18",
                    "--epcohs", "1")
    assert result["code"] == 2 and result["heavy"] == []
    assert result["stderr"].strip().splitlines() == [
        f"medxfer: error: {missing}: no such manifest (run medxfer ingest first)"]


@pytest.fixture
def manifest(tmp_path) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("item_id,patient,modality,image,y,fold\n")
    return path


def _one_line(result) -> str:
    assert result.exit_code == 2, (result.exception, result.output)
    (line,) = result.stderr.strip().splitlines()
    return line


def test_an_unknown_bundle_key_names_the_closest_one(manifest):
    """``--epcohs 1`` used to train the default 10 epochs silently; the check reads the bundle's settings without
    torch, MONAI or MLflow (an argument error answers at once)."""
    probed = _probe("train", "classification", "--manifest", str(manifest), "--label", "y", "--encoder", "resnet18",
                    "--epcohs", "1")
    assert probed["code"] == 2 and probed["heavy"] == [], probed
    result = CliRunner().invoke(main, ["train", "classification", "--manifest", str(manifest), "--label", "y",
                                       "--encoder", "resnet18", "--epcohs", "1"])
    assert _one_line(result).startswith("medxfer: error: unknown bundle key 'epcohs'; did you mean 'epochs'? ")
    result = CliRunner().invoke(main, ["train", "classification", "--manifest", str(manifest), "--label", "y",
                                       "--encoder", "resnet18", "--image-szie", "64", "--lr", "1e-3",
                                       "--batch-sise", "2"])
    assert _one_line(result).startswith("medxfer: error: unknown bundle keys 'image_szie', 'batch_sise'; did you "
                                        "mean 'image_size' for 'image_szie', 'batch_size' for 'batch_sise'? ")


def test_an_unknown_encoder_lists_the_known_ones(manifest, tmp_path):
    from medxfer.models import ARCHS

    result = CliRunner().invoke(main, ["train", "classification", "--manifest", str(manifest), "--label", "y",
                                       "--encoder", "resnet500", "--epochs", "1"])
    line = _one_line(result)
    assert line.startswith("medxfer: error: unknown encoder 'resnet500'; known: resnet18, ")
    assert line.endswith("; did you mean 'resnet50'?") and all(arch in line for arch in ARCHS)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not read")
    result = CliRunner().invoke(main, ["weights", "import", str(weights), "--name", "imagenet", "--arch", "resnet500"])
    assert _one_line(result).startswith("medxfer: error: unknown encoder 'resnet500'; known: resnet18, ")
