"""`medxfer demo --quick`: the whole chain on the embedded default, as a user runs it."""
from __future__ import annotations

import csv

from click.testing import CliRunner

from medxfer.cli import main
from medxfer.demo import DemoSettings
from medxfer.synthetic import export_identifiers
from tests.conftest import find_identifiers

BINARY = (".png",)  # figures: no text fields, compressed bytes can match 4 letters by chance


def test_demo_runs_the_chain_and_leaks_no_identifier(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", "demo"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "demo" / "report" / "report.html"
    assert f"report: {report}" in result.stdout and "medxfer ui" in result.stdout
    html = report.read_text()
    assert 'id="cells"' in html and "ceph-sex" in html and "data:image/png;base64," in html
    rows = list(csv.DictReader(open(tmp_path / "demo" / "report" / "results.csv")))
    assert {(r["weights"], r["freeze"]) for r in rows} == {("scratch", "none"), ("scratch", "all"),
                                                           ("ceph-sex", "none"), ("ceph-sex", "all")}
    # the export and the labels CSV hold the fake identifiers; nothing made from them may. The
    # identifiers are the ones the demo's headers carry (read back from its export, not regenerated)
    export = tmp_path / "demo" / "export"
    identifiers = export_identifiers(export)
    # the pretraining source is a second export of other patients (no study patient pretrains the source)
    source_identifiers = export_identifiers(tmp_path / "demo" / "source-export")
    with open(tmp_path / "demo" / "source-labels.csv") as f:
        assert not {row["PatientID"] for row in csv.DictReader(f)} & set(identifiers)
    with open(tmp_path / "demo" / "labels.csv") as f:
        patient_ids = {row["PatientID"] for row in csv.DictReader(f)}
    assert len(patient_ids) == DemoSettings.quick().patients and patient_ids <= set(identifiers)
    assert "TESTPAT" in export.joinpath("DICOM", "PAT0001", "STU0001", "SER0001",
                                        "IM000001").read_bytes().decode("latin-1")
    # the search finds every one of them where they are, so finding none below means none leaked
    assert {s for _, s in find_identifiers(export, identifiers)} == set(identifiers)
    identifiers = sorted(set(identifiers) | set(source_identifiers))
    for folder in ("cohort", "source-cohort", "runs", "report"):
        assert find_identifiers(tmp_path / "demo" / folder, identifiers, BINARY) == []
    for store in ("mlruns", "artifacts"):  # the artifacts of an env-given SQLite store sit beside the database
        assert find_identifiers(tmp_path / store, identifiers, BINARY) == []
    assert (tmp_path / "mlflow.db").read_bytes().find(b"TESTPAT") == -1

    # a second demo reuses everything: no new run, nothing decoded again
    again = CliRunner().invoke(main, ["demo", "--quick", "--out", "demo"])
    assert again.exit_code == 0, again.output
    assert "[pretrain]" in result.stderr and "[pretrain]" not in again.stderr
    assert "done test_auc" not in again.stderr
