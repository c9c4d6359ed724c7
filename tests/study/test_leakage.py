"""A pretraining stage that trains on the target's test patients is refused when the spec is read (before
anything runs), with the number of patients; a stage on other patients is not."""
from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from click.testing import CliRunner

from medxfer import synthetic
from medxfer.cli import main
from medxfer.engine import load_cohort
from medxfer.ingest import ingest, split
from medxfer.study.spec import SpecError, parse_spec
from medxfer.synthetic.patients import FakePatient

NAMES = ["山田^太郎", "Müller^Jörg", "佐藤^花子"]
UTF8, LATIN1, ISO2022 = "ISO_IR 192", "ISO_IR 100", ["", "ISO 2022 IR 87"]  # ISO 2022: JIS X 0208 escapes


@dataclass
class Cohorts:
    target: Path  # 6 patients, 3 folds: the study's cohort
    other: Path  # 6 other patients (another export), same secret
    again: Path  # 3 of the target's patients exported and ingested again, split on their own
    rekeyed: Path  # the target's export ingested under another secret
    named: Path  # 3 patients with UTF-8 / ISO 2022 names and no PatientID
    renamed: Path  # the same 3 persons, each name written in another character set
    lesions: Path  # 6 PNGs: each file its own patient (a digest of its path)
    lesions_other: Path  # 6 other PNGs with the same file names
    lesions_again: Path  # the lesions folder ingested again


def _export(src: Path, out: Path, n: int, seed: int) -> None:
    synthetic.write_mammography_export(src, n_patients=n, rows=32, cols=32, rng=np.random.default_rng(seed),
                                       labels_csv=src.with_suffix(".csv"))
    ingest(src, out, labels=src.with_suffix(".csv"), key="file", workers=1)
    split(out, 3, stratify="malignant", seed=0)


def _named_export(src: Path, out: Path, people: list[tuple[str, str, str | list[str]]], seed: int) -> None:
    """One patient per (name, birth date, character set), no PatientID (identity: name and birth date), four
    MG images each; labels ``file,density``."""
    rng = np.random.default_rng(seed)
    labels = []
    for i, (name, birth, charset) in enumerate(people):
        patient = FakePatient(name="X^Y", patient_id="", birth_date=birth)  # the name is written below
        study_uid = None
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                rel = f"P{i}/{lat}{view}.dcm"
                info = synthetic.mammogram(src / rel, patient, view=view, laterality=lat, rows=32, cols=32,
                                           study_uid=study_uid, rng=rng)
                study_uid = info.study_uid
                ds = pydicom.dcmread(info.path)
                ds.SpecificCharacterSet, ds.PatientName = charset, name
                ds.save_as(info.path, enforce_file_format=True)
                labels.append((rel, ("dense", "fatty")[i % 2]))
    with open(src / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "density"), *labels])
    ingest(src, out, labels=src / "labels.csv", key="file", workers=1)
    split(out, 3, seed=0)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> Cohorts:
    root = tmp_path_factory.mktemp("leakage")
    src, out = root / "src", root / "cohorts"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXFER_HOME", str(root / "home"))
        _export(src / "target", out / "target", 6, seed=2)
        _export(src / "other", out / "other", 6, seed=7)
        for patient in ("PAT0001", "PAT0002", "PAT0003"):  # the same files, a new export folder and cohort
            shutil.copytree(src / "target" / "DICOM" / patient, src / "again" / "DICOM" / patient)
        ingest(src / "again", out / "again", labels=src / "target.csv", key="file", workers=1)
        split(out / "again", 3, seed=0)
        # name, birth date, its character set in one export, then in the other
        people = [("山田^太郎", "19600101", UTF8, ISO2022), ("Müller^Jörg", "19610202", UTF8, LATIN1),
                  ("佐藤^花子", "19620303", ISO2022, UTF8)]
        _named_export(src / "named", out / "named", [(n, b, first) for n, b, first, _ in people], 3)
        _named_export(src / "renamed", out / "renamed", [(n, b, second) for n, b, _, second in people], 4)
        for name, seed in (("lesions", 1), ("lesions-other", 2)):  # image folders: the same file names
            labels = synthetic.write_lesion_pngs(src / name, n_images=6, size=(32, 32), rng=np.random.default_rng(seed))
            for out_name in (name, f"{name}-again"):
                ingest(src / name / "images", out / out_name, labels=labels, key="image", modality="US", workers=1)
                split(out / out_name, 3, seed=0)
        mp.setenv("MEDXFER_HOME", str(root / "another-home"))
        ingest(src / "target", out / "rekeyed", labels=src / "target.csv", key="file", workers=1)
        split(out / "rekeyed", 3, stratify="malignant", seed=0)
    names = ("target", "other", "again", "rekeyed", "named", "renamed", "lesions", "lesions-other", "lesions-again")
    return Cohorts(**{name.replace("-", "_"): out / name / "manifest.csv" for name in names})


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def _patients(manifest: Path, folds: set[int] | None = None, exclude: int | None = None) -> set[str]:
    """The patients of a manifest's folds (``folds``, or all but ``exclude``): the test's own reading."""
    return {r["patient"] for r in _rows(manifest)
            if (folds is None or int(r["fold"]) in folds) and int(r["fold"]) != exclude}


def _spec(target: Path, stages: list[dict], folds: list[int] | None = None, weights: list[str] | None = None,
          label: str = "malignant") -> dict:
    data = {"manifest": str(target), "label": label, **({"folds": folds} if folds is not None else {})}
    return {"name": "leak", "data": data, "pretrain": stages, "train": {"epochs": 1},
            "grid": {"encoder": ["resnet18"], "weights": weights or ["scratch", *(s["name"] for s in stages)]}}


def _stage(name: str, manifest: Path, fold: int = 0, label: str = "density", modalities: list[str] | None = None,
           **more) -> dict:
    data = {"manifest": str(manifest), "label": label, "fold": fold, "modalities": modalities or ["MG"]}
    return {"name": name, "data": data, **more}


def test_a_stage_on_the_target_manifest_is_refused_with_the_patient_count(cohorts):
    # every fold is a test fold: the stage trains on every patient outside its own test fold 0
    leaked = _patients(cohorts.target, exclude=0)
    with pytest.raises(SpecError) as refused:
        parse_spec(_spec(cohorts.target, [_stage("density", cohorts.target)]))
    message = str(refused.value)
    assert message.startswith(f"pretrain density: trains on {len(leaked)} patients that are in the target's test "
                              f"folds [0, 1, 2] (data.manifest {cohorts.target}; the stage reads the same manifest")
    assert "a pretraining stage must not see test patients: pretrain on a separate cohort" in message
    assert "data.folds: [0]" in message  # its held-out fold is the one clean test fold left


def test_the_dry_run_refuses_before_anything_runs(cohorts, tmp_path, monkeypatch):
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    spec = tmp_path / "leak.yaml"
    spec.write_text(yaml.safe_dump(_spec(cohorts.target, [_stage("density", cohorts.target)])))
    out = CliRunner().invoke(main, ["study", "run", str(spec), "--dry-run"])
    assert out.exit_code != 0 and "pretrain density: trains on" in out.output
    assert "todo" not in out.output and not store.exists()


def test_one_test_fold_names_the_fold_to_hold_out_and_that_fold_is_clean(cohorts):
    leaked = _patients(cohorts.target, folds={1})  # test fold 1 is one of the stage's training folds
    with pytest.raises(SpecError, match=rf"trains on {len(leaked)} patients .* test folds \[1\] .*"
                                        r"hold out the target's test fold \(pretrain density: data\.fold: 1\)$"):
        parse_spec(_spec(cohorts.target, [_stage("density", cohorts.target)], folds=[1]))
    spec = parse_spec(_spec(cohorts.target, [_stage("density", cohorts.target, fold=1)], folds=[1]))
    assert spec.stages["density"].fold == 1


def test_a_stage_on_other_patients_is_accepted(cohorts):
    assert not _patients(cohorts.other) & _patients(cohorts.target)
    spec = parse_spec(_spec(cohorts.target, [_stage("density", cohorts.other)]))
    assert spec.stages["density"].manifest == cohorts.other


def test_another_manifest_with_the_same_patients_is_refused(cohorts):
    leaked = _patients(cohorts.again, exclude=0)  # its own split: the stage holds out its own fold 0
    assert leaked <= _patients(cohorts.target) and len(leaked) == 2
    with pytest.raises(SpecError, match=rf"^pretrain density: trains on 2 patients that are in the target's test "
                                        rf"folds \[0, 1, 2\] \(data\.manifest .*; the stage reads {cohorts.again},"):
        parse_spec(_spec(cohorts.target, [_stage("density", cohorts.again)]))


def test_image_folders_share_a_patient_only_when_they_share_the_image(cohorts):
    # file names alike give alike pseudonyms: only the same pixels are the same patient
    assert _patients(cohorts.lesions) == _patients(cohorts.lesions_other) == _patients(cohorts.lesions_again)
    spec = _spec(cohorts.lesions, [_stage("s", cohorts.lesions_other, label="group", modalities=["US"])], label="group")
    parse_spec(spec)
    leaked = _patients(cohorts.lesions_again, exclude=0)
    spec["pretrain"] = [_stage("s", cohorts.lesions_again, label="group", modalities=["US"])]
    with pytest.raises(SpecError, match=rf"^pretrain s: trains on {len(leaked)} patients"):
        parse_spec(spec)


def test_a_chain_is_checked_from_its_start(cohorts):
    stages = [_stage("a", cohorts.target), _stage("b", cohorts.other, **{"from": "a"})]
    with pytest.raises(SpecError, match=r"^pretrain a \(pretrain b starts from it\): trains on \d+ patients"):
        parse_spec(_spec(cohorts.target, stages, weights=["scratch", "b"]))
    parse_spec(_spec(cohorts.target, stages, weights=["scratch"]))  # no cell uses the chain: it never runs


def test_names_in_utf8_and_iso2022_match_and_never_show(cohorts):
    # the same persons (name and birth date, no PatientID), each written in the other character set
    raw = (cohorts.named.parents[2] / "src" / "named" / "P2" / "LCC.dcm").read_bytes()
    assert b"\x1b$B" in raw and "佐藤".encode() not in raw  # ISO 2022 IR 87, not UTF-8
    assert _patients(cohorts.named) == _patients(cohorts.renamed)
    leaked = _patients(cohorts.renamed, exclude=0)
    with pytest.raises(SpecError, match=rf"trains on {len(leaked)} patients") as refused:
        parse_spec(_spec(cohorts.named, [_stage("density", cohorts.renamed)], label="density"))
    message = str(refused.value)
    parts = {p for name in NAMES for p in (name, *name.split("^"))}
    assert not [p for p in parts if p.lower() in message.lower()]
    assert not [p for p in _patients(cohorts.named) | _patients(cohorts.renamed) if p in message]


def test_another_secret_cannot_be_compared_and_says_so(cohorts, caplog):
    assert not _patients(cohorts.rekeyed) & _patients(cohorts.target)  # the same people, other pseudonyms
    with caplog.at_level(logging.WARNING, logger="medxfer.study.spec"):
        parse_spec(_spec(cohorts.target, [_stage("density", cohorts.rekeyed)]))
    assert "pretrain density: its cohort was ingested under another pseudonymisation secret" in caplog.text


def _manifest(path: Path, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "patient", "modality", "image", "fold", "y", "z"])
        w.writerows(rows)
    return path


def test_only_the_items_a_stage_reads_count_as_the_engine_selects_them(tmp_path):
    """Rows without the stage's label, of another modality or of a class it leaves out are never trained on:
    the count is the engine's own selection (load_cohort's train and validation items) against its test items."""
    left_out = {3: ("DX", ""), 6: ("CR", "keep"), 9: ("DX", "drop")}  # test patients (fold 0) the stage never reads
    rows = []
    for p in range(12):
        rows.append((f"px{p}", f"pat-{p}", "PX", f"i/px{p}.png", p % 3, "ab"[p % 2], ""))
        modality, z = left_out.get(p, ("DX", "keep" if p % 2 else "keep2"))
        rows.append((f"dx{p}", f"pat-{p}", modality, f"i/dx{p}.png", p % 3, "", z))
    manifest = _manifest(tmp_path / "m" / "manifest.csv", rows)
    classes = ["keep", "keep2"]
    patient = {r[0]: r[1] for r in rows}
    stage = load_cohort(manifest, "z", fold=2, classes=classes, modalities=["DX"])  # trains on folds 0 and 1
    trained = {patient[i["item_id"]] for i in stage.train + stage.val}
    tested = {patient[i["item_id"]] for i in load_cohort(manifest, "y", fold=0, modalities=["PX"]).test}
    assert len(trained & tested) == 1 and len(tested) == 4
    spec = _spec(manifest, [{"name": "s", "data": {"manifest": str(manifest), "label": "z", "fold": 2,
                                                   "modalities": ["DX"], "classes": classes}}], folds=[0], label="y")
    spec["data"]["modalities"] = ["PX"]
    with pytest.raises(SpecError, match=r"^pretrain s: trains on 1 patient that is in the target's test folds"):
        parse_spec(spec)


def test_a_manifest_without_patients_compares_its_items(tmp_path):
    rows = [(f"i{i}", "", "OT", f"i/{i}.png", i % 4, i % 2, i % 2) for i in range(12)]
    manifest = _manifest(tmp_path / "m" / "manifest.csv", rows)
    stage = {"name": "s", "data": {"manifest": str(manifest), "label": "z"}}  # test fold 0: trains on folds 1-3
    with pytest.raises(SpecError, match=r"trains on 3 patients that are in the target's test folds \[1\]"):
        parse_spec(_spec(manifest, [stage], folds=[1], label="y"))


def test_the_same_image_under_another_pseudonym_is_found_by_its_item_id(tmp_path):
    # e.g. one ingest named the patients from a labels column (--patient-column), the other from the headers
    target = _manifest(tmp_path / "a" / "manifest.csv",
                       [(f"i{i}", f"pat-a{i // 2}", "OT", f"i/{i}.png", (i // 2) % 3, i % 2, "") for i in range(12)])
    items = [*range(4), *range(20, 24)]  # items i0-i3 again, and four others
    stage = _manifest(tmp_path / "b" / "manifest.csv",
                      [(f"i{i}", f"pat-b{i}", "OT", f"i/{i}.png", i % 3, "", i % 2) for i in items])
    # the stage holds out its fold 0 (i0, i3, i21): it trains on i1 and i2, the target's patients a0 and a1
    with pytest.raises(SpecError, match=r"trains on 2 patients that are in the target's test folds \[0, 1, 2\]"):
        parse_spec(_spec(target, [{"name": "s", "data": {"manifest": str(stage), "label": "z"}}], label="y"))
