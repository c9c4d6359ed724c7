"""Study report figures (issue 18): the ΔAUC forest plot lists every comparison against scratch and ImageNet with
its CI, encoder × weights heatmaps per freezing policy, the bar chart from 0 with a chance line and a full legend,
and every figure as SVG and PDF next to its PNG.

The study is fabricated in a SQLite MLflow store (no training); the forest plot's differences and CIs are checked
against an independent DeLong computation (structural components by explicit pairwise comparison)."""
from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medxfer.study import report as rep
from medxfer.study.report.figures import (FOREST_STEM, draw_bar, draw_forest, draw_heatmap, forest_rows,
                                          heatmap_groups)
from tests.study.conftest import FabricatedStudy, fabricated_store

STUDY = "figures-demo"
ENCODERS = ("resnet18", "densenet121")
FOLDS = (0, 1)
N_ITEMS = 45
# (weights, freeze) as run per encoder: scratch with freeze none only (a sparse grid: a gray heatmap cell)
SIGNAL = {("imagenet", "none"): 1.6, ("imagenet", "all"): 1.1, ("radimagenet", "none"): 1.2,
          ("radimagenet", "all"): 0.8, ("scratch", "none"): 0.3}
Z95 = NormalDist().inv_cdf(0.975)


def _delong(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> tuple[float, float]:
    """(AUC1 − AUC2, SE of the difference) by DeLong et al. (1988), written out pairwise (independent of medxfer)."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    v10, v01 = [], []
    for p in (p1, p2):
        psi = (p[pos][:, None] > p[neg][None, :]) + 0.5 * (p[pos][:, None] == p[neg][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return float(np.mean(v10[0]) - np.mean(v10[1])), float(np.sqrt(var))


@pytest.fixture(scope="module")
def study(tmp_path_factory, migrated_mlflow_db):
    """Two encoders × {imagenet, radimagenet} × freeze {none, all} plus scratch × freeze none, 2 folds, 1 seed, one
    item per patient; summarised and written. Yields the fabricated probabilities, the summary and the paths."""
    tmp = tmp_path_factory.mktemp("figures")
    with fabricated_store(tmp, migrated_mlflow_db) as client:
        fab = FabricatedStudy(client, STUDY, tmp / "staging")
        y = np.arange(N_ITEMS) % 2
        fold_of = (np.arange(N_ITEMS) // 2) % len(FOLDS)  # both classes in every fold
        rng = np.random.default_rng(5)
        probs = {}
        for enc in ENCODERS:
            for (w, freeze), signal in SIGNAL.items():
                p = np.round(1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, N_ITEMS)))), 6)
                probs[enc, w, freeze] = p
                for k in FOLDS:
                    idx = np.flatnonzero(fold_of == k)
                    rows = [{"item_id": f"item{i:03d}", "patient": f"pat{i:03d}", "fold": k, "y": int(y[i]),
                             "p_a": f"{1 - p[i]:.6f}", "p_b": f"{p[i]:.6f}", "p": f"{p[i]:.6f}"} for i in idx]
                    fab.child({"encoder": enc, "weights": w, "freeze": freeze, "lr": "0.001"}, k, 0, rows,
                              roc_auc_score(y[idx], p[idx]))
        summary = rep.summarize(rep.collect_study(STUDY), n_resamples=100)
        paths = rep.write_report(summary, tmp / "report")
        yield {"y": y, "probs": probs, "summary": summary, "paths": paths, "dir": tmp / "report"}


def _svg_texts(path) -> list[str]:
    """Every text element's content of an SVG file (parsing it as XML)."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return ["".join(e.itertext()) for e in root.iter() if e.tag.endswith("text")]


def test_forest_plot_lists_every_comparison_with_its_delong_ci(study):
    s, y, probs = study["summary"], study["y"], study["probs"]
    rows = forest_rows(s)
    # per encoder: freeze none has imagenet, radimagenet, scratch (3 pairs), freeze all imagenet, radimagenet (1)
    assert len(s.comparisons) == 8 and len(rows) == 8
    expected = set()
    for enc in ENCODERS:
        expected |= {("scratch", "imagenet", enc, "none"), ("scratch", "radimagenet", enc, "none"),
                     ("imagenet", "radimagenet", enc, "none"), ("imagenet", "radimagenet", enc, "all")}
    found = {(r.reference, r.source, re.search(r"encoder=(\w+)", r.group).group(1),
              re.search(r"freeze=(\w+)", r.group).group(1)) for r in rows}
    assert found == expected
    assert [r.reference for r in rows] == ["scratch"] * 4 + ["imagenet"] * 4  # scratch's panel first
    for r in rows:
        enc, freeze = re.search(r"encoder=(\w+)", r.group).group(1), re.search(r"freeze=(\w+)", r.group).group(1)
        diff, se = _delong(y, probs[enc, r.source, freeze], probs[enc, r.reference, freeze])
        assert r.difference == pytest.approx(diff, abs=1e-9)  # source − reference, whichever was cell A
        assert r.ci_low == pytest.approx(diff - Z95 * se, abs=1e-9)
        assert r.ci_high == pytest.approx(diff + Z95 * se, abs=1e-9)
        assert r.ci_low < r.difference < r.ci_high
    # the drawn figure shows one labelled row per comparison, and the SVG carries the labels and numbers as text
    fig = draw_forest(rows)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert sorted(labels) == sorted(r.label for r in rows) and len(set(labels)) == len(rows)
    texts = _svg_texts(study["paths"][f"figures/{FOREST_STEM}.svg"])
    for r in rows:
        assert r.label in texts
        assert f"{r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" in texts
    assert {"ΔAUC against scratch", "ΔAUC against imagenet"} <= set(texts)


def test_every_figure_has_svg_and_pdf_linked_from_both_formats(study):
    paths, folder = study["paths"], study["dir"]
    pngs = sorted(k for k in paths if k.startswith("figures/") and k.endswith(".png"))
    stems = [k.removeprefix("figures/").removesuffix(".png") for k in pngs]
    assert {"bar_classification", FOREST_STEM, "heatmap_1"} <= set(stems)
    md = (folder / "report.md").read_text()
    page = (folder / "report.html").read_text()
    for stem in stems:
        svg, pdf = folder / "figures" / f"{stem}.svg", folder / "figures" / f"{stem}.pdf"
        assert paths[f"figures/{stem}.svg"] == svg and paths[f"figures/{stem}.pdf"] == pdf
        assert _svg_texts(svg)  # valid XML with text kept as text (not glyph paths)
        assert pdf.read_bytes().startswith(b"%PDF-") and pdf.read_bytes().rstrip().endswith(b"%%EOF")
        assert f"(figures/{stem}.svg)" in md and f"(figures/{stem}.pdf)" in md
        assert f'href="figures/{stem}.svg"' in page and f'href="figures/{stem}.pdf"' in page
    # the HTML still embeds each figure once as PNG; the Markdown shows the PNGs
    assert page.count('src="data:image/png;base64,') == len(stems)
    assert sorted(re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)) == pngs


def test_bar_chart_axis_from_zero_with_chance_line_and_full_legend(study):
    s = study["summary"]
    fig = draw_bar(s.cells, "classification")
    (ax,) = fig.axes
    assert ax.get_xlim()[0] == 0.0  # the value axis (horizontal bars) starts at 0
    chance = [line for line in ax.get_lines() if np.allclose(line.get_xdata(), 0.5)]
    assert len(chance) == 1 and "chance" in chance[0].get_label()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 5
    assert any(t.startswith("scratch") for t in legend) and any(t.startswith("pretrained") for t in legend)
    assert any("CI" in t for t in legend) and any("each run" in t for t in legend) and "chance (AUC 0.5)" in legend
    # the bar lengths are the pooled out-of-fold AUCs, recomputed here
    bars = sorted(ax.patches, key=lambda b: -b.get_y())[:len(s.cells)]
    for bar, c in zip(bars, s.cells):
        g = c.grid
        assert bar.get_width() == pytest.approx(roc_auc_score(study["y"], study["probs"][g["encoder"], g["weights"],
                                                                                       g["freeze"]]), abs=1e-9)
    # segmentation: from 0 as well, no chance line
    seg = [dataclasses.replace(c, task="segmentation", metric="test_dice") for c in s.cells[:2]]
    (ax,) = draw_bar(seg, "segmentation").axes
    assert ax.get_xlim()[0] == 0.0 and not [line for line in ax.get_lines() if np.allclose(line.get_xdata(), 0.5)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]  # no scratch bar among these two: not listed
    assert all(c.grid["weights"] != "scratch" for c in seg) and len(legend) == 3
    assert not any(t.startswith("scratch") for t in legend) and "chance (AUC 0.5)" not in legend


def test_heatmap_per_freezing_policy(study):
    s, y, probs = study["summary"], study["y"], study["probs"]
    (g,) = heatmap_groups(s)
    assert g.title == "lr=0.001" and sorted(g.freezes) == ["all", "none"] and set(g.encoders) == set(ENCODERS)
    assert set(g.weights) == {"imagenet", "radimagenet", "scratch"}
    fig = draw_heatmap(g)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == [f"freeze={f}" for f in g.freezes]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == list(g.encoders)  # rows: the encoders (shared)
    for ax, freeze in zip(panels, g.freezes):
        image = ax.get_images()[0].get_array()
        assert [t.get_text() for t in ax.get_xticklabels()] == list(g.weights)
        for i, enc in enumerate(g.encoders):
            for j, w in enumerate(g.weights):
                if (w, freeze) in SIGNAL:
                    assert image[i, j] == pytest.approx(roc_auc_score(y, probs[enc, w, freeze]), abs=1e-9)
                else:  # scratch was run with freeze none only
                    assert np.ma.is_masked(image[i, j])
        shown = {t.get_text() for t in ax.texts}
        assert ("—" in shown) == (freeze == "all")
    # without a freeze key: one panel; without an encoder key, or one encoder: no heatmap
    no_freeze = dataclasses.replace(s, grid_keys=["encoder", "weights", "lr"], cells=[
        dataclasses.replace(c, grid={k: v for k, v in c.grid.items() if k != "freeze"}) for c in s.cells
        if c.grid["freeze"] == "none"])
    (g1,) = heatmap_groups(no_freeze)
    assert g1.freezes == ("",) and len([ax for ax in draw_heatmap(g1).axes if ax.get_images()]) == 1
    assert heatmap_groups(dataclasses.replace(s, grid_keys=["weights", "freeze", "lr"])) == []
    one_encoder = dataclasses.replace(s, cells=[c for c in s.cells if c.grid["encoder"] == "resnet18"])
    assert heatmap_groups(one_encoder) == []
