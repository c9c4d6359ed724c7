"""Atomic writes: the target holds the old content or the complete new one, never a half-written file."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import threading

import pytest

from medxfer.core import atomic_write, atomic_write_json, atomic_writer
from medxfer.core.files import disk_full_error, disk_full_message


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_atomic_write_text_and_bytes_round_trip(tmp_path):
    """Text (UTF-8, non-ASCII included) and bytes come back exactly; missing parent folders are created."""
    text = tmp_path / "deep" / "er" / "report.md"
    assert atomic_write(text, "Dice ≥ 0.9 – 10 µm\nline 2\n") == text
    assert text.read_bytes() == "Dice ≥ 0.9 – 10 µm\nline 2\n".encode("utf-8")
    blob = tmp_path / "weights.bin"
    data = bytes(range(256)) * 10
    atomic_write(str(blob), data)
    assert blob.read_bytes() == data
    atomic_write(blob, b"short")  # replacing with shorter content leaves no tail of the old one
    assert blob.read_bytes() == b"short"
    assert _leftovers(tmp_path, {"deep", "weights.bin"}) == []


def test_atomic_write_json_round_trips(tmp_path):
    """A JSON document written atomically reads back equal."""
    doc = {"metrics": {"test_auc": 0.75}, "classes": ["a", "b"], "note": "façade"}
    path = atomic_write_json(tmp_path / "metrics.json", doc)
    assert json.loads(path.read_text(encoding="utf-8")) == doc


def test_an_error_while_writing_keeps_the_old_file_and_no_temporary(tmp_path):
    """An exception inside the writer (a crash mid-write) leaves the old file intact and no temporary file."""
    target = tmp_path / "manifest.csv"
    target.write_text("old,complete\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_writer(target, "w", newline="") as f:
            f.write("new,half")
            f.flush()
            assert target.read_text() == "old,complete\n"  # the target is untouched while writing
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old,complete\n"
    assert _leftovers(tmp_path, {"manifest.csv"}) == []


def test_an_error_on_a_new_file_creates_nothing(tmp_path):
    """A failed first write leaves no target and no temporary (a reader never sees a partial file)."""
    with pytest.raises(ValueError):
        with atomic_writer(tmp_path / "new.bin", "wb") as f:
            f.write(b"\x00" * 100)
            raise ValueError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_removes_the_temporary(tmp_path):
    """When the final replace fails (the target is a folder) the error surfaces and no temporary is left."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "inside.txt").write_text("keep")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "out", "not a folder")
    assert (tmp_path / "out" / "inside.txt").read_text() == "keep"
    assert _leftovers(tmp_path, {"out"}) == []


def test_the_new_content_appears_only_on_a_clean_exit(tmp_path):
    """Inside the writer the target still holds the old content; after it, the complete new content."""
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with atomic_writer(target, "wb") as f:
        f.write(b"new content")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new content"


@pytest.mark.parametrize("bits", [0o600, 0o644, 0o640])
def test_mode_bits_set_the_permissions(tmp_path, bits):
    """``mode_bits`` is the written file's permissions, also when it replaces a file with other permissions."""
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o666)
    atomic_write(target, "s3cret", mode_bits=bits, fsync=True)
    assert stat.S_IMODE(target.stat().st_mode) == bits
    assert target.read_text() == "s3cret"
    with atomic_writer(tmp_path / "b.bin", "wb", mode_bits=bits) as f:
        f.write(b"x")
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == bits


def test_only_write_modes_are_accepted(tmp_path):
    """Append or read modes cannot be atomic: refused before anything is written."""
    target = tmp_path / "log.txt"
    target.write_text("old")
    for mode in ("a", "r", "w+"):
        with pytest.raises(ValueError, match="mode"):
            with atomic_writer(target, mode) as f:
                f.write("x")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, {"log.txt"}) == []


def test_concurrent_writers_leave_one_complete_version(tmp_path):
    """Several writers on one path (shards sharing a folder): the result is one writer's whole content."""
    target = tmp_path / "shared.txt"
    contents = [f"writer {i}\n" * 2000 for i in range(6)]
    barrier = threading.Barrier(len(contents))
    errors = []

    def write(text):
        try:
            barrier.wait()
            atomic_write(target, text)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in contents
    assert _leftovers(tmp_path, {"shared.txt"}) == []


# ----------------------------------------------------------------------------- a full disk

def test_a_full_disk_names_the_target_and_keeps_the_old_file(tmp_path):
    """A ``write`` that hits ENOSPC names no file; the writer's error names the target, the old content
    stays and no temporary is left (nothing half-written looks complete)."""
    target = tmp_path / "ingest_report.json"
    target.write_text('{"complete": true}')
    with pytest.raises(OSError) as info:
        with atomic_writer(target, "w") as f:
            f.write('{"half": ')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what f.write raises on a full disk
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert isinstance(info.value.__cause__, OSError)
    assert target.read_text() == '{"complete": true}'
    assert _leftovers(tmp_path, {"ingest_report.json"}) == []


def test_other_write_errors_pass_unchanged(tmp_path):
    original = OSError(errno.EIO, "Input/output error")
    with pytest.raises(OSError) as info:
        with atomic_writer(tmp_path / "x.txt", "w"):
            raise original
    assert info.value is original


def test_disk_full_error_is_found_anywhere_in_the_chain():
    full = OSError(errno.EDQUOT, "Disk quota exceeded", "/data/out/model.pt")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("checkpoint failed") from exc
    except RuntimeError as wrapped:
        assert disk_full_error(wrapped) is full
    assert disk_full_error(OSError(errno.EACCES, "Permission denied", "/x")) is None
    assert disk_full_error(ValueError("no")) is None and disk_full_error(None) is None


def test_disk_full_message_names_the_file_the_space_left_and_what_to_do(tmp_path):
    path = tmp_path / "cohort" / "manifest.csv"
    line = disk_full_message(OSError(errno.ENOSPC, "No space left on device", str(path)))
    free = shutil.disk_usage(tmp_path).free
    assert line.startswith(f"no space left on device writing {path} (")
    assert re.search(r"\(\d+(\.\d)? [MG]B free on /", line) and "\n" not in line
    assert "re-run" in line and "finished work is kept" in line
    number = float(re.search(r"\((\d+(?:\.\d)?) ([MG])B", line).group(1))
    assert abs(number * (1e9 if " GB free" in line else 1e6) - free) < max(0.2 * free, 2e9)  # the space left there
    copy = OSError(errno.ENOSPC, "No space left on device", "/src/weights.pt", None, str(path))  # shutil: filename2
    assert f"writing {path} (" in disk_full_message(copy)
    quota = disk_full_message(OSError(errno.EDQUOT, "Disk quota exceeded", str(path)))
    assert quota.startswith(f"disk quota exceeded writing {path} (on /") and "quota" in quota
    unnamed = disk_full_message(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert unnamed.startswith("no space left on device (") and "writing" not in unnamed
