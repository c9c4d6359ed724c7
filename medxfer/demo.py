"""``medxfer demo``: the whole chain on an embedded default, on CPU in minutes.

1. Writes a small, realistic dental PACS export: per patient a panoramic radiograph (PX, RLE or
   JPEG 2000 lossless) and a lateral cephalogram (DX), with fake but realistic identifiers in
   the headers (names, MRNs, birth dates, accession numbers, institutions), and a labels CSV
   keyed by PatientID: ``supernumerary`` (an extra tooth on the panoramic) and ``sex`` (visible
   on the cephalogram), the two tasks of the dental-radiograph transfer study.
2. Ingests it (de-identified manifest + decoded cache) and splits it by patient into 5 folds.
3. Runs the study "demo-dental". Its ``pretrain`` stage ``ceph-sex`` self-pretrains each encoder
   on sex from the cephalograms of a second export of *other* patients (a pretraining stage must not
   see the study's test patients: the spec check refuses it). Its grid is supernumerary teeth on the
   panoramics: encoders ResNet18 and EfficientNet-B0 × weights scratch / ceph-sex × freeze none / all
   × folds 0–2.
4. Writes the report and prints where it is and the exact command that opens the runs.

Everything lives under ``--out`` (default ``medxfer-demo/``): the export, the cohort, its own
``MEDXFER_HOME`` (``home/``: pseudonymisation secret and, unless ``MLFLOW_TRACKING_URI`` is set,
the MLflow store ``home/mlruns/``), the report. Deleting the folder removes the demo, runs
included; the user's own store is not touched. Running it again reuses what is done: nothing is
decoded or trained twice.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from . import synthetic
from .ingest import ingest, split
from .study.report import build_report
from .study.runner import quiet_engines, run_study
from .study.spec import parse_spec
from .tracking import describe_store, resolve_tracking_uri

STUDY_NAME = "demo-dental"
SOURCE_NAME = "ceph-sex"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the embedded default (``quick`` is for tests: one encoder, tiny images)."""

    patients: int = 80
    folds_split: int = 5
    folds_run: tuple[int, ...] = (0, 1, 2)
    encoders: tuple[str, ...] = ("resnet18", "efficientnet-b0")
    image_size: int = 96
    epochs: int = 10
    pretrain_epochs: int = 8
    batch_size: int = 8

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(patients=16, folds_split=4, folds_run=(0, 1), encoders=("resnet18",), image_size=64, epochs=2,
                   pretrain_epochs=2)


@dataclass
class DemoResult:
    report: Path
    study: str
    parent_run_id: str | None
    seconds: float
    tracking_uri: str  # the absolute store the runs went to (the demo's own unless MLFLOW_TRACKING_URI is set)


def run_demo(out: str | os.PathLike = "medxfer-demo", settings: DemoSettings | None = None,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Build the export, ingest, split, pretrain the source, run the study, write the report."""
    settings = settings or DemoSettings()
    start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MEDXFER_HOME"] = str(out / "home")  # the demo's own pseudonymisation secret
    quiet_engines(True)

    # the study's export, and a second one of other patients: the pretraining source's cephalograms
    exports = {"cohort": ("export", "labels.csv", 2026, "supernumerary"),
               "source-cohort": ("source-export", "source-labels.csv", 2027, "sex")}
    if not all((out / labels).exists() for _, labels, _, _ in exports.values()):
        echo(f"1/4 writing two dental PACS exports of {settings.patients} patients each (PX + ceph, fake "
             "identifiers): the study's and its pretraining source's")
        for folder, labels, seed, _ in exports.values():
            synthetic.write_dental_export(out / folder, n_patients=settings.patients, labels_csv=out / labels,
                                          rng=np.random.default_rng(seed))
    else:
        echo("1/4 dental PACS exports already written")
    echo("2/4 ingesting and splitting by patient")
    for cohort, (folder, labels, _, stratify) in exports.items():
        result = ingest(out / folder, out / cohort, labels=out / labels, key="PatientID",
                        workers=min(2, os.cpu_count() or 1))
        echo(f"    {result.summary()}")
        split(out / cohort, settings.folds_split, stratify=stratify, seed=0)
    manifest = out / "cohort" / "manifest.csv"
    source_manifest = out / "source-cohort" / "manifest.csv"

    train = {"image_size": settings.image_size, "batch_size": settings.batch_size, "in_channels": 1}
    raw = {
        "name": STUDY_NAME, "bundle": "classification",
        "data": {"manifest": str(manifest), "label": "supernumerary", "folds": list(settings.folds_run),
                 "modalities": ["PX"]},
        # the self-pretrained source: each encoder learns sex on other patients' cephalograms first
        "pretrain": [{"name": SOURCE_NAME, "from": "scratch", "train": {"epochs": settings.pretrain_epochs},
                      "data": {"manifest": str(source_manifest), "label": "sex", "fold": 0, "modalities": ["DX"]}}],
        "grid": {"encoder": list(settings.encoders), "weights": ["scratch", SOURCE_NAME], "freeze": ["none", "all"],
                 "lr": [1e-3]},
        "seeds": [0], "train": {**train, "epochs": settings.epochs}}
    spec = parse_spec(raw, text=yaml.safe_dump(raw, sort_keys=False))
    runs = len(settings.encoders) * 4 * len(settings.folds_run)
    echo(f"3/4 study {STUDY_NAME}: pretrain {SOURCE_NAME} per encoder (cephalometric sex), then {runs} runs "
         "(supernumerary teeth on the panoramics)")
    store = resolve_tracking_uri()  # after MEDXFER_HOME is the demo's: its own store unless the env names one
    echo(f"    runs go to the MLflow store {describe_store(store)}")
    outcome = run_study(spec, echo=lambda line: echo(f"    {line}"), runs_dir=out / "runs")
    if outcome.failed:
        raise RuntimeError(f"{len(outcome.failed)} study runs failed: {outcome.failed[0][0]}: {outcome.failed[0][1]}")
    echo("4/4 writing the report")
    paths = build_report(STUDY_NAME, out_dir=out / "report")
    return DemoResult(report=paths["report.html"], study=STUDY_NAME, parent_run_id=outcome.parent_run_id,
                      seconds=time.perf_counter() - start, tracking_uri=store)
