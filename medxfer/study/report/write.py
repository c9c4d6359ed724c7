"""Write a summarised study's report files into a folder: HTML, Markdown with its figures (PNG, SVG, PDF), CSVs."""
from __future__ import annotations

import os
import re
from pathlib import Path

from ...core.files import atomic_write
from .csv_export import (write_calibration_csv, write_cohort_csv, write_comparisons_csv, write_results_csv,
                         write_similarity_csvs)
from .figures import report_figures
from .model import StudySummary
from .render import render_html, render_markdown
from .sections import report_document

FIGURE_DIR = "figures"
# the figure files a report writes, by name
_FIG_NAME = re.compile(r"^(bar_[a-z]+|forest_auc|heatmap_\d+|roc_\d+|similarity|calibration)\.(png|svg|pdf)$")
SIMILARITY_CSVS = ("similarity.csv", "similarity_spearman.csv")


def write_report(summary: StudySummary, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.html`` (self-contained; it links the vector files), ``report.md`` with ``figures/*.png`` and
    each figure's ``.svg`` and ``.pdf`` next to its PNG, ``results.csv``
    and ``comparisons.csv``, ``cohort.csv`` (counts per fold) and ``calibration.csv`` (binary cells) — and, with a
    similarity section, ``similarity.csv`` and ``similarity_spearman.csv`` — into ``out_dir``; returns {path relative
    to out_dir: path}."""
    out = Path(out_dir)
    fig_dir = out / FIGURE_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.iterdir():  # figures of an earlier report of this folder (only our own names)
        if old.is_file() and _FIG_NAME.match(old.name):
            old.unlink()
    figs = report_figures(summary)
    document = report_document(summary, figs)
    paths: dict[str, Path] = {
        "report.html": atomic_write(out / "report.html", render_html(document, FIGURE_DIR)),
        "report.md": atomic_write(out / "report.md", render_markdown(document, FIGURE_DIR)),
        "results.csv": out / "results.csv",
        "comparisons.csv": out / "comparisons.csv",
    }
    write_results_csv(summary, paths["results.csv"])
    write_comparisons_csv(summary, paths["comparisons.csv"])
    calibrated = any(c.calibration for c in summary.cells)
    for name, write, has_rows in (("cohort.csv", write_cohort_csv, bool(summary.cohort)),
                                  ("calibration.csv", write_calibration_csv, calibrated)):
        if has_rows:
            paths[name] = out / name
            write(summary, paths[name])
        else:  # of an earlier report of this folder
            (out / name).unlink(missing_ok=True)
    if summary.similarity is not None:
        write_similarity_csvs(summary, *(out / n for n in SIMILARITY_CSVS))
        paths.update({n: out / n for n in SIMILARITY_CSVS})
    else:  # of an earlier report of this folder
        for n in SIMILARITY_CSVS:
            (out / n).unlink(missing_ok=True)
    for f in figs:
        paths[f"{FIGURE_DIR}/{f.stem}.png"] = atomic_write(fig_dir / f"{f.stem}.png", f.png)
        for fmt in f.vector_formats:
            paths[f"{FIGURE_DIR}/{f.stem}.{fmt}"] = atomic_write(fig_dir / f"{f.stem}.{fmt}", getattr(f, fmt))
    return paths
