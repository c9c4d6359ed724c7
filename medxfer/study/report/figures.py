"""The report's figures as PNG bytes: pooled metric per cell (bars), ROC curves per group, similarity scatter.

Each figure is drawn on its own Agg canvas (no pyplot, no global backend or figure registry), so
reports can be built in threads and in processes that already use matplotlib differently.
"""
from __future__ import annotations

import io

import numpy as np

from .document import Figure
from .formatting import finite
from .model import SIM_HEADERS, SIM_MEASURES, CellSummary, SimilaritySummary, StudySummary, sim_measures
from .summarize import group_description

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
SCRATCH_GRAY = "#7f7f7f"


def _new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend or figure registry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    fig.clear()
    return buf.getvalue()


def cell_label(c: CellSummary) -> str:
    """A cell's name without its task prefix (``resnet18/imagenet/none/lr0.001``)."""
    return c.cell.split("/", 1)[1] if c.cell.startswith(c.task + "/") else c.cell


def bar_figure(cells: list[CellSummary], task: str) -> Figure:
    """Pooled metric per cell of one task with its CI, each run's test metric as dots; scratch in gray."""
    n = len(cells)
    fig = _new_figure(8.0, 1.2 + 0.45 * n)
    ax = fig.subplots()
    pos = np.arange(n)[::-1]
    pooled = np.array([c.pooled if finite(c.pooled) else np.nan for c in cells])
    lo = np.array([c.pooled - c.ci_low if finite(c.ci_low) else 0.0 for c in cells])
    hi = np.array([c.ci_high - c.pooled if finite(c.ci_high) else 0.0 for c in cells])
    colors = ["#9e9e9e" if c.grid.get("weights") == "scratch" else "#3b73b9" for c in cells]
    ax.barh(pos, np.nan_to_num(pooled), xerr=np.vstack([np.maximum(lo, 0), np.maximum(hi, 0)]), color=colors,
            alpha=0.85, height=0.6, capsize=3, error_kw={"elinewidth": 1.2}, label="pooled (95 % CI)")
    rng = np.random.default_rng(0)
    label = "per run (fold × seed)"
    for y0, c in zip(pos, cells):
        v = np.array([x for x in c.run_values if finite(x)])
        if v.size:
            ax.scatter(v, y0 + rng.uniform(-0.15, 0.15, v.size), s=14, color="black", zorder=3, label=label)
            label = None
    ax.set_yticks(pos)
    ax.set_yticklabels([cell_label(c) for c in cells], fontsize=8)
    metric = "Dice" if task == "segmentation" else "AUC"
    ax.set_xlabel(f"pooled {'per-case Dice' if task == 'segmentation' else 'out-of-fold AUC'}; dots: test {metric} "
                  "of each run")
    values = [x for c in cells for x in [c.pooled, c.ci_low, *c.run_values] if finite(x)]
    left = min(0.5 if task == "classification" else 0.0, min(values, default=0.0) - 0.02)
    ax.set_xlim(max(0.0, left), 1.005)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5 / (1.2 + 0.45 * n) - 0.12), ncol=2, fontsize=8,
              frameon=False)
    ax.set_title(f"{task}: pooled {metric} per cell")
    alt = (f"Bar chart of the pooled {'per-case Dice' if task == 'segmentation' else 'out-of-fold AUC'} of each "
           f"{task} cell with 95 % bootstrap CI error bars and each run's test {metric} as dots")
    return Figure(f"bar_{task}", alt, _png(fig))


def roc_figure(index: int, group: str, cells: list[CellSummary], colors: dict[str, str]) -> Figure:
    """ROC curves of the pooled out-of-fold predictions of one group's cells, one colour per weights source."""
    fig = _new_figure(4.6, 4.6)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#888888")
    for c in cells:
        fpr, tpr = c.roc
        source = c.grid.get("weights", cell_label(c))
        ax.plot(fpr, tpr, lw=1.6, color=colors.get(source), label=f"{source} (AUC {c.pooled:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(group, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    alt = f"ROC curves of the pooled out-of-fold predictions per weights source for {group}"
    return Figure(f"roc_{index}", alt, _png(fig))


def similarity_figure(sim: SimilaritySummary) -> Figure:
    """Distance vs transfer score, one panel per distance, points labelled with the source."""
    measures = sim_measures(sim.rows) or SIM_MEASURES  # a distance no source has (older records: Task2Vec): no panel
    fig = _new_figure(4.0 * len(measures), 4.0)
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    groups = list(dict.fromkeys(r.group for r in sim.rows))
    corr = {(c.group, c.measure): c for c in sim.correlations}
    for ax, (measure, label) in zip(axes, measures):
        texts = []
        for gi, g in enumerate(groups):
            rs = [r for r in sim.rows if r.group == g and finite(getattr(r, measure)) and finite(r.transfer_score)]
            x = [getattr(r, measure) for r in rs]
            y = [r.transfer_score for r in rs]
            ax.scatter(x, y, s=32, color=PALETTE[gi % len(PALETTE)], zorder=3,
                       label=g if len(groups) > 1 and measure == measures[0][0] else None)
            for r, xi, yi in zip(rs, x, y):
                ax.annotate(r.source, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
            c = corr.get((g, measure))
            if c is not None:
                texts.append(c.note or f"ρ = {c.rho:+.2f}, n = {c.n}")
        ax.axhline(0.0, color="#888888", lw=0.8, ls="--")
        ax.set_xlabel(f"{label} (smaller = more similar)", fontsize=9)
        ax.set_title("; ".join(texts) if len(groups) == 1 else SIM_HEADERS[measure], fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.15)
    axes[0].set_ylabel("transfer score (%)")
    if len(groups) > 1:
        fig.legend(loc="lower center", ncol=min(len(groups), 3), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.08))
    named = ", ".join(label for _, label in measures)
    alt = (f"Scatter plots of each pretrained source's distance to the study cohort ({named}; smaller = more similar)"
           " against its transfer score over scratch, points labelled with the source")
    return Figure("similarity", alt, _png(fig))


def report_figures(s: StudySummary) -> list[Figure]:
    """Every figure of a report, in order: bars per task, ROC per group of classification cells, similarity."""
    figs: list[Figure] = []
    for task in ("classification", "segmentation"):
        cells = [c for c in s.cells if c.task == task]
        if cells:
            figs.append(bar_figure(cells, task))
    tasks = {c.task for c in s.cells}
    groups: dict[tuple, list[CellSummary]] = {}
    for c in s.cells:
        if c.task == "classification" and c.roc is not None:
            groups.setdefault(tuple((k, v) for k, v in c.grid.items() if k != "weights"), []).append(c)
    # one colour per weights source across all ROC figures (scratch gray, as in the bar chart)
    sources = list(dict.fromkeys(c.grid.get("weights", "") for c in s.cells if c.grid.get("weights") != "scratch"))
    colors = {w: PALETTE[i % len(PALETTE)] for i, w in enumerate(sources)} | {"scratch": SCRATCH_GRAY}
    for i, members in enumerate(groups.values(), 1):
        figs.append(roc_figure(i, group_description("classification", members[0].grid, tasks), members, colors))
    if s.similarity is not None and s.similarity.rows:
        figs.append(similarity_figure(s.similarity))
    return figs
