"""A crashed ingest resumes: what finished is kept in pieces, a re-run reuses it and ends as a clean run would."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest

from medxfer import synthetic
from medxfer.ingest import index, ingest, pipeline
from medxfer.ingest.cache import build_item
from medxfer.ingest.manifest import read_manifest, write_csv
from medxfer.ingest.scan.sniff import read_file_record

from ..conftest import find_identifiers

JOURNAL = Path(".medxfer") / index.JOURNAL_FILE
INDEX = Path(".medxfer") / index.INDEX_FILE


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    """One secret for the module (the session's $MEDXFER_HOME is set per test, after module fixtures run)."""
    path = tmp_path_factory.mktemp("resume_secret") / "secret"
    path.write_text("resume-test-secret-0123456789abcdef")
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """Two patients in folders named by PatientID: CT volumes, localizers, DX, PX, US cine, MG views, an SR."""
    root = tmp_path_factory.mktemp("resume") / "src"
    return synthetic.write_pacs_export(root, n_patients=2, ct_slices=5, with_dicomdir=False, layout="loose")


@pytest.fixture(scope="module")
def clean(export, secret, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    ingest(export.root, out, workers=1, secret_file=secret)
    return out


@pytest.fixture
def run(secret):
    """``ingest`` with the module's secret."""
    return lambda src, out, **kw: ingest(src, out, secret_file=secret, **kw)


def _outcome(out: Path):
    """Everything a user sees of an ingest, less the timings and how much was decoded or reused."""
    rows, columns = read_manifest(out / "manifest.csv")
    report = json.loads((out / "ingest_report.json").read_text(encoding="utf-8"))
    counts = {k: v for k, v in report["counts"].items() if k not in ("decoded", "reused")}
    images = {r["image"]: hashlib.sha256((out / r["image"]).read_bytes()).hexdigest() for r in rows}
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*"))
    return rows, columns, report["files"], report["warnings"], counts, images, on_disk


def _n_items(clean: Path) -> int:
    return len(read_manifest(clean / "manifest.csv")[0])


def test_interrupted_pixel_pass_resumes_with_the_items_that_finished(export, clean, tmp_path, monkeypatch, run):
    out = tmp_path / "out"
    finished = []

    def crash_after_three(plan, *args):
        if len(finished) == 3:
            raise RuntimeError("simulated crash")
        finished.append(plan.item_id)
        return build_item(plan, *args)

    with monkeypatch.context() as m:
        m.setattr(pipeline, "build_item", crash_after_three)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(export.root, out, workers=1)
    assert (out / JOURNAL).is_file() and not (out / "manifest.csv").exists()
    rebuilt = []
    with monkeypatch.context() as m:
        m.setattr(pipeline, "build_item", lambda plan, *a: rebuilt.append(plan.item_id) or build_item(plan, *a))
        again = run(export.root, out, workers=1)
    assert not set(rebuilt) & set(finished) and len(rebuilt) == _n_items(clean) - 3
    assert again.counts["decoded"] == len(rebuilt)
    assert _outcome(out) == _outcome(clean) and not (out / JOURNAL).exists()


def test_interrupted_header_pass_resumes_with_the_chunks_that_finished(export, clean, tmp_path, monkeypatch, run):
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline, "JOURNAL_HEADER_EVERY", 4)
    read = []

    def crash_at_the_tenth(src, rel, pseudo):
        if len(read) == 9:
            raise RuntimeError("simulated crash")
        read.append(rel)
        return read_file_record(src, rel, pseudo)

    with monkeypatch.context() as m:
        m.setattr(pipeline, "read_file_record", crash_at_the_tenth)
        with pytest.raises(RuntimeError):
            run(export.root, out, workers=1)
    reread = []
    with monkeypatch.context() as m:
        m.setattr(pipeline, "read_file_record", lambda src, rel, p: reread.append(rel) or read_file_record(src, rel, p))
        run(export.root, out, workers=1)
    assert not set(reread) & set(read[:8])  # two chunks of four were saved before the crash
    assert len(reread) == len(export.files) - 8
    assert _outcome(out) == _outcome(clean)


def _killed_ingest(src: Path, out: Path, secret: Path, where: str, n: int) -> None:
    """Run in a forked child: ingest, and SIGKILL this process at ``where`` (no cleanup of any kind runs)."""
    count = [0]

    def die_after_n() -> None:
        count[0] += 1
        if count[0] > n:
            os.kill(os.getpid(), signal.SIGKILL)

    if where == "header pass":
        pipeline.JOURNAL_HEADER_EVERY = 4
        real_read = pipeline.read_file_record
        pipeline.read_file_record = lambda *a: die_after_n() or real_read(*a)
    elif where == "pixel pass":
        real_build = pipeline.build_item
        pipeline.build_item = lambda *a: die_after_n() or real_build(*a)
    else:  # while moving a finished image, the index or the report into place
        real_replace = os.replace
        target = {"image write": "/images/", "index write": "index.json", "report write": "ingest_report.json"}[where]

        def replace(a, b):
            if target in os.fspath(b):
                die_after_n()
            return real_replace(a, b)

        os.replace = replace
    ingest(src, out, workers=1, progress=False, secret_file=secret)


@pytest.mark.parametrize("where,n", [("header pass", 10), ("pixel pass", 2), ("image write", 3),
                                     ("index write", 1), ("report write", 0)])
def test_kill_9_at_any_point_then_a_rerun_equals_a_clean_run(export, clean, tmp_path, where, n, run, secret):
    out = tmp_path / "out"
    child = mp.get_context("fork").Process(target=_killed_ingest, args=(export.root, out, secret, where, n))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    state = out / ".medxfer"
    assert find_identifiers(state, export.identifiers) == []  # the journal too: paths only as keyed digests
    fingerprint = json.loads((clean / INDEX).read_text())["secret_fingerprint"]
    assert json.loads((out / INDEX).read_text())["secret_fingerprint"] == fingerprint  # from the start of a run
    again = run(export.root, out, workers=1)
    assert _outcome(out) == _outcome(clean)
    if where in ("index write", "report write"):
        assert again.counts["decoded"] == 0  # every item had finished
    elif where == "pixel pass":
        assert again.counts["decoded"] == _n_items(clean) - 2
    assert not (out / JOURNAL).exists() and find_identifiers(out, export.identifiers) == []


def test_an_unchanged_rerun_writes_no_journal_and_leaves_the_index(export, tmp_path, run):
    out = tmp_path / "out"
    run(export.root, out, workers=1)
    before = (out / INDEX).stat().st_mtime_ns
    again = run(export.root, out, workers=1)
    assert again.counts["decoded"] == 0 and (out / INDEX).stat().st_mtime_ns == before
    assert not (out / JOURNAL).exists()


def test_an_output_of_index_version_1_is_rebuilt_in_the_new_layout(export, clean, tmp_path, run):
    out = tmp_path / "out"
    run(export.root, out, workers=1)
    # what an ingest of index version 1 left: images/<item_id>.nii, the manifest pointing there
    rows, columns = read_manifest(out / "manifest.csv")
    for r in rows:
        flat = f"images/{Path(r['image']).name}"
        os.replace(out / r["image"], out / flat)
        r["image"] = flat
    write_csv(out / "manifest.csv", rows, columns)
    index = json.loads((out / INDEX).read_text())
    index["version"] = 1
    for item in index["items"].values():
        if item["result"]["image"]:
            item["result"]["image"] = f"images/{Path(item['result']['image']).name}"
    (out / INDEX).write_text(json.dumps(index))
    again = run(export.root, out, workers=1)
    assert again.counts["decoded"] == len(rows)  # re-decoded, not crashed
    assert _outcome(out) == _outcome(clean)  # flat images pruned, manifest in the sub-folder form


def test_a_journal_of_another_secret_is_ignored(export, clean, tmp_path, run):
    out = tmp_path / "out"
    (out / JOURNAL).parent.mkdir(parents=True)
    (out / JOURNAL).write_text(json.dumps({"version": index.INDEX_VERSION, "secret_fingerprint": "0" * 12})
                               + "\n" + json.dumps({"items": {"x": {"key": "k", "result": {}}}}) + "\n{\"files\": {")
    run(export.root, out, workers=1)
    assert _outcome(out) == _outcome(clean) and "x" not in json.loads((out / INDEX).read_text())["items"]
