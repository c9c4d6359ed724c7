"""The report's sections, in the one order both formats follow: methods, cells, comparisons, pooled
comparisons (when the spec or ``--compare`` asks for them), per-class Dice (when segmentation cells score two
or more classes), lesion localization (when any cell has it), dataset similarity (when the study has it),
figures."""
from __future__ import annotations

from collections.abc import Sequence

from .document import Document, Figure, Figures, Paragraph, Section
from .figures import CALIBRATION_STEM, FOREST_STEM
from .model import PooledGroup, PooledSpec, StudySummary
from .prose import (class_methods, clinical_methods, loc_methods, methods, paste_ready_methods, pooled_methods,
                    provenance, similarity_methods)
from .tables import (cell_table, class_cell_table, class_comparison_table, clinical_table, cohort_table,
                     comparison_table, confusion_table, correlation_table, loc_cell_table, loc_comparison_table,
                     pooled_comparison_table, pooled_value_table, similarity_table)

SIMILARITY_FIGURE = "similarity"  # the figure shown in the similarity section, not under Figures
FOREST_FIGURE = FOREST_STEM  # the ΔAUC forest plot, shown under the comparisons table, not under Figures


def _localization(s: StudySummary) -> Section:
    blocks: list = [Paragraph(loc_methods(s)), loc_cell_table(s)]
    if s.loc_comparisons:
        blocks.append(Section("Localization comparisons", (loc_comparison_table(s),), level=3))
    return Section("Lesion localization (Grad-CAM)", tuple(blocks), anchor="localization-section")


def _pooled(s: StudySummary) -> Section:
    """One subsection per pooled comparison: the values' mean ± SD, then the tests of their pairs."""
    by_spec: dict[PooledSpec, list[PooledGroup]] = {}
    for g in s.pooled:
        by_spec.setdefault(g.spec, []).append(g)
    blocks: list = [Paragraph(pooled_methods(s, list(by_spec)))]
    for i, (spec, groups) in enumerate(by_spec.items(), start=1):
        blocks.append(Section(spec.label[0].upper() + spec.label[1:],
                              (pooled_value_table(groups, f"pooled-{i}"),
                               pooled_comparison_table(groups, f"pooled-{i}-tests")), level=3))
    return Section("Pooled comparisons", tuple(blocks), anchor="pooled-section")


def _classes(s: StudySummary) -> Section:
    blocks: list = [Paragraph(class_methods(s)), class_cell_table(s)]
    if s.class_comparisons:
        blocks.append(Section("Per-class comparisons", (class_comparison_table(s),), level=3))
    return Section("Per-class Dice", tuple(blocks), anchor="classes-section")


def _similarity(s: StudySummary, figures: Sequence[Figure]) -> Section:
    spearman = Section("Spearman correlation with the transfer score", (correlation_table(s),), level=3)
    return Section("Dataset similarity and transfer",
                   (Paragraph(similarity_methods(s)), similarity_table(s), spearman, Figures(tuple(figures))),
                   anchor="similarity-section")


def _cohort(s: StudySummary) -> Section:
    """Tested patients, items and classes per test fold and overall, one table per task."""
    several = len(s.cohort) > 1
    blocks = tuple(Section(c.task.capitalize(), (cohort_table(c, f"cohort-{c.task}"),), level=3) if several
                   else cohort_table(c) for c in s.cohort)
    return Section("Cohort", blocks, anchor="cohort-section")


def _clinical(s: StudySummary, figures: Sequence[Figure] = ()) -> Section | None:
    """Binary cells at their validation operating points; confusion counts of multi-class cells; ``figures``
    (calibration) under them. None when no binary cell has an operating point and no cell more than two classes."""
    binary = any(c.clinical is not None for c in s.cells)  # runs without a validation threshold: notes say so
    multi = any(c.task == "classification" and c.n_classes not in (None, 2) and c.confusion for c in s.cells)
    if not binary and not multi:
        return None
    blocks: list = [Paragraph(clinical_methods(s))]
    if binary:
        blocks.append(clinical_table(s))
    if multi:
        blocks.append(Section("Confusion counts (more than two classes, argmax)", (confusion_table(s),), level=3))
    if figures:
        blocks.append(Figures(tuple(figures)))
    return Section("Clinical metrics at the validation operating point", tuple(blocks), anchor="clinical-section")


def _paste_ready(s: StudySummary) -> Section:
    return Section("Methods (paste-ready)", tuple(Paragraph(text) for text in paste_ready_methods(s)),
                   anchor="methods-paste-ready")


def report_sections(s: StudySummary, figures: Sequence[Figure]) -> list[Section]:
    """The sections of the report of ``s`` in order; ``figures`` are :func:`~.figures.report_figures`."""
    sim_figs = [f for f in figures if f.stem == SIMILARITY_FIGURE]
    forest_figs = [f for f in figures if f.stem == FOREST_FIGURE]
    calibration_figs = [f for f in figures if f.stem == CALIBRATION_STEM]
    main_figs = [f for f in figures if f.stem not in (SIMILARITY_FIGURE, FOREST_FIGURE, CALIBRATION_STEM)]
    sections = [Section("Methods", (Paragraph(methods(s)),)), _paste_ready(s),
                *([_cohort(s)] if s.cohort else []),
                Section("Cells", (cell_table(s),)),
                Section("Comparisons", (comparison_table(s), *([Figures(tuple(forest_figs))] if forest_figs else [])))]
    clinical = _clinical(s, calibration_figs)
    if clinical is not None:
        sections.append(clinical)
    else:  # no operating point to report: the calibration plot stays with the other figures
        main_figs += calibration_figs
    if s.pooled:
        sections.append(_pooled(s))
    if s.class_cells:
        sections.append(_classes(s))
    if s.loc_cells:
        sections.append(_localization(s))
    if s.similarity is not None:
        sections.append(_similarity(s, sim_figs))
    sections.append(Section("Figures", (Figures(tuple(main_figs)),)))
    return sections


def report_document(s: StudySummary, figures: Sequence[Figure]) -> Document:
    """The whole report of ``s``: its title, provenance lines and :func:`report_sections`."""
    return Document(title=s.name, provenance=tuple(provenance(s)), sections=tuple(report_sections(s, figures)))
