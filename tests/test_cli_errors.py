"""The command line's error reporting across commands: a full disk or quota is one line naming the file
and the free space left (not a traceback), and nothing half-written is left looking complete."""
from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import medxfer.core.files as files
from medxfer import synthetic
from medxfer.cli import main

from .models.torchvision_reference import resnet_state_dict


class _FullDisk:
    """A file whose device fills up after ``room`` bytes: the write that does not fit raises ``errno``
    without a file name, as a real ``write(2)`` does."""

    def __init__(self, f, room: int, code: int) -> None:
        self._f, self._room, self._code = f, room, code

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])  # what fitted: the temporary file is half-written
            self._room = 0
            raise OSError(self._code, os.strerror(self._code))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write of medxfer (manifests, reports, registry, checkpoints …) hits a full disk."""
    def install(code: int = errno.ENOSPC, room: int = 64):
        monkeypatch.setattr(files, "open", lambda path, mode, **kw: _FullDisk(builtins.open(path, mode, **kw),
                                                                               room, code), raising=False)
    return install


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result) -> str:
    assert result.exit_code == 2, (result.exception, result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an OSError traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medxfer: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_out_of_disk_during_ingest_is_one_line_and_nothing_looks_complete(tmp_path, full_disk):
    src, out = tmp_path / "src", tmp_path / "cohort"
    for i in range(3):
        synthetic.radiograph(src / f"p{i}" / "dx.dcm", synthetic.new_patient(i), rows=24, cols=20)
    full_disk(errno.ENOSPC)
    line = _one_line(_run(["ingest", src, "--out", out, "--workers", "1", "--no-progress"]))
    assert "no space left on device writing " + str(out) in line
    assert " free on /" in line and "re-run" in line and "finished work is kept" in line
    assert not (out / "manifest.csv").exists() and not (out / "ingest_report.json").exists()
    assert _temporaries(out) == []


def test_out_of_disk_rewriting_the_manifest_keeps_the_old_one(tmp_path, dental_cohort, full_disk):
    (tmp_path / "cohort").mkdir()
    manifest = tmp_path / "cohort" / "manifest.csv"
    manifest.write_bytes(dental_cohort.manifest.read_bytes())
    before = manifest.read_bytes()
    full_disk(errno.ENOSPC)
    line = _one_line(_run(["split", tmp_path / "cohort", "--folds", "3"]))
    assert f"no space left on device writing {manifest} (" in line
    assert " MB free on " in line or " GB free on " in line
    assert manifest.read_bytes() == before
    assert _temporaries(tmp_path / "cohort") == []


def test_quota_exceeded_importing_weights_is_one_line(tmp_path, full_disk, monkeypatch):
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    torch.save(resnet_state_dict(18), tmp_path / "r18.pth")
    full_disk(errno.EDQUOT)
    line = _one_line(_run(["weights", "import", tmp_path / "r18.pth", "--name", "imagenet", "--arch", "resnet18"]))
    assert "disk quota exceeded writing " + str(tmp_path / "home") in line and "finished work is kept" in line
    assert not list((tmp_path / "home").rglob("*.json"))  # no registry entry that points at a missing file


def test_out_of_disk_inside_a_long_job_is_named_as_such(tmp_path, monkeypatch):
    """Training wraps errors in its own; a full disk deep in the chain is still named, with the file."""
    import medxfer.engine

    def train_bundle(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "model.pt"))
        except OSError as exc:
            raise RuntimeError("checkpoint handler failed") from exc

    monkeypatch.setattr(medxfer.engine, "train_bundle", train_bundle)
    (tmp_path / "m.csv").write_text("item_id,image,y,fold\n")  # a manifest: the command checks it exists first
    line = _one_line(_run(["train", "classification", "--manifest", tmp_path / "m.csv", "--label", "y",
                           "--encoder", "resnet18"]))
    assert f"no space left on device writing {tmp_path / 'runs' / 'model.pt'} (" in line


def test_a_write_that_names_no_file_measures_the_output_folder(tmp_path, monkeypatch):
    """An ENOSPC without a file name (a library's own write) still says where space is missing: --out."""
    import medxfer.ingest

    def ingest(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(medxfer.ingest, "ingest", ingest)
    (tmp_path / "src").mkdir()
    line = _one_line(_run(["ingest", tmp_path / "src", "--out", tmp_path / "out"]))
    assert line.startswith("medxfer: error: no space left on device (") and " free on /" in line
    assert "writing" not in line
