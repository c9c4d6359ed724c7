"""``ingest()``: a PACS export / NIfTI / image folder in, a de-identified MONAI-ready cohort out.

Two passes, both in worker processes: headers first (every file read once with
``stop_before_pixels`` and classified), then pixels (one task per item: decode, present, write).
An index under ``OUT/.medxfer/`` remembers both passes by file size and mtime, so a re-run on an
unchanged source re-reads and re-decodes nothing. The index holds what the report and manifest
hold (relative paths, keyed digests, geometry): no identifier.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from ..core.errors import MedxferError
from ..core.files import atomic_write_json
from .cache import IMAGES_DIR, DecodeOptions, ItemResult, build_item, item_key
from .deid import PathRedactor, Pseudonymizer, load_secret
from .manifest import MANIFEST_COLUMNS, PATIENT_FIELD, LabelsError, format_list, join_labels, load_labels, write_csv
from .scan.record import FileRecord
from .scan.sniff import read_file_record
from .scan.walker import walk
from .series import Grouping, ItemPlan, group_records

log = logging.getLogger("medxfer.ingest")
INDEX_VERSION = 1
STATE_DIR = ".medxfer"
# Skips that a re-run must try again: a decoder may have been installed, a medium may read now.
RETRY_CATEGORIES = {"no_decoder", "unreadable"}
DEFAULT_OPTIONS = DecodeOptions()  # frozen: one shared instance is a safe default argument


class IngestError(MedxferError):
    """Unusable arguments or a run that could not complete (one line for the user)."""


@dataclass
class IngestResult:
    """What an ingest wrote (output folder, manifest, report) and counted."""

    out: Path
    manifest: Path
    report: Path
    counts: dict
    seconds: float
    warnings: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log: files, items, what was used, skipped, decoded and re-used."""
        c = self.counts
        return (f"ingest: {c['files']} files -> {c['items']} items ({c['used']} used, {c['duplicate']} duplicate, "
                f"{c['skipped']} skipped; {c['decoded']} decoded, {c['reused']} reused) in {self.seconds:.1f} s; "
                f"manifest {self.manifest}, report {self.report}")


# ---------------------------------------------------------------- worker side
_PSEUDO: Pseudonymizer | None = None


def _quiet() -> None:
    """pydicom warnings quote element values (which may be identifiers): silence them in ingest."""
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def _init_worker(secret: bytes) -> None:
    global _PSEUDO
    _PSEUDO = Pseudonymizer(secret)
    _quiet()


def _header_task(src: str, rels: list[str]) -> list[FileRecord]:
    return [read_file_record(Path(src), rel, _PSEUDO) for rel in rels]


def _pixel_task(plan: ItemPlan, src: str, out: str, opts: DecodeOptions, headers: dict) -> ItemResult:
    return build_item(plan, Path(src), Path(out), opts, headers)


@contextmanager
def _pool(workers: int, secret: bytes):
    """A process pool, or None for in-process work when ``workers == 1``."""
    if workers <= 1:
        _init_worker(secret)
        yield None
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(secret,)) as ex:
        yield ex


# ---------------------------------------------------------------- orchestration
def ingest(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    key: str | None = None,
    workers: int | None = None,
    secret_file: str | os.PathLike | None = None,
    options: DecodeOptions = DEFAULT_OPTIONS,
    modality: str | None = None,
    progress: bool | None = None,
    patient_column: str | None = None,
    burned_in: str = "skip",
    follow_links: bool = False,
    rekey: bool = False,
) -> IngestResult:
    """Ingest every file under ``src`` into ``out`` (manifest.csv, ingest_report.json, images/).

    ``modality`` fills the modality column of non-DICOM items (e.g. ``US`` for a PNG folder).
    ``patient_column`` (with ``labels``) names the labels column that identifies each item's patient:
    items of one value share one keyed ``patient`` pseudonym (and so one fold in ``medxfer split``).
    Without it, a file without DICOM identity is its own patient.
    ``progress`` shows bars on stderr (default: when stderr is a terminal).
    ``burned_in``: ``skip`` (default) leaves out images whose header says ``BurnedInAnnotation=YES``;
    ``keep`` uses them (for pixels scrubbed beforehand).
    ``follow_links`` follows symbolic links that leave ``src`` (bounded by loop detection); by default
    they are reported as skipped.
    ``rekey`` starts ``out`` over when it was built with another secret (every pseudonym changes);
    without it such an ``out`` is refused.
    """
    t0 = time.perf_counter()
    src, out = Path(src).resolve(), Path(out).resolve()
    if not src.is_dir():
        raise IngestError(f"source folder not found: {src}")
    if out == src:
        raise IngestError("--out must not be the source folder (the cache would be ingested as input next time)")
    if secret_file is not None and any(Path(secret_file).resolve().is_relative_to(d) for d in (src, out)):
        raise IngestError("the secret file must not be inside the source or output folder: "
                          "whoever holds it can recompute the pseudonyms")
    if labels is not None and not key:
        raise IngestError("--labels needs --key COLUMN (a DICOM keyword such as PatientID, or a file-path column)")
    if patient_column and labels is None:
        raise IngestError("--patient-column names a column of --labels: give --labels too")
    workers = max(1, workers or os.cpu_count() or 1)
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        secret = load_secret(secret_file)
    except (OSError, ValueError) as exc:
        raise IngestError(f"cannot use the secret file: {exc}") from exc
    pseudo = Pseudonymizer(secret)
    label_table = None
    if labels is not None:
        try:
            label_table = load_labels(labels, key, pseudo, patient_column=patient_column)
        except LabelsError as exc:
            raise IngestError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    index = _load_index(out, pseudo.fingerprint)

    walked = walk(src, outputs=(out,))
    rels = walked.files

    with warnings.catch_warnings(), _pool(workers, secret) as pool:
        _quiet()
        t_walk = time.perf_counter()
        records, reread = _header_pass(src, rels, index, pseudo, pool, progress)
        t_headers = time.perf_counter()
        grouping = group_records(list(records.values()))
        for plan in grouping.items:  # the ids leave ingest (file names, manifests, MLflow): keyed, like pseudonyms
            plan.item_id = pseudo.digest("item", plan.item_id)[:16]
        results, keys, decoded = _pixel_pass(src, out, grouping, records, index, options, pool, progress, pseudo)
        superseded = _retry_with_duplicates(src, out, grouping, records, results, options)
        for item_id, _, _ in superseded.values():
            keys.pop(item_id, None)  # built from a copy: not remembered, rebuilt (cheaply) next time
        t_pixels = time.perf_counter()

    tokens = set().union(*(rec.id_tokens for rec in records.values()))
    redact = PathRedactor(tokens, pseudo)
    files, items_rows, report_warnings = _account(rels, records, grouping, results, modality, pseudo, redact,
                                                  superseded)
    files += [{"path": redact(rel), "status": "skipped", "item_id": None, "reason": reason, "category": "excluded"}
              for rel, reason in walked.excluded.items()]
    files.sort(key=lambda f: f["path"])
    label_counts = None
    if label_table is not None:
        # again, now that the identifiers are known
        label_table = load_labels(labels, key, pseudo, tokens, patient_column)
        label_counts = _join(label_table, items_rows, grouping, records)
    columns = MANIFEST_COLUMNS + ([c for c in label_table.columns if c not in MANIFEST_COLUMNS] if label_table else [])
    manifest = out / "manifest.csv"
    write_csv(manifest, items_rows, columns)

    counts = _counts(files, items_rows, decoded, label_counts)
    if label_table is not None and label_table.dropped_columns:
        dropped = ", ".join(label_table.dropped_columns)
        report_warnings.append({"item_id": None,
                                "message": f"label columns dropped because they would hold identifiers: {dropped}"})
    seconds = time.perf_counter() - t0
    report = out / "ingest_report.json"
    report_doc = {
        "files": files, "counts": counts, "warnings": report_warnings, "seconds": round(seconds, 3),
        "seconds_by_step": {"walk": round(t_walk - t0, 3), "headers": round(t_headers - t_walk, 3),
                            "pixels": round(t_pixels - t_headers, 3), "write": round(seconds - (t_pixels - t0), 3)},
        "secret_fingerprint": pseudo.fingerprint,
        "options": {**asdict(options), "workers": workers, "labels_key": key, "modality": modality},
    }
    atomic_write_json(report, report_doc, indent=1)
    if decoded or reread or set(keys) != set(index.get("items", {})) or len(records) != len(index.get("files", {})):
        _save_index(out, pseudo, records, results, keys)  # an unchanged re-run leaves the index as it is
    _prune(out, {r["image"] for r in items_rows})
    result = IngestResult(out, manifest, report, counts, seconds, report_warnings)
    log.info(result.summary())
    return result


def _header_pass(src: Path, rels: list[str], index: dict, pseudo: Pseudonymizer, pool,
                 progress: bool) -> tuple[dict[str, FileRecord], int]:
    """Header records for every file: from the index when size and mtime are unchanged, else read.
    Returns the records and how many files were (re-)read."""
    records: dict[str, FileRecord] = {}
    todo = []
    known = index.get("files", {})
    for rel in rels:
        old = known.get(pseudo.digest("FilePath", rel))
        if old is not None:
            try:
                st = (src / rel).stat()
            except OSError:
                st = None
            if (st is not None and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns
                    and old["category"] not in RETRY_CATEGORIES):
                records[rel] = FileRecord.from_json({**old, "path": rel})
                continue
        todo.append(rel)
    bar = tqdm(total=len(todo), desc="headers", unit="file", file=sys.stderr, disable=not progress, leave=False)
    if pool is None:
        for rel in todo:
            records[rel] = read_file_record(src, rel, pseudo)
            bar.update()
    else:
        chunk = max(8, min(256, len(todo) // (pool._max_workers * 8) or 8))
        futures = [pool.submit(_header_task, str(src), todo[i:i + chunk]) for i in range(0, len(todo), chunk)]
        for fut in as_completed(futures):
            for rec in fut.result():
                records[rec.path] = rec
            bar.update(chunk)
    bar.close()
    return records, len(todo)


def _pixel_pass(src: Path, out: Path, grouping: Grouping, records: dict[str, FileRecord], index: dict,
                opts: DecodeOptions, pool, progress: bool,
                pseudo: Pseudonymizer) -> tuple[dict[str, ItemResult], dict[str, str], int]:
    """Decode the items whose cache key changed; returns results, every item's cache key, and the count decoded."""
    known = index.get("items", {})
    fingerprints = {rel: (rec.size, rec.mtime_ns) for rel, rec in records.items()}
    results: dict[str, ItemResult] = {}
    keys: dict[str, str] = {}
    todo: list[ItemPlan] = []
    for plan in grouping.items:
        key = keys[plan.item_id] = pseudo.digest("ItemKey", item_key(plan, fingerprints, opts))  # keyed: paths inside
        old = known.get(plan.item_id)
        if old and old["key"] == key and not old["result"]["failed"] and (
                old["result"]["image"] is None or (out / old["result"]["image"]).exists()):
            results[plan.item_id] = _result_from_index(old["result"], plan, pseudo)
            continue
        todo.append(plan)
    # Largest items first so that one big series does not finish last on a single worker.
    todo.sort(key=lambda plan: -sum(records[f].size for f in plan.files))
    bar = tqdm(total=len(todo), desc="pixels", unit="item", file=sys.stderr, disable=not progress, leave=False)

    def headers_of(plan: ItemPlan) -> dict:
        return {f: records[f].header for f in plan.files} if plan.kind == "volume" else {}

    if pool is None:
        for plan in todo:
            results[plan.item_id] = build_item(plan, src, out, opts, headers_of(plan))
            bar.update()
    else:
        futures = [pool.submit(_pixel_task, plan, str(src), str(out), opts, headers_of(plan)) for plan in todo]
        for fut in as_completed(futures):
            res = fut.result()
            results[res.item_id] = res
            bar.update()
    bar.close()
    return results, keys, len(todo)


def _account(rels, records, grouping: Grouping, results: dict[str, ItemResult], modality: str | None,
             pseudo: Pseudonymizer, redact: PathRedactor, superseded: dict[str, tuple[str, str, str]]):
    """Every file exactly once in the report; one manifest row per item that produced an image."""
    file_item: dict[str, str] = {}
    for plan in grouping.items:
        for f in plan.files:
            file_item[f] = plan.item_id
    rows, warns = [], []
    plans = {p.item_id: p for p in grouping.items}
    for item_id, res in results.items():
        for msg in res.notes:
            warns.append({"item_id": item_id, "message": msg})
        if res.image is None:
            continue
        rows.append(_manifest_row(plans[item_id], res, modality, pseudo))
    rows.sort(key=lambda r: (r["patient"], r["study"], r["series"], r["item_id"]))
    shown = {rel: redact(rel) for rel in rels}
    files = []
    for rel in rels:
        rec = records[rel]
        entry = {"path": shown[rel], "status": "skipped", "item_id": None, "reason": rec.reason}
        if rec.kind == "skip":
            entry["category"] = rec.category
        elif rel in superseded:
            item_id, reason, used = superseded[rel]
            entry.update(reason=f"{reason}; its copy {shown[used]} (same SOPInstanceUID) was used instead",
                         category="decode")
        elif rel in grouping.duplicates:
            kept = grouping.duplicates[rel]
            kept_res = results.get(file_item.get(kept, ""))
            if kept_res is not None and kept_res.image is not None and kept not in kept_res.failed:
                entry.update(status="duplicate", item_id=file_item.get(kept),
                             reason=f"same SOPInstanceUID as {shown[kept]}", category="duplicate")
            else:
                entry.update(reason=f"same SOPInstanceUID as {shown[kept]}, and neither copy could be decoded",
                             category="decode")
        else:
            item_id = file_item.get(rel)
            res = results.get(item_id) if item_id else None
            if res is not None and rel in res.failed:
                entry.update(reason=res.failed[rel], category="decode")
            elif res is not None and res.image is not None:
                entry.update(status="used", item_id=item_id, reason=grouping.notes.get(rel))
            else:
                entry.update(reason="not assigned to any item", category="internal")
        files.append(entry)
    return files, rows, warns


def _retry_with_duplicates(src: Path, out: Path, grouping: Grouping, records: dict[str, FileRecord],
                           results: dict[str, ItemResult], opts: DecodeOptions) -> dict[str, tuple[str, str, str]]:
    """When a file failed to decode and another copy (same SOPInstanceUID) exists, rebuild its item
    from the copy. Returns failed file -> (item_id, its reason, the copy used)."""
    copies: dict[str, list[str]] = {}
    for dup, kept in sorted(grouping.duplicates.items()):
        copies.setdefault(kept, []).append(dup)
    superseded: dict[str, tuple[str, str, str]] = {}
    for plan in grouping.items:
        res = results.get(plan.item_id)
        swaps = {f: copies[f][0] for f in (res.failed if res else {}) if copies.get(f)}
        if not swaps:
            continue
        files = [swaps.get(f, f) for f in plan.files]
        trial = replace(plan, files=files, header=records[files[0]].header)
        new = build_item(trial, src, out, opts, {f: records[f].header for f in files} if plan.kind == "volume" else {})
        if len(new.failed) >= len(res.failed):
            continue
        for bad, copy in swaps.items():
            superseded[bad] = (plan.item_id, res.failed[bad], copy)
            del grouping.duplicates[copy]
        plan.files, plan.header = files, trial.header
        results[plan.item_id] = new
    return superseded


def _manifest_row(plan: ItemPlan, res: ItemResult, modality: str | None, pseudo: Pseudonymizer) -> dict:
    h = plan.header
    is_dicom = plan.kind not in ("nifti", "raster")
    if is_dicom:
        patient, study, series = h["patient"], h["study"], h["series"]
    else:  # non-DICOM: a BIDS sub-/ses- folder names patient and study, else the file is its own patient
        patient, study, series = _path_identity(plan.files[0], pseudo)
    if plan.kind in ("volume", "cine"):
        kind = plan.kind
    else:
        kind = "volume" if len(res.shape) >= 3 and plan.kind == "nifti" else "image"
    return {
        "item_id": plan.item_id,
        "patient": "pat-" + patient[:12], "study": "stu-" + study[:12], "series": "ser-" + series[:12],
        "modality": h.get("modality") or (modality or "").upper(),
        "body_part": h.get("body_part", ""), "view": h.get("view", ""), "laterality": h.get("laterality", ""),
        "image": res.image, "shape": format_list(res.shape), "spacing": format_list([float(s) for s in res.spacing]),
        "frames": res.frames, "channels": res.channels, "kind": kind,
        "source": "dicom" if is_dicom else plan.kind, "color": res.color, "intensity": res.intensity,
        "spacing_source": res.spacing_source,
        "uniform_spacing": "" if res.uniform_spacing is None else int(res.uniform_spacing),
        "voi": res.voi, "window_center": res.window_center, "window_width": res.window_width,
        "voi_applied": int(res.voi_applied), "frame_time_ms": res.frame_time_ms,
        "n_files": len(res.used_files), "series_part": plan.series_part,
    }


def _path_identity(rel: str, pseudo: Pseudonymizer) -> tuple[str, str, str]:
    """Patient/study/series digests for a file without DICOM identity (BIDS labels may be MRNs: keyed too)."""
    parts = rel.split("/")
    sub = next((p for p in parts if p.startswith("sub-")), None)
    ses = next((p for p in parts if p.startswith("ses-")), None)
    patient = pseudo.digest("BIDSSubject", sub) if sub else pseudo.digest("FilePath", rel)
    study = pseudo.digest("BIDSSession", f"{sub}/{ses}") if sub else patient
    return patient, study, pseudo.digest("FileSeries", rel)


def _join(table, rows: list[dict], grouping: Grouping, records: dict[str, FileRecord]) -> dict:
    plans = {p.item_id: p for p in grouping.items}
    item_keys: dict[str, set[str]] = {}
    for r in rows:
        plan = plans[r["item_id"]]
        if table.is_path_key:
            item_keys[r["item_id"]] = set(plan.files)
        else:
            item_keys[r["item_id"]] = {records[f].header.get("keys", {}).get(table.key) for f in plan.files} - {None}
    labels, counts = join_labels(table, item_keys)
    for r in rows:
        for c, v in labels.get(r["item_id"], {}).items():
            if c == PATIENT_FIELD:
                r["patient"] = "pat-" + v[:12]  # the labels CSV names the patient (keyed digest, like DICOM's)
            elif c not in MANIFEST_COLUMNS:
                r[c] = v
    if table.patient_column:
        counts["patient_from_labels"] = sum(PATIENT_FIELD in labels.get(r["item_id"], {}) for r in rows)
    return counts


def _counts(files: list[dict], rows: list[dict], decoded: int, label_counts: dict | None) -> dict:
    by_reason: dict[str, int] = {}
    for f in files:
        if f["status"] != "used":
            by_reason[f.get("category") or f["status"]] = by_reason.get(f.get("category") or f["status"], 0) + 1
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    counts = {
        "files": len(files),
        "used": sum(f["status"] == "used" for f in files),
        "duplicate": sum(f["status"] == "duplicate" for f in files),
        "skipped": sum(f["status"] == "skipped" for f in files),
        "items": len(rows), "items_by_kind": kinds, "not_used_by_reason": by_reason,
        "decoded": decoded, "reused": len(rows) - min(decoded, len(rows)),
        "patients": len({r["patient"] for r in rows}),
    }
    if label_counts is not None:
        counts["labels"] = label_counts
    return counts


# ---------------------------------------------------------------- index (re-run cache)
def _load_index(out: Path, fingerprint: str) -> dict:
    p = out / STATE_DIR / "index.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    if doc.get("version") != INDEX_VERSION or doc.get("secret_fingerprint") != fingerprint:
        return {}  # another secret means other pseudonyms: start afresh
    return doc


def _save_index(out: Path, pseudo: Pseudonymizer, records: dict[str, FileRecord], results: dict[str, ItemResult],
                keys: dict[str, str]) -> None:
    """Paths are stored only as keyed digests (a folder may be named after a patient)."""
    (out / STATE_DIR).mkdir(exist_ok=True)
    path_key = lambda rel: pseudo.digest("FilePath", rel)  # noqa: E731
    items = {}
    for item_id, res in results.items():
        if item_id not in keys:
            continue
        doc = dict(vars(res))
        doc["used_files"] = [path_key(f) for f in res.used_files]
        doc["failed"] = {path_key(f): reason for f, reason in res.failed.items()}
        items[item_id] = {"key": keys[item_id], "result": doc}
    doc = {"version": INDEX_VERSION, "secret_fingerprint": pseudo.fingerprint,
           "files": {path_key(rel): {**rec.to_json(), "path": None} for rel, rec in records.items()}, "items": items}
    atomic_write_json(out / STATE_DIR / "index.json", doc, indent=None)


def _result_from_index(doc: dict, plan: ItemPlan, pseudo: Pseudonymizer) -> ItemResult:
    paths = {pseudo.digest("FilePath", f): f for f in plan.files}
    res = ItemResult(**doc)
    res.used_files = [paths[d] for d in doc["used_files"] if d in paths]
    res.failed = {paths[d]: reason for d, reason in doc["failed"].items() if d in paths}
    return res


def _prune(out: Path, keep: set[str]) -> None:
    """Remove cached images no manifest row points to (an item that changed or disappeared)."""
    d = out / IMAGES_DIR
    if not d.is_dir():
        return
    for p in d.iterdir():
        if f"{IMAGES_DIR}/{p.name}" not in keep:
            p.unlink(missing_ok=True)
