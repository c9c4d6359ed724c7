"""Pretraining stages that would see the target's test patients, refused before anything runs.

A stage **trains on** every item of its manifest that its run reads for training or for checkpoint
selection: all folds but the stage's own test fold (``data.fold``), after the item filters of
:func:`medxfer.engine.data.load_cohort` (modalities, a value in the label column, a fold, the
``classes`` it keeps). The target **tests on** the items of the study's test folds (``data.folds``)
after the same filters. A stage that shares a patient with the target's test items has seen those
patients before the target's runs are scored on them, whatever file its manifest is: the study's
own manifest, a copy, or another export of the same patients.

Patients are compared by their ``patient`` pseudonym (a keyed digest of the PatientID, or of name
and birth date, a BIDS subject or a labels ``--patient-column``) and items by their ``item_id`` (a
keyed digest of the SOPInstanceUID or path). Both are keyed by the ingest secret, so the check finds
shared patients only between cohorts ingested under the same secret (the same ``MEDXFER_HOME``);
cohorts whose ingest reports record different secrets cannot be compared: that is a warning
(:attr:`LeakCheck.notes`), not a refusal. An image without identity is its own patient, a digest of
its relative path: two image folders with the same file names share those digests, so such a match
counts only when the cached images are the same bytes. The manifest has no column of pixel content:
the same pixels exported again under new UIDs and another PatientID are not found, and two sources
that reuse a PatientID (MRN 12345 at two hospitals) look like one patient.

Every stage a grid weights source uses is checked, and every stage its chain starts from
(``from``); a stage no cell uses never runs and is not checked. Messages give counts, folds,
stage names and manifest paths: never a pseudonym or an identifier.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.hashing import sha256_file
from ..engine.data import CohortError, class_values
from ..ingest.manifest import SLICE_LABELS_FILE, read_manifest, read_slice_labels
from ..ingest.secret import recorded_fingerprints

ITEM_PATIENT = "item:"  # the patient key of a row without a patient pseudonym: the item is its own patient


@dataclass(frozen=True)
class CohortFilter:
    """The items of a manifest a run reads: a value in ``label`` (or per-slice labels), a fold, one of
    ``modalities`` (all when None) and a value of ``classes`` (all when None)."""

    manifest: Path
    label: str
    modalities: Sequence[str] | None = None
    classes: list[Any] | dict[Any, Any] | None = None


@dataclass(frozen=True)
class TargetCohort:
    """What the study's runs test on: the items of ``test_folds`` that ``cohort`` selects."""

    cohort: CohortFilter
    test_folds: Sequence[int]

    @classmethod
    def of(cls, manifest: Path, label: str, test_folds: Sequence[int], task: str, data: Mapping[str, Any],
           train: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> TargetCohort:
        """The target of a study: its ``data`` section's manifest, label and test folds, with the item filters
        its runs apply (:func:`run_setting`; ``classes`` only for classification, segmentation ignores them)."""
        classes = run_setting("classes", data, train, grid) if task == "classification" else None
        return cls(CohortFilter(manifest, label, run_setting("modalities", data, train, grid), classes), test_folds)


@dataclass(frozen=True)
class StageCohort:
    """A pretraining stage: its name, where it starts (``from``), its cohort and its own test fold."""

    name: str
    start: str
    cohort: CohortFilter
    fold: int

    @classmethod
    def of(cls, name: str, start: str, manifest: Path, label: str, fold: int, data: Mapping[str, Any],
           train: Mapping[str, Any]) -> StageCohort:
        """A stage of a spec: its ``data`` (manifest, label, fold, item filters) and ``train``, whose item
        filters apply where ``data`` sets none (the run gets both)."""
        settings = {**train, **{k: v for k, v in data.items() if v is not None}}
        return cls(name, start, CohortFilter(manifest, label, settings.get("modalities"), settings.get("classes")),
                   int(fold))


@dataclass
class LeakCheck:
    """The outcome of :func:`pretraining_leaks`: the first refusal (None when none) and warnings."""

    problem: str | None = None
    notes: list[str] = field(default_factory=list)


def run_setting(key: str, data: Mapping[str, Any], train: Mapping[str, Any],
                grid: Mapping[str, Sequence[Any]]) -> Any:
    """The value of an item filter (``modalities``, ``classes``) the study's runs apply, for the check:
    ``data``'s (it overrides the rest), else the grid's when it lists one value, else ``train``'s; None
    (no filter: every item counts) when none is set or the grid lists several."""
    if data.get(key) is not None:
        return data[key]
    values = list(grid[key]) if key in grid else [train.get(key)]
    return values[0] if len(values) == 1 else None


def selected_rows(cohort: CohortFilter) -> list[dict[str, str]]:
    """The manifest rows a run on ``cohort`` can read (:func:`medxfer.engine.data.load_cohort`'s item
    filters). Filters that depend on a run's input settings (2D items only, volumes only, complete
    groups of views) are not applied: an item they would leave out still counts, so the check errs
    towards refusing."""
    rows, _ = read_manifest(cohort.manifest)
    per_slice = read_slice_labels(cohort.manifest.parent / SLICE_LABELS_FILE)
    slice_values = {item_id: {v[cohort.label] for v in by_slice.values() if v.get(cohort.label)}
                    for item_id, by_slice in per_slice.items()}
    keep = {str(m).upper() for m in cohort.modalities} if cohort.modalities else None
    try:
        kept_values = set(class_values(cohort.classes)) if cohort.classes else None
    except CohortError:
        kept_values = None  # the run reports its classes error itself; here every value counts
    selected = []
    for row in rows:
        values = {row[cohort.label]} if row.get(cohort.label) else slice_values.get(row.get("item_id", ""), set())
        if keep is not None and (row.get("modality") or "").upper() not in keep:
            continue
        if row.get("fold", "") == "" or not values:
            continue
        if kept_values is not None and not values & kept_values:
            continue
        selected.append(row)
    return selected


@dataclass(frozen=True)
class Item:
    """One selected manifest item, as the check compares it: its patient key, whether that key only names its
    file (ingest's rule for an image without identity: the file is its own patient and study, both digests
    of its path), and its cached image (compared by content where the key only names a file)."""

    patient: str
    own_file: bool
    image: Path


def _items(rows: Iterable[dict[str, str]], manifest: Path) -> dict[str, Item]:
    """``item_id -> Item`` (the patient key is the pseudonym; the item itself where the manifest names none)."""
    items = {}
    for row in rows:
        patient = row.get("patient") or ""
        # a DICOM patient, a BIDS subject or a labels --patient-column is an identity (its study is another
        # digest); a file's own path is not (pipeline._path_identity: patient and study are the same digest)
        own_file = not patient or (row.get("source") != "dicom"
                                   and patient.removeprefix("pat-") == (row.get("study") or "").removeprefix("stu-"))
        items[row["item_id"]] = Item(patient or ITEM_PATIENT + row["item_id"], own_file,
                                     manifest.parent / (row.get("image") or ""))
    return items


def tested_items(target: TargetCohort) -> dict[str, Item]:
    """The items the target's runs test on, by ``item_id``."""
    folds = {int(f) for f in target.test_folds}
    rows = (r for r in selected_rows(target.cohort) if int(r["fold"]) in folds)
    return _items(rows, target.cohort.manifest)


def trained_items(cohort: CohortFilter, fold: int) -> dict[str, Item]:
    """The items a stage with test fold ``fold`` trains or selects its checkpoint on, by ``item_id``: every
    selected item outside its test fold."""
    return _items((r for r in selected_rows(cohort) if int(r["fold"]) != int(fold)), cohort.manifest)


class _Contents:
    """sha256 of cached images, each file read once."""

    def __init__(self) -> None:
        self.digests: dict[Path, str | None] = {}

    def same(self, a: Path, b: Path) -> bool:
        """Whether two cached images hold the same bytes (an unreadable one may: counted as the same)."""
        if a.resolve() == b.resolve():
            return True
        for path in (a, b):
            if path not in self.digests:
                try:
                    self.digests[path] = sha256_file(path)
                except OSError:
                    self.digests[path] = None
        return None in (self.digests[a], self.digests[b]) or self.digests[a] == self.digests[b]


def shared_patients(trained: Mapping[str, Item], tested: Mapping[str, Item]) -> set[str]:
    """The target's test patients (keys) that a stage trains on: by pseudonym, and by item (the same image
    in both cohorts under two pseudonyms, e.g. one ingest named the patient from a labels column). Where
    a key only names a file (image folders), two cohorts share it when their files have the same relative
    path: such a match counts only when the cached images are the same content."""
    contents = _Contents()
    by_patient: dict[str, list[Item]] = {}
    for item in trained.values():
        by_patient.setdefault(item.patient, []).append(item)
    shared = set()
    for item in tested.values():
        if item.patient in shared:
            continue
        same_key = by_patient.get(item.patient, [])
        if any(not (item.own_file or other.own_file) or contents.same(item.image, other.image) for other in same_key):
            shared.add(item.patient)
    for item_id in trained.keys() & tested.keys():
        item, other = tested[item_id], trained[item_id]
        if not (item.own_file or other.own_file) or contents.same(item.image, other.image):
            shared.add(item.patient)
    return shared


def stages_in_use(starts: Mapping[str, str], sources: Iterable[Any]) -> dict[str, str | None]:
    """``{stage: the stage that starts from it, or None}`` for every stage the weights ``sources`` name and
    every stage their chains start from (``starts`` maps each stage's name to its ``from``), in chain order."""
    used: dict[str, str | None] = {}
    for source in sources:
        after = None
        while isinstance(source, str) and source in starts and source not in used:
            used[source] = after
            after, source = source, starts[source]
    return used


def _different_secrets(a: Path, b: Path) -> bool:
    """Whether two cohorts' ingest records name different secrets (their pseudonyms then never match)."""
    first, second = recorded_fingerprints(a.parent), recorded_fingerprints(b.parent)
    return bool(first and second and not first & second)


def _way_out(stage: StageCohort, target: TargetCohort, tested: Mapping[str, Item]) -> str:
    """How to make the stage clean: a separate cohort always; on the study's own manifest, the stage holding
    out the target's single test fold, where that is clean (checked, not assumed)."""
    way = "pretrain on a separate cohort (other patients, ingested under the same secret to be checked)"
    if stage.cohort.manifest.resolve() != target.cohort.manifest.resolve():
        return way
    folds = sorted(int(f) for f in target.test_folds)
    if len(folds) == 1:
        if folds[0] != stage.fold and not shared_patients(trained_items(stage.cohort, folds[0]), tested):
            return f"{way}, or let the stage hold out the target's test fold (pretrain {stage.name}: data.fold: " \
                   f"{folds[0]})"
        return way
    alone = TargetCohort(target.cohort, [stage.fold])
    clean_alone = not shared_patients(trained_items(stage.cohort, stage.fold), tested_items(alone))
    hint = f" (or test on its held-out fold only: data.folds: [{stage.fold}])" if clean_alone else ""
    return (f"{way}; with several test folds a stage on the study's own cohort sees the test patients of every "
            f"fold but its own{hint}")


def stage_leak(stage: StageCohort, target: TargetCohort, tested: Mapping[str, Item],
               started_by: str | None = None) -> str | None:
    """The refusal of a stage that trains on the target's test patients (``tested``: :func:`tested_items`),
    or None. ``started_by``: the stage that starts from this one, when that is how the grid reaches it."""
    shared = shared_patients(trained_items(stage.cohort, stage.fold), tested)
    if not shared:
        return None
    what = "patient that is" if len(shared) == 1 else "patients that are"
    via = f" (pretrain {started_by} starts from it)" if started_by else ""
    same = stage.cohort.manifest.resolve() == target.cohort.manifest.resolve()
    source = "the same manifest" if same else stage.cohort.manifest
    return (f"pretrain {stage.name}{via}: trains on {len(shared)} {what} in the target's test folds "
            f"{sorted(int(f) for f in target.test_folds)} (data.manifest {target.cohort.manifest}; the stage reads "
            f"{source}, every fold but its test fold {stage.fold}); a pretraining stage must not see test patients: "
            + _way_out(stage, target, tested))


def pretraining_leaks(target: TargetCohort, stages: Sequence[StageCohort], sources: Iterable[Any]) -> LeakCheck:
    """Check every stage the weights ``sources`` (the grid's and ``train``'s) use, their chains included:
    the first one that trains on the target's test patients is the :attr:`LeakCheck.problem`; a stage whose
    cohort was ingested under another secret than the target's cannot be compared (a note)."""
    by_name = {s.name: s for s in stages}
    used = stages_in_use({s.name: s.start for s in stages}, sources)
    check = LeakCheck()
    if not used:
        return check
    tested = tested_items(target)
    for name, started_by in used.items():
        stage = by_name[name]
        if _different_secrets(stage.cohort.manifest, target.cohort.manifest):
            check.notes.append(f"pretrain {name}: its cohort was ingested under another pseudonymisation secret "
                               "than data.manifest, so shared patients cannot be found; make sure it holds none of "
                               "the target's test patients")
            continue
        check.problem = stage_leak(stage, target, tested, started_by)
        if check.problem:
            return check
    return check
