"""The ``medxfer`` command line: help texts, exit codes, one-line errors, and no identifiers on the terminal."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from medxfer import synthetic
from medxfer.cli import main
from medxfer.ingest.manifest import read_manifest


def _run(args: list[str]):
    """Invoke the CLI in-process; stdout and stderr are kept apart (click >= 8.2)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code != 0, result.output
    # a clean exit with a reason, not a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("medxfer: error:"), lines[0]
    for frag in fragments:
        assert frag.lower() in lines[0].lower(), lines[0]
    assert result.stdout == ""
    return lines[0]


def _small_ct(folder: Path, i: int = 0, n: int = 3):
    return synthetic.ct_series(folder, synthetic.new_patient(i), n_slices=n, rows=16, cols=16)


def _labelled_cohort(tmp_path: Path, n_patients: int = 4) -> tuple[Path, Path, list[str]]:
    """One small DX radiograph per patient and a ``PatientID,label`` CSV (labels alternate 0/1)."""
    src = tmp_path / "src"
    ids = []
    rows = [["PatientID", "label"]]
    for i in range(n_patients):
        p = synthetic.new_patient(i)
        synthetic.radiograph(src / f"p{i}" / "dx.dcm", p, rows=24, cols=20)
        ids += p.identifiers()
        rows.append([p.patient_id, str(i % 2)])
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return src, labels, ids


@pytest.fixture
def secret(tmp_path) -> Path:
    p = tmp_path / "secret"
    p.write_text("0123456789abcdef0123456789abcdef")
    return p


# ---------------------------------------------------------------- help
def test_help_lists_commands_and_examples():
    top = _run(["--help"])
    assert top.exit_code == 0, top.output
    assert "ingest" in top.output and "split" in top.output
    for cmd in ("ingest", "split"):
        r = _run([cmd, "--help"])
        assert r.exit_code == 0, r.output
        assert "Example" in r.output, r.output
        assert f"medxfer {cmd}" in r.output  # the example is a real command line


def test_version():
    from medxfer import __version__

    r = _run(["--version"])
    assert r.exit_code == 0 and __version__ in r.output


# ---------------------------------------------------------------- ingest with bad files
def test_ingest_valid_series_and_broken_files_exit_zero(tmp_path, secret):
    src = tmp_path / "src"
    ct = _small_ct(src / "ct", n=4)
    broken = synthetic.broken_files(src / "junk")
    out = tmp_path / "out"
    r = _run(["ingest", src, "--out", out, "--workers", "2", "--secret-file", secret, "--no-progress"])
    assert r.exit_code == 0, (r.output, r.exception)

    report = json.loads((out / "ingest_report.json").read_text())
    on_disk = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    listed = [f["path"] for f in report["files"]]
    assert sorted(listed) == on_disk and len(listed) == len(set(listed))  # every file exactly once
    by_path = {f["path"]: f for f in report["files"]}
    for p in ct.paths:
        assert by_path[p.relative_to(src).as_posix()]["status"] == "used"
    for p in broken.values():
        entry = by_path[p.relative_to(src).as_posix()]
        assert entry["status"] == "skipped" and entry["reason"], entry
    counts = report["counts"]
    assert counts["skipped"] == len(broken) and counts["used"] == len(ct.paths) and counts["items"] == 1

    # the summary line goes to stderr and says how many files were skipped
    summary = [line for line in r.stderr.splitlines() if line.startswith("ingest:")]
    assert len(summary) == 1, r.stderr
    assert f"{len(broken)} skipped" in summary[0]
    assert r.stdout == ""

    rows, _ = read_manifest(out / "manifest.csv")
    assert len(rows) == 1 and rows[0]["kind"] == "volume" and rows[0]["shape"] == "16x16x4"


# ---------------------------------------------------------------- unusable arguments
def test_missing_source_folder(tmp_path, secret):
    r = _run(["ingest", tmp_path / "nope", "--out", tmp_path / "out", "--secret-file", secret])
    _assert_one_line_error(r, "not found")
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_labels_without_key(tmp_path, secret):
    src, labels, _ = _labelled_cohort(tmp_path, 1)
    r = _run(["ingest", src, "--out", tmp_path / "out", "--labels", labels, "--secret-file", secret])
    _assert_one_line_error(r, "--key")


def test_labels_without_the_key_column(tmp_path, secret):
    src, labels, _ = _labelled_cohort(tmp_path, 1)
    r = _run(["ingest", src, "--out", tmp_path / "out", "--labels", labels, "--key", "AccessionNumber",
              "--secret-file", secret, "--workers", "1"])
    line = _assert_one_line_error(r, "AccessionNumber")
    assert "2 columns" in line and "first row" in line  # counts only: a header-less file would quote data


def test_short_secret_file(tmp_path):
    src, _, _ = _labelled_cohort(tmp_path, 1)
    short = tmp_path / "short_secret"
    short.write_text("only15bytes....")
    r = _run(["ingest", src, "--out", tmp_path / "out", "--secret-file", short, "--workers", "1"])
    _assert_one_line_error(r, "secret", "16")
    assert not (tmp_path / "out" / "manifest.csv").exists()


@pytest.fixture
def ingested(tmp_path, secret) -> Path:
    """A labelled cohort of 4 patients ingested through the CLI."""
    src, labels, _ = _labelled_cohort(tmp_path, 4)
    out = tmp_path / "out"
    r = _run(["ingest", src, "--out", out, "--labels", labels, "--key", "PatientID", "--secret-file", secret,
              "--workers", "1"])
    assert r.exit_code == 0, (r.output, r.exception)
    return out


def test_split_more_folds_than_patients(ingested):
    before = (ingested / "manifest.csv").read_text()
    r = _run(["split", ingested, "--folds", "5"])
    _assert_one_line_error(r, "4 patients", "5 folds")
    assert (ingested / "manifest.csv").read_text() == before  # nothing written


def test_split_stratify_unknown_column(ingested):
    r = _run(["split", ingested, "--folds", "2", "--stratify", "diagnosis"])
    _assert_one_line_error(r, "diagnosis")
    assert "fold" not in read_manifest(ingested / "manifest.csv")[1]


def test_split_without_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _run(["split", tmp_path / "empty", "--folds", "2"])
    _assert_one_line_error(r, "manifest.csv")


# ---------------------------------------------------------------- split
def test_split_writes_fold_column(ingested):
    rows, columns = read_manifest(ingested / "manifest.csv")
    assert "label" in columns and sorted(r["label"] for r in rows) == ["0", "0", "1", "1"]
    r = _run(["split", ingested, "--folds", "2", "--stratify", "label", "--seed", "0"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert r.stderr.startswith("split: 4 patients, 4 items into 2 folds")
    rows, columns = read_manifest(ingested / "manifest.csv")
    assert columns[-1] == "fold"
    assert {r["fold"] for r in rows} == {"0", "1"}
    for k in ("0", "1"):  # stratified: each fold holds one item of each label
        assert sorted(r["label"] for r in rows if r["fold"] == k) == ["0", "1"]
    first = {r["item_id"]: r["fold"] for r in rows}
    # the same seed gives the same folds
    assert _run(["split", ingested, "--folds", "2", "--stratify", "label", "--seed", "0"]).exit_code == 0
    rows, columns = read_manifest(ingested / "manifest.csv")
    assert {r["item_id"]: r["fold"] for r in rows} == first and columns.count("fold") == 1


# ---------------------------------------------------------------- no identifiers on the terminal
def test_cli_never_prints_identifiers(tmp_path, secret, caplog):
    labels = tmp_path / "labels.csv"
    export = synthetic.write_pacs_export(tmp_path / "export", n_patients=2, ct_slices=3, labels_csv=labels)
    # a bad file whose name is harmless but whose header holds the identifiers: its error must not quote them
    junk = synthetic.broken_files(tmp_path / "export" / "junk")
    assert junk
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    r = _run(["-v", "ingest", export.root, "--out", out, "--labels", labels, "--key", "PatientID",
              "--secret-file", secret, "--workers", "1", "--progress"])
    assert r.exit_code == 0, (r.output, r.exception)
    s = _run(["-v", "split", out, "--folds", "2", "--stratify", "label"])
    assert s.exit_code == 0, (s.output, s.exception)
    printed = (r.stdout + r.stderr + s.stdout + s.stderr + caplog.text).lower()
    assert "ingest:" in printed
    leaked = [i for i in export.identifiers if i.lower() in printed]
    assert leaked == []
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["counts"]["labels"]["matched_rows"] == 2
    # every image item of the export (localizers are items of their own, never stacked into the CT)
    assert report["counts"]["items"] == export.n_items_expected + len(export.kinds["ct_localizer"])
