"""The report's sections, in the one order both formats follow: methods, cells, comparisons, pooled
comparisons (when the spec or ``--compare`` asks for them), per-class Dice (when segmentation cells score two
or more classes), lesion localization (when any cell has it), dataset similarity (when the study has it),
figures."""
from __future__ import annotations

from collections.abc import Sequence

from .document import Document, Figure, Figures, Paragraph, Section
from .model import PooledGroup, PooledSpec, StudySummary
from .prose import class_methods, loc_methods, methods, pooled_methods, provenance, similarity_methods
from .tables import (cell_table, class_cell_table, class_comparison_table, comparison_table, correlation_table,
                     loc_cell_table, loc_comparison_table, pooled_comparison_table, pooled_value_table,
                     similarity_table)

SIMILARITY_FIGURE = "similarity"  # the figure shown in the similarity section, not under Figures


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


def report_sections(s: StudySummary, figures: Sequence[Figure]) -> list[Section]:
    """The sections of the report of ``s`` in order; ``figures`` are :func:`~.figures.report_figures`."""
    sim_figs = [f for f in figures if f.stem == SIMILARITY_FIGURE]
    main_figs = [f for f in figures if f.stem != SIMILARITY_FIGURE]
    sections = [Section("Methods", (Paragraph(methods(s)),)),
                Section("Cells", (cell_table(s),)),
                Section("Comparisons", (comparison_table(s),))]
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
