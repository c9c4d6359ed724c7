"""The report's figures, each as PNG, SVG and PDF: pooled metric per cell (bars), ΔAUC against scratch and
ImageNet (forest plot), encoder × weights heatmaps per freezing policy, ROC curves per group, similarity scatter.

Each figure is drawn on its own Agg canvas (no pyplot, no global backend or figure registry), so
reports can be built in threads and in processes that already use matplotlib differently. The
``draw_*`` functions return the matplotlib figure (for inspection); the ``*_figure`` functions render it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .document import Figure
from .formatting import finite, fmt3, fmt_signed
from .model import (LEVEL, SIM_HEADERS, SIM_MEASURES, CellSummary, Comparison, SimilaritySummary, StudySummary,
                    sim_measures)
from .summarize import group_description

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
SCRATCH_GRAY = "#7f7f7f"
PRETRAINED_BLUE = "#3b73b9"
SCRATCH = "scratch"
IMAGENET = "imagenet"
REFERENCES = (SCRATCH, IMAGENET)  # the forest plot's references, in its order
FOREST_STEM = "forest_auc"
# vector text stays text (SVG <text>, PDF TrueType) so a journal's editor can restyle it; fixed ids and no dates
# make the files reproducible
_VECTOR_RC = {"svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "medxfer"}


def _new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend or figure registry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, fmt: str, metadata: dict) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100, bbox_inches="tight", metadata=metadata)
    return buf.getvalue()


def render(fig, stem: str, alt: str) -> Figure:
    """``fig`` as a report :class:`~.document.Figure`: PNG (embedded in the HTML) plus SVG and PDF; clears ``fig``."""
    import matplotlib

    png = _save(fig, "png", {"Software": None})
    # rc_context: savefig reads these from the global rcParams only (restored when the block ends)
    with matplotlib.rc_context(_VECTOR_RC):
        svg = _save(fig, "svg", {"Date": None})
        pdf = _save(fig, "pdf", {"CreationDate": None})
    fig.clear()
    return Figure(stem, alt, png, svg=svg, pdf=pdf)


def cell_label(c: CellSummary) -> str:
    """A cell's name without its task prefix (``resnet18/imagenet/none/lr0.001``)."""
    return c.cell.split("/", 1)[1] if c.cell.startswith(c.task + "/") else c.cell


def _metric_words(task: str) -> tuple[str, str]:
    """(the run metric, the pooled metric) of a task in words: ``("AUC", "out-of-fold AUC")``."""
    return ("Dice", "per-case Dice") if task == "segmentation" else ("AUC", "out-of-fold AUC")


def draw_bar(cells: list[CellSummary], task: str):
    """The bar chart of :func:`bar_figure` as a matplotlib figure (not yet rendered)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = len(cells)
    metric, pooled_words = _metric_words(task)
    height = 1.6 + 0.45 * n
    fig = _new_figure(8.0, height)
    ax = fig.subplots()
    pos = np.arange(n)[::-1]
    pooled = np.array([c.pooled if finite(c.pooled) else np.nan for c in cells])
    lo = np.array([c.pooled - c.ci_low if finite(c.ci_low) else 0.0 for c in cells])
    hi = np.array([c.ci_high - c.pooled if finite(c.ci_high) else 0.0 for c in cells])
    colors = [SCRATCH_GRAY if c.grid.get("weights") == SCRATCH else PRETRAINED_BLUE for c in cells]
    ax.barh(pos, np.nan_to_num(pooled), xerr=np.vstack([np.maximum(lo, 0), np.maximum(hi, 0)]), color=colors,
            alpha=0.85, height=0.6, capsize=3, error_kw={"elinewidth": 1.2})
    rng = np.random.default_rng(0)
    for y0, c in zip(pos, cells):
        v = np.array([x for x in c.run_values if finite(x)])
        if v.size:
            ax.scatter(v, y0 + rng.uniform(-0.15, 0.15, v.size), s=14, color="black", zorder=3)
    handles = [Patch(color=color, alpha=0.85, label=f"{what}: pooled {pooled_words}")  # the bar colours shown
               for color, what in ((PRETRAINED_BLUE, "pretrained weights"), (SCRATCH_GRAY, SCRATCH)) if color in colors]
    handles += [Line2D([], [], color="black", lw=1.2, marker="|", markersize=8,
                      label=f"{int(LEVEL * 100)} % bootstrap CI of the pooled {metric}"),
               Line2D([], [], ls="", marker="o", markersize=4, color="black", label=f"test {metric} of each run "
                      "(fold × seed)")]
    if task == "classification":  # chance: an AUC of 0.5 ranks a random case of each class at random
        handles.append(ax.axvline(0.5, color="#c0392b", ls="--", lw=1.0, zorder=2, label="chance (AUC 0.5)"))
    ax.set_yticks(pos)
    ax.set_yticklabels([cell_label(c) for c in cells], fontsize=8)
    ax.set_xlabel(f"pooled {pooled_words} (bars) and test {metric} of each run (dots)")
    ax.set_xlim(0.0, 1.005)  # from 0: bar lengths compare as the values do
    ax.grid(axis="x", alpha=0.3)
    # below the x label: ~0.6 inch under the axes (which take ~77 % of the figure's height)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.6 / (0.77 * height)), ncol=2,
              fontsize=8, frameon=False)
    ax.set_title(f"{task}: pooled {metric} per cell")
    return fig


def bar_figure(cells: list[CellSummary], task: str) -> Figure:
    """Pooled metric per cell of one task with its CI, each run's test metric as dots; scratch in gray; the axis from
    0, a chance line at AUC 0.5 (classification)."""
    metric, pooled_words = _metric_words(task)
    chance = ", a dashed line at chance (AUC 0.5)" if task == "classification" else ""
    alt = (f"Bar chart of the pooled {pooled_words} of each {task} cell (axis from 0) with {int(LEVEL * 100)} % "
           f"bootstrap CI error bars and each run's test {metric} as dots{chance}")
    return render(draw_bar(cells, task), f"bar_{task}", alt)


@dataclass(frozen=True)
class ForestRow:
    """One comparison of the forest plot: ``source`` against ``reference`` in one group of cells."""

    reference: str  # "scratch" | "imagenet"
    source: str
    group: str  # the grid values but weights (group_description)
    metric: str  # "AUC" | "AUC (macro OvR)"
    difference: float  # source − reference
    ci_low: float  # Wald CI from the comparison's SE (nan when it has none)
    ci_high: float
    p_holm: float
    n_cases: int
    test: str

    @property
    def label(self) -> str:
        """``imagenet − scratch (encoder=resnet18, lr=0.001)``; the metric when it is not the binary AUC."""
        metric = "" if self.metric == "AUC" else f", {self.metric}"
        return f"{self.source} − {self.reference} ({self.group}{metric})"


def _forest_row(c: Comparison, reference: str) -> ForestRow:
    """``c`` oriented as its other source minus ``reference`` (the CI mirrored when ``reference`` is source A)."""
    flip = c.source_a == reference
    diff, lo, hi = (-c.difference, -c.ci_high, -c.ci_low) if flip else (c.difference, c.ci_low, c.ci_high)
    return ForestRow(reference=reference, source=c.source_b if flip else c.source_a, group=c.group, metric=c.metric,
                     difference=diff, ci_low=lo, ci_high=hi, p_holm=c.p_holm, n_cases=c.n_cases, test=c.test)


def forest_rows(s: StudySummary) -> list[ForestRow]:
    """The forest plot's rows: every AUC comparison of a source against scratch, then every other one against
    ImageNet (ImageNet − scratch is listed once, against scratch), each as source − reference."""
    auc = [c for c in s.comparisons if c.task == "classification"]
    rows = [_forest_row(c, SCRATCH) for c in auc if SCRATCH in (c.source_a, c.source_b)]
    rows += [_forest_row(c, IMAGENET) for c in auc
             if IMAGENET in (c.source_a, c.source_b) and SCRATCH not in (c.source_a, c.source_b)]
    return rows


def _ci_text(r: ForestRow) -> str:
    if not finite(r.difference):
        return f"n/a: {r.test}"
    ci = f"[{fmt_signed(r.ci_low)}, {fmt_signed(r.ci_high)}]" if finite(r.ci_low) else "(no CI)"
    return f"{fmt_signed(r.difference)} {ci}"


def draw_forest(rows: list[ForestRow]):
    """The forest plot of :func:`forest_figure` as a matplotlib figure (not yet rendered); needs a row."""
    from matplotlib.transforms import blended_transform_factory

    panels = [(ref, [r for r in rows if r.reference == ref]) for ref in REFERENCES]
    panels = [(ref, rs) for ref, rs in panels if rs]
    fig = _new_figure(9.0, 1.0 + 0.9 * len(panels) + 0.32 * len(rows))
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True,
                        gridspec_kw={"height_ratios": [len(rs) + 1 for _, rs in panels]})[:, 0]
    ends = [x for r in rows for x in (r.difference, r.ci_low, r.ci_high) if finite(x)] or [0.0]
    reach = max(0.05, max(abs(x) for x in ends) * 1.1)
    for ax, (ref, rs) in zip(axes, panels):
        pos = np.arange(len(rs))[::-1]
        for y0, r in zip(pos, rs):
            if finite(r.difference):
                err = None
                if finite(r.ci_low) and finite(r.ci_high):
                    err = np.array([[r.difference - r.ci_low], [r.ci_high - r.difference]])
                ax.errorbar([r.difference], [y0], xerr=err, fmt="s", color="black", markersize=5, capsize=3,
                            elinewidth=1.2)
        ax.axvline(0.0, color="#888888", ls="--", lw=0.9)
        ax.set_yticks(pos)
        ax.set_yticklabels([r.label for r in rs], fontsize=8)
        ax.set_ylim(-0.7, len(rs) - 0.3)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"ΔAUC against {ref}", fontsize=9, loc="left")
        right = blended_transform_factory(ax.transAxes, ax.transData)
        for y0, r in zip(pos, rs):  # the numbers next to each row, as a forest plot's table column
            ax.text(1.02, y0, _ci_text(r), transform=right, va="center", fontsize=8)
    axes[-1].set_xlim(-reach, reach)
    axes[-1].set_xlabel(f"ΔAUC (source − reference) with {int(LEVEL * 100)} % CI (DeLong SE; paired bootstrap SE "
                        "for macro OvR AUC); right of 0: the source is better")
    return fig


def forest_figure(rows: list[ForestRow]) -> Figure:
    """ΔAUC of every source against scratch and against ImageNet (:func:`forest_rows`) with its CI, one row per
    comparison, a panel per reference."""
    alt = (f"Forest plot of the AUC difference (with {int(LEVEL * 100)} % CI) of each weights source against scratch "
           "and against ImageNet, one row per comparison of cells equal in every grid key but weights")
    return render(draw_forest(rows), FOREST_STEM, alt)


@dataclass(frozen=True)
class HeatmapGroup:
    """The cells of one heatmap figure: one task and one combination of the grid keys other than encoder, weights and
    freeze; a panel per freezing policy (one panel when the grid has no ``freeze`` key)."""

    task: str
    title: str
    encoders: tuple[str, ...]
    weights: tuple[str, ...]
    freezes: tuple[str, ...]  # ("",) without a freeze key
    cells: tuple[CellSummary, ...]

    def value(self, encoder: str, weights: str, freeze: str) -> float:
        """The pooled metric of that cell (nan when the grid has no such cell)."""
        for c in self.cells:
            if (c.grid.get("encoder"), c.grid.get("weights"), c.grid.get("freeze", "")) == (encoder, weights, freeze):
                return c.pooled if finite(c.pooled) else float("nan")
        return float("nan")


def heatmap_groups(s: StudySummary) -> list[HeatmapGroup]:
    """The encoder × weights heatmaps of ``s``: none unless the grid has ``encoder`` and ``weights`` keys; one per
    task and combination of the other grid keys (but ``freeze``) with two or more encoders and weights sources."""
    if not {"encoder", "weights"} <= set(s.grid_keys):
        return []
    tasks = {c.task for c in s.cells}
    by_rest: dict[tuple, list[CellSummary]] = {}
    for c in s.cells:
        rest = tuple((k, v) for k, v in c.grid.items() if k not in ("encoder", "weights", "freeze"))
        by_rest.setdefault((c.task, rest), []).append(c)
    out = []
    for (task, rest), members in by_rest.items():
        encoders = tuple(dict.fromkeys(c.grid["encoder"] for c in members))
        weights = tuple(dict.fromkeys(c.grid["weights"] for c in members))
        if len(encoders) < 2 or len(weights) < 2:  # a single row or column: the bar chart shows it as well
            continue
        freezes = tuple(dict.fromkeys(c.grid.get("freeze", "") for c in members))
        out.append(HeatmapGroup(task, group_description(task, dict(rest), tasks), encoders, weights, freezes,
                                tuple(members)))
    return out


def draw_heatmap(g: HeatmapGroup):
    """The heatmap of :func:`heatmap_figure` as a matplotlib figure (not yet rendered)."""
    metric, pooled_words = _metric_words(g.task)
    n = len(g.freezes)
    fig = _new_figure(2.4 + (0.9 * len(g.weights) + 0.3) * n, 2.0 + 0.5 * len(g.encoders))
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    grids = [np.array([[g.value(e, w, f) for w in g.weights] for e in g.encoders]) for f in g.freezes]
    values = np.concatenate([m.ravel() for m in grids])
    values = values[np.isfinite(values)]
    vmin, vmax = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if vmax - vmin < 1e-3:
        vmin, vmax = vmin - 0.01, vmax + 0.01
    image = None
    for ax, freeze, m in zip(axes, g.freezes, grids):
        image = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_facecolor("#eeeeee")  # cells the grid does not have
        for i in range(len(g.encoders)):
            for j in range(len(g.weights)):
                v = m[i, j]
                dark = finite(v) and (v - vmin) / (vmax - vmin) < 0.55  # viridis is dark at its low end
                ax.text(j, i, fmt3(v) if finite(v) else "—", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(g.weights)))
        ax.set_xticklabels(g.weights, fontsize=8, rotation=30, ha="right")
        ax.set_yticks(range(len(g.encoders)))
        ax.set_yticklabels(g.encoders, fontsize=8)
        ax.tick_params(axis="y", labelleft=ax is axes[0])  # the encoders once, left of the first panel
        ax.set_xlabel("weights", fontsize=9)
        ax.set_title(f"freeze={freeze}" if freeze else "", fontsize=9)
    axes[0].set_ylabel("encoder", fontsize=9)
    fig.colorbar(image, ax=list(axes), shrink=0.9, label=f"pooled {pooled_words}")
    fig.suptitle(f"{g.title}: pooled {metric}", fontsize=10, y=1.0 + 0.25 / (2.0 + 0.5 * len(g.encoders)))
    return fig


def heatmap_figure(index: int, g: HeatmapGroup) -> Figure:
    """Encoder × weights heatmap of the pooled metric of one group, a panel per freezing policy."""
    _, pooled_words = _metric_words(g.task)
    per = " per freezing policy" if g.freezes != ("",) else ""
    alt = (f"Heatmap of the pooled {pooled_words} of each encoder (rows) and weights source (columns){per} for "
           f"{g.title}; gray: no such cell")
    return render(draw_heatmap(g), f"heatmap_{index}", alt)


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
    return render(fig, f"roc_{index}", alt)


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
    return render(fig, "similarity", alt)


CALIBRATION_STEM = "calibration"


def draw_calibration(cells: list[CellSummary]):
    """The reliability diagram of :func:`calibration_figure` as a matplotlib figure (not yet rendered)."""
    fig = _new_figure(6.0, 5.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1.0, label="perfect calibration")
    for i, c in enumerate(cells):
        mean_pred, frac_pos, _ = zip(*c.calibration)
        brier = f", Brier {c.brier:.3f}" if finite(c.brier) else ""
        color = SCRATCH_GRAY if c.grid.get("weights") == SCRATCH else PALETTE[i % len(PALETTE)]
        ax.plot(mean_pred, frac_pos, marker="o", markersize=4, lw=1.2, color=color, label=f"{cell_label(c)}{brier}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("mean predicted P(class 1) in the bin")
    ax.set_ylabel("fraction of class 1 in the bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    ax.set_title("calibration (10 equal-width bins, folds and seeds pooled)")
    return fig


def calibration_figure(cells: list[CellSummary]) -> Figure:
    """Reliability diagram of every binary cell with calibration bins, its Brier score in the legend."""
    alt = ("Calibration plot: fraction of class 1 against the mean predicted probability per bin, one line per "
           "binary cell with its Brier score, the diagonal as perfect calibration")
    return render(draw_calibration(cells), CALIBRATION_STEM, alt)


def report_figures(s: StudySummary) -> list[Figure]:
    """Every figure of a report, in order: bars per task, the ΔAUC forest plot, encoder × weights heatmaps, ROC per
    group of classification cells, similarity, calibration of the binary cells."""
    figs: list[Figure] = []
    for task in ("classification", "segmentation"):
        cells = [c for c in s.cells if c.task == task]
        if cells:
            figs.append(bar_figure(cells, task))
    rows = forest_rows(s)
    if rows:
        figs.append(forest_figure(rows))
    figs += [heatmap_figure(i, g) for i, g in enumerate(heatmap_groups(s), 1)]
    tasks = {c.task for c in s.cells}
    groups: dict[tuple, list[CellSummary]] = {}
    for c in s.cells:
        if c.task == "classification" and c.roc is not None:
            groups.setdefault(tuple((k, v) for k, v in c.grid.items() if k != "weights"), []).append(c)
    # one colour per weights source across all ROC figures (scratch gray, as in the bar chart)
    sources = list(dict.fromkeys(c.grid.get("weights", "") for c in s.cells if c.grid.get("weights") != SCRATCH))
    colors = {w: PALETTE[i % len(PALETTE)] for i, w in enumerate(sources)} | {SCRATCH: SCRATCH_GRAY}
    for i, members in enumerate(groups.values(), 1):
        figs.append(roc_figure(i, group_description("classification", members[0].grid, tasks), members, colors))
    if s.similarity is not None and s.similarity.rows:
        figs.append(similarity_figure(s.similarity))
    calibrated = [c for c in s.cells if c.calibration]
    if calibrated:
        figs.append(calibration_figure(calibrated))
    return figs
