"""``medxfer weights import|list|archs``."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from medxfer.cli import main

from .torchvision_reference import resnet_state_dict


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_import_then_list(home, tmp_path):
    torch.save(resnet_state_dict(18), tmp_path / "resnet18-f37072fd.pth")
    result = _run(["weights", "import", tmp_path / "resnet18-f37072fd.pth", "--name", "imagenet", "--arch", "resnet18",
                   "--note", "torchvision release"])
    assert result.exit_code == 0, result.output
    assert "imported imagenet for resnet18 (torchvision" in result.stdout
    assert "head left out    fc.weight, fc.bias" in result.stdout
    listing = _run(["weights", "list"])
    assert listing.exit_code == 0
    header, row = listing.stdout.strip().splitlines()
    assert header.split()[:4] == ["NAME", "ARCH", "FORMAT", "PREPROCESSING"]
    assert row.split()[:4] == ["imagenet", "resnet18", "torchvision", "imagenet"]
    records = json.loads(_run(["weights", "list", "--json"]).stdout)
    assert records[0]["provenance"]["note"] == "torchvision release"
    assert len(records[0]["sha256"]) == 64 and len(records[0]["source_sha256"]) == 64


def test_import_errors_are_one_line_with_exit_2(home, tmp_path):
    torch.save(resnet_state_dict(18), tmp_path / "r18.pth")
    result = _run(["weights", "import", tmp_path / "r18.pth", "--name", "imagenet", "--arch", "resnet50"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medxfer: error:") and "use --arch resnet18" in lines[0]
    result = _run(["weights", "import", tmp_path / "r18.pth", "--name", "scratch", "--arch", "resnet18"])
    assert result.exit_code == 2 and "invalid weights name 'scratch'" in result.stderr
    result = _run(["weights", "import", tmp_path / "missing.pth", "--name", "x", "--arch", "resnet18"])
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_empty_registry_and_archs(home):
    assert "no weights imported yet" in _run(["weights", "list"]).stdout
    archs = _run(["weights", "archs"]).stdout
    for arch in ("resnet50 ", "resnet50_keras", "densenet121", "efficientnet-b4", "mobilenet_v1_025"):
        assert arch in archs
    help_text = _run(["weights", "import", "--help"]).stdout
    assert "--name radimagenet --arch resnet50_keras" in help_text and "--preprocessing" in help_text


def test_the_import_command_offers_every_format_and_preset():
    """The CLI's choices are written out (``--help`` imports no model code): they must stay the library's."""
    from medxfer.cli import weights_import
    from medxfer.models import FORMATS, PRESETS

    choices = {p.name: list(p.type.choices) for p in weights_import.params if hasattr(p.type, "choices")}
    assert choices["fmt"] == ["auto", *FORMATS]
    assert choices["preprocessing"] == list(PRESETS)
