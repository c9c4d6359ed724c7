"""The re-run index of an ingest output and the journal that makes a killed run resume.

OUT/.medxfer/index.json holds the header record of every file and the cache key and result of every
item, paths only as keyed digests. While a run works, what it finishes is appended to
OUT/.medxfer/index.journal.jsonl (a chunk of header records, one item per line); the next run folds a
journal a crash left behind into the index first, so that it re-reads and re-decodes only what was not
finished. A successful run writes the index whole and removes the journal.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.files import atomic_write_json
from .cache import IMAGES_DIR, ItemResult
from .deid import Pseudonymizer
from .scan.record import FileRecord
from .scan.walker import STATE_MARK
from .series import ItemPlan

INDEX_VERSION = 2  # 2: images in hashed sub-folders (images/ab/<item_id>.nii), progress journal beside the index
STATE_DIR, INDEX_FILE = STATE_MARK.split("/")  # .medxfer/index.json: the walker knows an output by it
JOURNAL_FILE = "index.journal.jsonl"  # "index*": removed with the index when an output folder is started over


def _path_key(pseudo: Pseudonymizer, rel: str) -> str:
    return pseudo.digest("FilePath", rel)


def _record_doc(rec: FileRecord) -> dict:
    return {**rec.to_json(), "path": None}


def _result_doc(res: ItemResult, pseudo: Pseudonymizer) -> dict:
    doc = dict(vars(res))
    doc["used_files"] = [_path_key(pseudo, f) for f in res.used_files]
    doc["failed"] = {_path_key(pseudo, f): reason for f, reason in res.failed.items()}
    return doc


class IndexJournal:
    """What a running ingest finished, appended one JSON line at a time and flushed at once: a crash (even
    ``kill -9``) loses at most the line being written. Opened on first use, so an unchanged re-run writes
    nothing. The first line names the index version and the secret fingerprint the entries belong to."""

    def __init__(self, path: Path, pseudo: Pseudonymizer):
        self.path, self.pseudo = path, pseudo
        self.written = False
        self._f = None

    def __enter__(self) -> IndexJournal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def files(self, recs: list[FileRecord]) -> None:
        """Header records that are done."""
        if recs:
            self._write({"files": {_path_key(self.pseudo, r.path): _record_doc(r) for r in recs}})

    def item(self, res: ItemResult, key: str) -> None:
        """An item that is done (its image, if any, is in place)."""
        self._write({"items": {res.item_id: {"key": key, "result": _result_doc(res, self.pseudo)}}})

    def _write(self, entry: dict) -> None:
        try:
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "w", encoding="utf-8")
                self._f.write(json.dumps({"version": INDEX_VERSION,
                                          "secret_fingerprint": self.pseudo.fingerprint}) + "\n")
            self._f.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._f.flush()
        except OSError as exc:  # a failed write names no file: name the journal (a full disk says where)
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
            raise
        self.written = True

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def discard(self) -> None:
        """Remove the journal (the index holds its entries now)."""
        self.close()
        self.path.unlink(missing_ok=True)


def _replay_journal(path: Path, fingerprint: str, doc: dict) -> bool:
    """Apply a journal a crashed run left to ``doc`` (later lines win); a line cut short is skipped.
    Returns whether any entry was applied."""
    try:
        f = open(path, encoding="utf-8")
    except OSError:
        return False
    applied = False
    with f:
        head = _json_line(f.readline())
        if head.get("version") != INDEX_VERSION or head.get("secret_fingerprint") != fingerprint:
            return False  # another secret or layout: its entries mean nothing here
        for line in f:
            entry = _json_line(line)
            for part in ("files", "items"):
                if isinstance(entry.get(part), dict):
                    doc[part].update(entry[part])
                    applied = True
    return applied


def _json_line(line: str) -> dict:
    try:
        doc = json.loads(line)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def load_index(out: Path, fingerprint: str) -> dict:
    """The index of ``out`` with any journal a crash left folded in (and written back, the journal removed).
    An index of another version or secret counts as empty (a re-run then re-reads and re-decodes). The
    index file is written at once when missing: it marks ``out`` as an ingest output and names its secret."""
    state = out / STATE_DIR
    try:
        doc = json.loads((state / INDEX_FILE).read_text())
    except (OSError, ValueError):
        doc = None
    valid = (isinstance(doc, dict) and doc.get("version") == INDEX_VERSION
             and doc.get("secret_fingerprint") == fingerprint
             and isinstance(doc.get("files"), dict) and isinstance(doc.get("items"), dict))
    if not valid:  # another version or secret: other pseudonyms or layout, start afresh
        doc = {"version": INDEX_VERSION, "secret_fingerprint": fingerprint, "files": {}, "items": {}}
    folded = _replay_journal(state / JOURNAL_FILE, fingerprint, doc)
    if folded or not valid:
        state.mkdir(parents=True, exist_ok=True)
        atomic_write_json(state / INDEX_FILE, doc, indent=None)
    (state / JOURNAL_FILE).unlink(missing_ok=True)
    return doc


def save_index(out: Path, pseudo: Pseudonymizer, records: dict[str, FileRecord], results: dict[str, ItemResult],
                keys: dict[str, str]) -> None:
    """Paths are stored only as keyed digests (a folder may be named after a patient)."""
    (out / STATE_DIR).mkdir(exist_ok=True)
    items = {item_id: {"key": keys[item_id], "result": _result_doc(res, pseudo)}
             for item_id, res in results.items() if item_id in keys}
    doc = {"version": INDEX_VERSION, "secret_fingerprint": pseudo.fingerprint,
           "files": {_path_key(pseudo, rel): _record_doc(rec) for rel, rec in records.items()}, "items": items}
    atomic_write_json(out / STATE_DIR / INDEX_FILE, doc, indent=None)


def result_from_index(doc: dict, plan: ItemPlan, pseudo: Pseudonymizer) -> ItemResult:
    paths = {_path_key(pseudo, f): f for f in plan.files}
    res = ItemResult(**doc)
    res.used_files = [paths[d] for d in doc["used_files"] if d in paths]
    res.failed = {paths[d]: reason for d, reason in doc["failed"].items() if d in paths}
    return res


def prune_images(out: Path, keep: set[str]) -> None:
    """Remove cached images no manifest row points to (an item that changed or disappeared, a leftover
    ``.part`` file, an image of the flat layout of index version 1) and sub-folders left empty."""
    d = out / IMAGES_DIR
    if not d.is_dir():
        return
    for folder, _, names in os.walk(d, topdown=False):
        rel_folder = Path(os.path.relpath(folder, out)).as_posix()
        for name in names:
            if f"{rel_folder}/{name}" not in keep:
                Path(folder, name).unlink(missing_ok=True)
        if folder != str(d):
            try:
                os.rmdir(folder)  # only when empty
            except OSError:
                pass
