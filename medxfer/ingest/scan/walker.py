"""List the files of a source folder: every regular file once, earlier ingest outputs and links out of SRC left out.

Symbolic links (to folders or to files) that stay inside SRC are followed; a folder reached twice
(a link loop, two links to one folder) is walked once. Links whose target lies outside SRC are not
followed unless ``follow_links`` is set: a link to ``/`` would otherwise walk the whole machine.
They are listed in :attr:`Walk.links` with the reason, and the report shows them as skipped
(category ``link_outside_source``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The file that marks a folder as a medxfer ingest output (OUT/.medxfer/index.json).
STATE_MARK = ".medxfer/index.json"
LINK_OUTSIDE = "link_outside_source"  # report category of a link not followed


@dataclass
class Walk:
    """The files to ingest and those seen but left out, with why."""

    files: list[str]  # every regular file to ingest, relative, sorted
    excluded: dict[str, str]  # relative path -> reason (files we saw but must not ingest, folders we could not list)
    links: dict[str, str] = field(default_factory=dict)  # links leaving SRC, not followed -> reason ("/" ends folders)


def display_path(rel: str) -> str:
    """``rel`` as text that can be written anywhere: bytes of a file name that are not UTF-8 (kept by
    Python as surrogate escapes) become backslash-x escapes, e.g. ``scan\\xff.dcm``."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _inside(real: str, root: str) -> bool:
    return real == root or os.path.commonpath([real, root]) == root


def walk(src: Path, outputs: tuple[Path, ...] = (), follow_links: bool = False) -> Walk:
    """Every file under ``src`` (depth first, names sorted), following each folder once.

    Files inside a medxfer output folder (``outputs``, or any folder holding ``.medxfer/index.json``:
    an earlier OUT placed inside SRC) are listed as excluded, never ingested; a folder that cannot
    be listed is reported as excluded too. Symbolic links that leave ``src`` are followed only with
    ``follow_links`` (still walked once each: loop detection bounds the walk), else listed in ``links``.
    """
    files: list[str] = []
    excluded: dict[str, str] = {}
    links: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    root_real = os.path.realpath(src)
    output_roots = [o.relative_to(src).as_posix() for o in outputs if o.is_relative_to(src) and o != src]
    stack: list[tuple[str, str]] = [(os.fspath(src), ".")]
    while stack:
        folder, rel_root = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already walked
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            excluded[rel_root + "/"] = f"cannot list folder: {err.strerror or type(err).__name__}"
            continue
        if os.path.isfile(os.path.join(folder, STATE_MARK)):
            output_roots.append(rel_root)
        inside_output = any(o == "." or rel_root == o or rel_root.startswith(o + "/") for o in output_roots)
        subfolders: list[tuple[str, str]] = []
        for entry in entries:
            rel = entry.name if rel_root == "." else f"{rel_root}/{entry.name}"
            try:
                is_dir = entry.is_dir()  # follows a link (a dangling link is a file that will not read)
            except OSError:
                is_dir = False
            if entry.is_symlink() and not follow_links and not _inside(os.path.realpath(entry.path), root_real):
                what = "folder" if is_dir else "file"
                links[rel + ("/" if is_dir else "")] = (
                    f"symbolic link to a {what} outside the source folder: not followed "
                    "(--follow-links follows it)")
            elif is_dir:
                subfolders.append((entry.path, rel))
            elif inside_output:
                excluded[rel] = "inside a medxfer output folder (the cache, manifest or report of an ingest)"
            else:
                files.append(rel)
        stack.extend(reversed(subfolders))
    return Walk(sorted(files), excluded, links)
