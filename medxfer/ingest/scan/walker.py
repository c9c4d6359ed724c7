"""List the files of a source folder: every regular file once, earlier ingest outputs left out."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The file that marks a folder as a medxfer ingest output (OUT/.medxfer/index.json).
STATE_MARK = ".medxfer/index.json"


@dataclass
class Walk:
    """The files to ingest and those seen but left out, with why."""

    files: list[str]  # every regular file to ingest, relative, sorted
    excluded: dict[str, str]  # relative path -> reason (files we saw but must not ingest, folders we could not list)


def walk(src: Path, outputs: tuple[Path, ...] = ()) -> Walk:
    """Every file under ``src``, following folder links once (a link loop is not walked twice).

    Files inside a medxfer output folder (``outputs``, or any folder holding ``.medxfer/index.json``:
    an earlier OUT placed inside SRC) are listed as excluded, never ingested; a folder that cannot
    be listed is reported as excluded too.
    """
    files: list[str] = []
    excluded: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    output_roots = [o.relative_to(src).as_posix() for o in outputs if o.is_relative_to(src) and o != src]

    def onerror(err: OSError) -> None:
        rel = os.path.relpath(err.filename, src) if err.filename else "?"
        excluded[Path(rel).as_posix() + "/"] = f"cannot list folder: {err.strerror or type(err).__name__}"

    for root, dirs, names in os.walk(src, followlinks=True, onerror=onerror):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already walked
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        rel_root = Path(os.path.relpath(root, src)).as_posix()
        if (Path(root) / STATE_MARK).is_file():
            output_roots.append(rel_root)
        inside_output = any(o == "." or rel_root == o or rel_root.startswith(o + "/") for o in output_roots)
        for name in names:
            rel = f"{rel_root}/{name}" if rel_root != "." else name
            if inside_output:
                excluded[rel] = "inside a medxfer output folder (the cache, manifest or report of an ingest)"
            else:
                files.append(rel)
    return Walk(sorted(files), excluded)
