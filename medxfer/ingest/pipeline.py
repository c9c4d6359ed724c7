"""``ingest()``: a PACS export / NIfTI / image folder in, a de-identified MONAI-ready cohort out.

Two passes, both in worker processes: headers first (every file read once with
``stop_before_pixels`` and classified), then pixels (one task per item: decode, present, write).
An index under ``OUT/.medxfer/`` remembers both passes by file size and mtime, so a re-run on an
unchanged source re-reads and re-decodes nothing. While a run works it saves its progress in pieces
(a journal of finished header chunks and items): a re-run after a crash, even ``kill -9``, reuses what
finished and ends as a clean run would. The index holds what the report and manifest hold (keyed
digests of paths, geometry): no identifier. Cached images live in ``OUT/images/<ab>/<item_id>.nii``.
A third, in-process pass (:mod:`.masks`) writes each DICOM SEG / RT structure set as a label volume on
its image item's grid (``OUT/masks/<item_id>.nii.gz``, the manifest's ``mask`` and ``segments`` columns).
"""
from __future__ import annotations

import bisect
import hashlib
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.errors import MedxferError
from ..core.files import atomic_write
from . import pixels
from .cache import DecodeOptions, ItemResult, build_item, item_key
from .deid import PathRedactor, Pseudonymizer
from .index import (JOURNAL_FILE, STATE_DIR, IndexJournal, load_index, prune_images,
                    result_from_index, save_index)
from .masks import MASK_COLUMNS, MaskPass, build_masks
from .manifest import (MANIFEST_COLUMNS, MANIFEST_FILE, PATIENT_FIELD, SLICE_LABELS_FILE, LabelsError, format_list,
                       join_labels, load_labels, write_csv, write_slice_labels)
from .scan.record import FileRecord
from .scan.dicomdir import DicomdirError, check_dicomdir
from .scan.sniff import read_file_record
from .scan.walker import LINK_OUTSIDE, display_path, walk
from .secret import REPORT_FILE, SecretError, open_output_secret, start_over
from .series import DUPLICATE_RULE, PIXEL_DIGEST, Grouping, ItemPlan, group_records, shared_sop_paths
from .split import reapply_folds
from .vocabulary import UNRECOGNISED_EFFECT, may_show_text_in_pixels

log = logging.getLogger("medxfer.ingest")
JOURNAL_HEADER_EVERY = 256  # header records per journal line when reading in-process
# Legacy encodings tried on a file name that is not UTF-8, so that a folder named after a patient in
# e.g. Latin-1 is redacted rather than shown as escapes (the DICOM header names the patient in that encoding).
LEGACY_NAME_ENCODINGS = ("cp1252", "shift_jis", "euc_kr", "gb18030", "latin-1")
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


def _digest_task(src: str, rel: str, header: dict) -> str | None:
    """Keyed digest of a file's stored pixel values (dtype, shape and values; not their encoding), or
    None when they cannot be read. Compares copies that share a SOPInstanceUID."""
    try:
        arr = pixels.read_stored(Path(src) / rel, header)
    except Exception:  # a copy that does not decode is compared on its header only
        return None
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    h = hashlib.sha256(f"{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.data)
    return _PSEUDO.digest("PixelContent", h.hexdigest())[:32]


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
    if labels is not None and not key:
        raise IngestError("--labels needs --key COLUMN (a DICOM keyword such as PatientID, or a file-path column)")
    if patient_column and labels is None:
        raise IngestError("--patient-column names a column of --labels: give --labels too")
    if burned_in not in BURNED_IN_POLICIES:
        raise IngestError(f"--burned-in must be one of {', '.join(BURNED_IN_POLICIES)}")
    workers = max(1, workers or os.cpu_count() or 1)
    if progress is None:
        progress = sys.stderr.isatty()
    try:  # refused: a secret inside SRC or OUT, or another secret than OUT was built with (unless rekey)
        opened = open_output_secret(secret_file, src, out, rekey=rekey)
    except SecretError as exc:
        raise IngestError(str(exc)) from exc
    secret = opened.key
    secret_notes = list(opened.warnings)
    pseudo = Pseudonymizer(secret)
    label_table = None
    if labels is not None:
        try:
            label_table = load_labels(labels, key, pseudo, patient_column=patient_column)
        except LabelsError as exc:
            raise IngestError(str(exc)) from exc
    if opened.replaces:  # --rekey: nothing derived from the old secret survives (split.json included)
        secret_notes.append(start_over(out, opened.replaces, opened.fingerprint))
    for msg in secret_notes:
        log.warning(msg)
    out.mkdir(parents=True, exist_ok=True)
    index = load_index(out, pseudo.fingerprint)

    walked = walk(src, outputs=(out,), follow_links=follow_links)
    rels = walked.files

    journal = IndexJournal(out / STATE_DIR / JOURNAL_FILE, pseudo)
    with warnings.catch_warnings(), _pool(workers, secret) as pool, journal:
        _quiet()
        t_walk = time.perf_counter()
        records, reread = _header_pass(src, rels, index, pseudo, pool, progress, journal)
        _pixel_digests(src, records, pool, journal)
        _check_dicomdirs(src, rels, records, pseudo, journal)
        used, header_warnings = _header_policy(records, burned_in)  # the index keeps ``records`` as read
        t_headers = time.perf_counter()
        grouping = group_records(list(used.values()))
        for plan in grouping.items:  # the ids leave ingest (file names, manifests, MLflow): keyed, like pseudonyms
            plan.item_id = pseudo.digest("item", plan.item_id)[:16]
        results, keys, decoded = _pixel_pass(src, out, grouping, records, index, options, pool, progress, pseudo,
                                             journal)
        superseded = _retry_with_duplicates(src, out, grouping, records, results, options)
        for item_id, _, _ in superseded.values():
            keys.pop(item_id, None)  # built from a copy: not remembered, rebuilt (cheaply) next time
        t_pixels = time.perf_counter()

    tokens = set().union(*(rec.id_tokens for rec in records.values()))
    redact = PathRedactor(tokens, pseudo)
    show = lambda rel: _shown_path(rel, redact)  # noqa: E731
    # SEG / RT structure sets -> label volumes on their items' grids (masks/), in-process
    masks = build_masks(src, out, records, grouping, results, pseudo, redact, show)
    files, items_rows, report_warnings = _account(rels, used, grouping, results, modality, pseudo, show,
                                                  superseded, masks.files)
    files += [{"path": show(rel), "status": "skipped", "item_id": None, "reason": reason, "category": "excluded"}
              for rel, reason in walked.excluded.items()]
    files += [{"path": show(rel), "status": "skipped", "item_id": None, "reason": reason, "category": LINK_OUTSIDE}
              for rel, reason in walked.links.items()]
    report_warnings += _dicomdir_warnings(records, show) + header_warnings
    files.sort(key=lambda f: f["path"])
    label_counts, slice_rows = None, []
    if label_table is not None:
        # again, now that the identifiers are known
        label_table = load_labels(labels, key, pseudo, tokens, patient_column)
        label_counts, slice_rows = _join(label_table, items_rows, grouping, records, results)
    label_columns = [c for c in label_table.columns if c not in MANIFEST_COLUMNS] if label_table else []
    mask_columns = MASK_COLUMNS if masks.present else []
    report_warnings += masks.warnings + _put_masks(items_rows, masks)
    columns = MANIFEST_COLUMNS + mask_columns + [c for c in label_columns if c not in mask_columns]
    manifest = out / MANIFEST_FILE
    fold_notes = reapply_folds(out, items_rows, columns)  # a split cohort keeps its folds (before the manifest goes)
    for msg in fold_notes:
        log.warning(msg)
    report_warnings += [{"item_id": None, "message": m} for m in secret_notes + fold_notes]
    write_csv(manifest, items_rows, columns)
    # per-slice labels beside it, or an earlier run's file removed when there are none now
    write_slice_labels(out / SLICE_LABELS_FILE, slice_rows, _slice_label_columns(label_columns))

    counts = _counts(files, items_rows, decoded, label_counts)
    if masks.counts:
        counts["masks"] = masks.counts
    if label_table is not None and label_table.dropped_columns:
        dropped = ", ".join(label_table.dropped_columns)
        report_warnings.append({"item_id": None,
                                "message": f"label columns dropped because they would hold identifiers: {dropped}"})
    seconds = time.perf_counter() - t0
    report = out / REPORT_FILE
    report_doc = {
        "files": files, "counts": counts, "warnings": report_warnings, "seconds": round(seconds, 3),
        "seconds_by_step": {"walk": round(t_walk - t0, 3), "headers": round(t_headers - t_walk, 3),
                            "pixels": round(t_pixels - t_headers, 3), "write": round(seconds - (t_pixels - t0), 3)},
        "secret_fingerprint": pseudo.fingerprint,
        "options": {**asdict(options), "workers": workers, "labels_key": key, "modality": modality},
    }
    # UTF-8, not \u escapes (a compliance grep must find what is there); paths are already shown as text, and
    # anything not encodable left over becomes a JSON \u escape rather than a crash
    atomic_write(report, json.dumps(report_doc, indent=1, ensure_ascii=False).encode("utf-8", "backslashreplace"))
    if (journal.written or decoded or reread or set(keys) != set(index.get("items", {}))
            or len(records) != len(index.get("files", {}))):
        save_index(out, pseudo, records, results, keys)  # an unchanged re-run leaves the index as it is
    journal.discard()  # its progress is in the index now
    prune_images(out, {r["image"] for r in items_rows})
    result = IngestResult(out, manifest, report, counts, seconds, report_warnings)
    log.info(result.summary())
    return result


def _before_masks(old: dict) -> bool:
    """A non-image record of an index written before SEG / RT structure sets became masks (it does not
    name its SOP class): read again, it may be a mask object."""
    return old.get("category") == "non_image" and "sop_class" not in (old.get("header") or {})


def _header_pass(src: Path, rels: list[str], index: dict, pseudo: Pseudonymizer, pool,
                 progress: bool, journal: IndexJournal) -> tuple[dict[str, FileRecord], int]:
    """Header records for every file: from the index when size and mtime are unchanged, else read.
    Records read go to the journal chunk by chunk (a crash keeps them). Returns the records and how
    many files were (re-)read."""
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
                    and old["category"] not in RETRY_CATEGORIES and not _before_masks(old)):
                records[rel] = FileRecord.from_json({**old, "path": rel})
                continue
        todo.append(rel)
    bar = tqdm(total=len(todo), desc="headers", unit="file", file=sys.stderr, disable=not progress, leave=False)
    if pool is None:
        for i in range(0, len(todo), JOURNAL_HEADER_EVERY):
            done = [read_file_record(src, rel, pseudo) for rel in todo[i:i + JOURNAL_HEADER_EVERY]]
            records.update((rec.path, rec) for rec in done)
            journal.files(done)
            bar.update(len(done))
    else:
        chunk = max(8, min(256, len(todo) // (pool._max_workers * 8) or 8))
        futures = [pool.submit(_header_task, str(src), todo[i:i + chunk]) for i in range(0, len(todo), chunk)]
        for fut in as_completed(futures):
            done = fut.result()
            records.update((rec.path, rec) for rec in done)
            journal.files(done)
            bar.update(len(done))
    bar.close()
    return records, len(todo)


def _pixel_digests(src: Path, records: dict[str, FileRecord], pool, journal: IndexJournal) -> None:
    """Add a pixel-content digest to the header of every image whose SOPInstanceUID another file has too
    (:func:`~medxfer.ingest.series.group_records` compares the copies). Kept in the index: computed once."""
    todo = [rel for rel in shared_sop_paths(list(records.values())) if PIXEL_DIGEST not in records[rel].header]
    if not todo:
        return
    headers = [records[rel].header for rel in todo]
    if pool is None:
        digests = [_digest_task(str(src), rel, h) for rel, h in zip(todo, headers)]
    else:
        digests = list(pool.map(_digest_task, [str(src)] * len(todo), todo, headers))
    for rel, digest in zip(todo, digests):
        records[rel].header = {**records[rel].header, PIXEL_DIGEST: digest}
    journal.files([records[rel] for rel in todo])


def _check_dicomdirs(src: Path, rels: list[str], records: dict[str, FileRecord], pseudo: Pseudonymizer,
                     journal: IndexJournal) -> None:
    """Count, for each DICOMDIR, the files it references and those present (kept in its record, without
    names). Checked again only when the DICOMDIR or the list of files under its folder changed."""
    changed = []
    for rel, rec in records.items():
        if rec.category != "dicomdir":
            continue
        folder = rel.rpartition("/")[0]
        prefix = folder + "/" if folder else ""
        below = rels[bisect.bisect_left(rels, prefix):bisect.bisect_left(rels, prefix + "\U0010ffff")]
        listing = pseudo.digest("DicomdirListing", "\n".join(below))[:32]  # keyed: paths inside
        old = rec.header.get("dicomdir_check")
        if old and old.get("listing") == listing:
            continue
        try:
            found = check_dicomdir(src / rel)
            check = {"listing": listing, "referenced": found.referenced, "present": found.present}
        except DicomdirError as exc:
            check = {"listing": listing, "error": str(exc)}
        rec.header = {**rec.header, "dicomdir_check": check}
        changed.append(rec)
    journal.files(changed)


def _dicomdir_warnings(records: dict[str, FileRecord], show) -> list[dict]:
    """A warning per DICOMDIR that lists files missing from the source (counts only: a name may identify)."""
    warns = []
    for rel, rec in sorted(records.items()):
        check = rec.header.get("dicomdir_check") if rec.category == "dicomdir" else None
        if not check:
            continue
        if "error" in check:
            warns.append({"item_id": None, "message": f"DICOMDIR {show(rel)}: its list of files could not be "
                                                      f"checked ({check['error']})"})
        elif check["present"] < check["referenced"]:
            missing = check["referenced"] - check["present"]
            warns.append({"item_id": None, "message": (
                f"DICOMDIR {show(rel)} lists {check['referenced']} files; {missing} of them are missing from "
                f"its folder ({check['present']} present): an incomplete copy of the medium? "
                "The files found are ingested; copy the whole medium to ingest the rest")})
    return warns


def _pixel_pass(src: Path, out: Path, grouping: Grouping, records: dict[str, FileRecord], index: dict,
                opts: DecodeOptions, pool, progress: bool, pseudo: Pseudonymizer,
                journal: IndexJournal) -> tuple[dict[str, ItemResult], dict[str, str], int]:
    """Decode the items whose cache key changed; returns results, every item's cache key, and the count decoded.
    Each finished item goes to the journal at once (a crash keeps it)."""
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
            results[plan.item_id] = result_from_index(old["result"], plan, pseudo)
            continue
        todo.append(plan)
    # Largest items first so that one big series does not finish last on a single worker.
    todo.sort(key=lambda plan: -sum(records[f].size for f in plan.files))
    bar = tqdm(total=len(todo), desc="pixels", unit="item", file=sys.stderr, disable=not progress, leave=False)

    def headers_of(plan: ItemPlan) -> dict:
        return {f: records[f].header for f in plan.files} if plan.kind == "volume" else {}

    if pool is None:
        for plan in todo:
            res = results[plan.item_id] = build_item(plan, src, out, opts, headers_of(plan))
            journal.item(res, keys[res.item_id])
            bar.update()
    else:
        futures = [pool.submit(_pixel_task, plan, str(src), str(out), opts, headers_of(plan)) for plan in todo]
        for fut in as_completed(futures):
            res = fut.result()
            results[res.item_id] = res
            journal.item(res, keys[res.item_id])
            bar.update()
    bar.close()
    return results, keys, len(todo)


def _account(rels, records, grouping: Grouping, results: dict[str, ItemResult], modality: str | None,
             pseudo: Pseudonymizer, show: Callable[[str], str], superseded: dict[str, tuple[str, str, str]],
             mask_files: dict[str, dict]):
    """Every file exactly once in the report; one manifest row per item that produced an image.
    ``show`` gives a path as the report shows it (redacted, escaped); ``mask_files`` the entries of the
    mask objects (:func:`~medxfer.ingest.masks.build_masks`)."""
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
    shown = {rel: show(rel) for rel in rels}
    conflict_of = {f: c for c in grouping.conflicts for f in c.files}
    for c in grouping.conflicts:
        warns.append({"item_id": None, "message": (
            f"conflicting copies of one image (same SOPInstanceUID, different {', '.join(c.differs)}): "
            f"{' and '.join(shown[f] for f in c.files)}; none of them is used ({DUPLICATE_RULE}): "
            "remove the wrong copy and run again")})
    files = []
    for rel in rels:
        rec = records[rel]
        entry = {"path": shown[rel], "status": "skipped", "item_id": None, "reason": rec.reason}
        if rec.kind == "skip":
            entry["category"] = rec.category
        elif rel in mask_files:
            entry.update(mask_files[rel])
        elif rel in conflict_of:
            c = conflict_of[rel]
            others = ", ".join(shown[f] for f in c.files if f != rel)
            entry.update(reason=f"same SOPInstanceUID as {others} but different {', '.join(c.differs)}: "
                                "no copy is used (see warnings)", category="duplicate_conflict")
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


BURNED_IN_POLICIES = ("skip", "keep")
BURNED_IN_REASON = ("BurnedInAnnotation (0028,0301) is YES: text, often the patient's name, is burned into the pixels "
                    "(ingest with --burned-in keep once the pixels are scrubbed)")


def _header_policy(records: dict[str, FileRecord], burned_in: str) -> tuple[dict[str, FileRecord], list[dict]]:
    """The records to group, and the report's warnings about what the headers say (counts only, no value).

    With ``burned_in="skip"`` an image whose header says BurnedInAnnotation=YES becomes a skip (category
    ``burned_in``) in the returned copy. Decided here, on the header records as read (the index keeps
    those), so that a ``--burned-in keep`` re-run reads no header again. Warns when ultrasound or
    secondary-capture images do not say whether text is burned in, and counts, per attribute, the
    images whose header values are outside the DICOM defined terms (those values were left out)."""
    used = dict(records)
    yes = unknown = 0
    unrecognised: dict[str, int] = {}
    for rel, rec in records.items():
        if rec.kind != "dicom":
            continue
        h = rec.header
        if h.get("burned_in") == "YES":
            yes += 1
            if burned_in == "skip":
                used[rel] = replace(rec, kind="skip", category="burned_in", reason=BURNED_IN_REASON)
                continue
        elif not h.get("burned_in") and may_show_text_in_pixels(h):
            unknown += 1
        for kw in h.get("unrecognised", ()):
            unrecognised[kw] = unrecognised.get(kw, 0) + 1
    warns = []
    if yes and burned_in == "keep":
        warns.append(f"{yes} image file(s) whose header says BurnedInAnnotation=YES were used (--burned-in keep): "
                     "their pixels show text unless they were scrubbed")
    if unknown:
        warns.append(f"{unknown} ultrasound / secondary-capture image file(s) do not say whether text is burned into "
                     "their pixels (no BurnedInAnnotation); such images often show the patient's name: "
                     "check them before the cohort leaves the hospital")
    for kw, n in sorted(unrecognised.items()):
        warns.append(f"{n} image file(s) hold a {kw} outside the DICOM defined terms, not copied "
                     f"({UNRECOGNISED_EFFECT.get(kw, 'left out')})")
    return used, [{"item_id": None, "message": m} for m in warns]


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
        "burned_in": h.get("burned_in") or "unknown",  # YES only with --burned-in keep
    }


def _path_identity(rel: str, pseudo: Pseudonymizer) -> tuple[str, str, str]:
    """Patient/study/series digests for a file without DICOM identity (BIDS labels may be MRNs: keyed too)."""
    parts = rel.split("/")
    sub = next((p for p in parts if p.startswith("sub-")), None)
    ses = next((p for p in parts if p.startswith("ses-")), None)
    patient = pseudo.digest("BIDSSubject", sub) if sub else pseudo.digest("FilePath", rel)
    study = pseudo.digest("BIDSSession", f"{sub}/{ses}") if sub else patient
    return patient, study, pseudo.digest("FileSeries", rel)


def _put_masks(rows: list[dict], masks: MaskPass) -> list[dict]:
    """Fill the ``mask`` / ``segments`` columns of the items that got a label volume (in place). A labels CSV
    that gives an item a ``mask`` of its own keeps it (the user named it); such items are counted in the
    returned warning."""
    kept = 0
    for r in rows:
        cols = masks.columns.get(r["item_id"])
        if cols is None:
            continue
        if r.get("mask"):
            kept += 1
            continue
        r.update(cols)
    if not kept:
        return []
    return [{"item_id": None, "message": f"{kept} item(s) have a DICOM mask object and a mask from the labels CSV: "
                                         "the labels CSV's mask is in the manifest (the DICOM label volumes are "
                                         "under masks/)"}]


def _per_slice(table, plan: ItemPlan) -> bool:
    """Whether ``plan`` takes its labels slice by slice: a labels CSV keyed by SOPInstanceUID on a volume
    stacked from single-frame files (one SOP per slice; a multi-frame file has one SOP for all)."""
    return table.key == "SOPInstanceUID" and plan.kind == "volume" and plan.frame_order is None


def _slice_label_columns(label_columns: list[str]) -> list[str]:
    """The label columns of :data:`SLICE_LABELS_FILE` (one named ``slice`` would clash with the index)."""
    return [c for c in label_columns if c != "slice"]


def _join(table, rows: list[dict], grouping: Grouping, records: dict[str, FileRecord],
          results: dict[str, ItemResult]) -> tuple[dict, list[dict]]:
    """Put the labels on the manifest rows (in place); returns the label counts and the per-slice rows.

    A volume labelled per slice (:func:`_per_slice`) keeps its label columns empty: each cached slice
    whose SOP has a label row gets a row ``item_id, slice, <labels>`` instead, ``slice`` = k for
    ``used_files[k]`` (the files that decoded, in stack order: the cache's third axis). Keys stay digests;
    none is written."""
    plans = {p.item_id: p for p in grouping.items}

    def key_of(f: str) -> str | None:
        return records[f].header.get("keys", {}).get(table.key)

    item_keys: dict[str, set[str]] = {}
    volumes: list[dict] = []
    for r in rows:
        plan = plans[r["item_id"]]
        if table.is_path_key:
            item_keys[r["item_id"]] = set(plan.files)
        elif _per_slice(table, plan):
            volumes.append(r)
        else:
            item_keys[r["item_id"]] = {key_of(f) for f in plan.files} - {None}
    labels, counts = join_labels(table, item_keys)
    for r in rows:
        for c, v in labels.get(r["item_id"], {}).items():
            if c == PATIENT_FIELD:
                r["patient"] = "pat-" + v[:12]  # the labels CSV names the patient (keyed digest, like DICOM's)
            elif c not in MANIFEST_COLUMNS:
                r[c] = v
    from_labels = sum(PATIENT_FIELD in labels.get(r["item_id"], {}) for r in rows)
    columns = _slice_label_columns([c for c in table.columns if c not in MANIFEST_COLUMNS])
    slice_rows: list[dict] = []
    matched: set[str] = set()
    labelled_volumes = conflicts = 0
    for r in volumes:
        patients = set()
        n = len(slice_rows)
        for k, f in enumerate(results[r["item_id"]].used_files):
            values = table.by_key.get(key_of(f) or "")
            if values is None:
                continue
            matched.add(key_of(f))
            slice_rows.append({"item_id": r["item_id"], "slice": k, **{c: values.get(c, "") for c in columns}})
            if PATIENT_FIELD in values:
                patients.add(values[PATIENT_FIELD])
        labelled_volumes += len(slice_rows) > n
        if len(patients) == 1:  # the slices' rows agree on the patient: the volume is theirs
            r["patient"] = "pat-" + patients.pop()[:12]
            from_labels += 1
        conflicts += len(patients) > 1  # they disagree: the header's patient stays
    if table.key == "SOPInstanceUID":
        counts["matched_rows"] += len(matched)
        counts["unmatched_rows"] = table.n_rows - counts["matched_rows"]
        counts["items_without_label"] = len(rows) - counts["items_labelled"] - labelled_volumes
        counts["volumes_with_slice_labels"] = labelled_volumes
        counts["slices_labelled"] = len(slice_rows)
    if table.patient_column:
        counts["patient_from_labels"] = from_labels
        if conflicts:
            counts["volumes_with_conflicting_patients"] = conflicts
    return counts, slice_rows


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


# ---------------------------------------------------------------- paths as the report shows them
def _shown_path(rel: str, redact: PathRedactor) -> str:
    """A relative path as the report shows it: identifier parts redacted, bytes that are not UTF-8 as
    ``\\xNN`` escapes. A name that is not UTF-8 is also read in legacy encodings (Windows Latin-1,
    Shift JIS, EUC-KR, GB 18030): when one of them shows an identifier (a folder named after the patient
    in the encoding of the header), that reading is redacted and shown instead."""
    if display_path(rel) == rel:
        return redact(rel)
    shown = []
    for seg in rel.split("/"):
        text = display_path(redact(seg))
        if text != seg:
            raw = seg.encode("utf-8", "surrogateescape")
            for enc in LEGACY_NAME_ENCODINGS:
                try:
                    guess = raw.decode(enc)
                except UnicodeDecodeError:
                    continue
                hidden = redact(guess)
                if hidden != guess:
                    text = hidden
                    break
        shown.append(text)
    return "/".join(shown)
