"""Study report rendering: one ordered list of sections drives both the HTML and the Markdown
(Jinja2 templates shipped with the package); HTML escapes every value, Markdown escapes table cells."""
from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pytest

from medxfer.study.report import ChildRun, Localization, StudyRuns, summarize, write_report
from medxfer.study.report.document import Document, Figure, Figures, Paragraph, Section, Table
from medxfer.study.report.render import render_html, render_markdown
from medxfer.study.report.sections import report_document, report_sections

EVIL = '<script>alert("x")</script> & \'q\' | pipe'
PNG = b"\x89PNG\r\n\x1a\nnot-really-a-png"


def _runs(with_loc: bool, similarity: dict | None, weights=("imagenet", "scratch"), name: str = "render") -> StudyRuns:
    """Two cells (one per weights source) × two folds of a small binary study, optionally with localization."""
    rng = np.random.default_rng(0)
    n = 24
    ids = [f"i{i:02d}" for i in range(n)]
    y = np.arange(n) % 2
    runs = []
    for w, signal in zip(weights, (1.5, 0.2)):
        p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
        cell = f"classification/{EVIL}/{w}"
        for k in (0, 1):
            idx = np.flatnonzero((np.arange(n) // 2) % 2 == k)
            run = ChildRun(run_id=f"r{w}{k}", name=f"{cell}/fold{k}", cell=cell, task="classification",
                           grid={"encoder": EVIL, "weights": w}, fold=str(k), seed="0", metric=0.7,
                           item_id=np.array([ids[i] for i in idx], dtype=object), y=y[idx],
                           prob=np.c_[1 - p[idx], p[idx]])
            if with_loc:
                sc = [i for i in idx if y[i] == 1]
                dice = rng.uniform(0, 1, len(sc))
                run.loc = Localization(item_id=np.array([ids[i] for i in sc], dtype=object),
                                       hit=(rng.random(len(sc)) < 0.5).astype(float), dice=dice, iou=dice / (2 - dice))
            runs.append(run)
    return StudyRuns(name, None, None, ["encoder", "weights"], runs, notes=[f"note: {EVIL}"], similarity=similarity)


SIMILARITY = {"encoder": "resnet18", "weights": "scratch", "image_size": 64, "target": {"n": 24},
              "sources": {"imagenet": {"frechet": 3.0, "mmd2": 0.01, "intensity": 0.2, "n": 10}}}


def _summary(with_loc: bool = True, similarity: dict | None = SIMILARITY, name: str = "render"):
    s = summarize(_runs(with_loc, similarity, name=name), n_resamples=50)
    s.created = "2000-01-01 00:00 UTC"
    return s


def _figures() -> list[Figure]:
    return [Figure("bar_classification", "bars", PNG), Figure("roc_1", "roc", PNG),
            Figure("similarity", "scatter", PNG)]


def _html_headings(page: str) -> list[tuple[int, str]]:
    return [(int(level), title) for level, title in re.findall(r"<h([23])(?: id=\"[^\"]*\")?>([^<]*)</h\1>", page)]


def _md_headings(md: str) -> list[tuple[int, str]]:
    return [(len(hashes), title) for hashes, title in re.findall(r"^(#{2,3}) (.*)$", md, re.M)]


def _outline(sections) -> list[tuple[int, str]]:
    out = []
    for s in sections:
        out.append((s.level, s.title))
        out += _outline([b for b in s.blocks if isinstance(b, Section)])
    return out


def test_templates_ship_with_the_package():
    templates = resources.files("medxfer.study.report") / "templates"
    for name in ("report.html.j2", "report.md.j2", "report.css"):
        assert (templates / name).is_file(), name


@pytest.mark.parametrize("with_loc, similarity", [(True, SIMILARITY), (False, None)])
def test_html_and_markdown_follow_the_same_sections(with_loc, similarity):
    s = _summary(with_loc, similarity)
    sections = report_sections(s, _figures())
    expected = ["Methods", "Methods (paste-ready)", "Cohort", "Cells", "Comparisons",
                *(["Lesion localization (Grad-CAM)", "Localization comparisons"] if with_loc else []),
                *(["Dataset similarity and transfer", "Spearman correlation with the transfer score"]
                  if similarity else []),
                "Figures"]
    assert [title for _, title in _outline(sections)] == expected
    doc = report_document(s, _figures())
    page, md = render_html(doc), render_markdown(doc)
    assert _html_headings(page) == _md_headings(md) == _outline(sections)
    # the same tables in the same order: HTML by id, Markdown by header row
    tables = [b for sec in sections for b in _blocks(sec) if isinstance(b, Table)]
    assert re.findall(r'<table id="([^"]+)">', page) == [t.table_id for t in tables]
    assert len(re.findall(r"^\|(?:---:?\|)+$", md, re.M)) == len(tables)
    # figures: the similarity scatter in its section, the others under Figures; each once in each format
    assert page.count('<img class="figure"') == len(re.findall(r"!\[[^\]]*\]\(figures/", md)) == (
        3 if similarity else 2)
    assert page.index('id="fig-roc_1"') > page.index("<h2>Figures</h2>")
    if similarity:
        assert page.index('id="fig-similarity"') < page.index("<h2>Figures</h2>")
        assert md.index("(figures/similarity.png)") < md.index("## Figures")
    assert md.endswith("\n") and not md.endswith("\n\n")
    assert page.endswith("</body></html>\n")


def _blocks(section: Section):
    for b in section.blocks:
        yield b
        if isinstance(b, Section):
            yield from _blocks(b)


def test_the_section_list_alone_decides_the_order():
    """Templates hard-code no section: a document's sections render in the order given, in both formats."""
    table = Table("t1", ("Name", "Runs"), (("a|b", "3"),), (False, True))
    sections = (Section("Zeta", (Paragraph("last first"),)),
                Section("Alpha", (table, Section("Sub", (Figures((Figure("roc_9", "alt", PNG),)),), level=3)),
                        anchor="alpha"),
                Section("Empty table", (Table("t2", ("X", "Y", "Z"), (), (False, False, False)),)))
    doc = Document("doc", ("line one",), sections)
    page, md = render_html(doc), render_markdown(doc, "figs")
    order = [(2, "Zeta"), (2, "Alpha"), (3, "Sub"), (2, "Empty table")]
    assert _html_headings(page) == _md_headings(md) == order
    assert '<h2 id="alpha">Alpha</h2>' in page
    assert '<td>a|b</td><td class="num">3</td>' in page and "| a\\|b | 3 |" in md
    assert "|---|---:|" in md and "![alt](figs/roc_9.png)" in md
    assert '<tr><td colspan="3">none</td></tr>' in page and "| none |  |  |" in md


def test_html_escapes_every_value_and_markdown_its_table_cells(tmp_path):
    s = _summary(name=EVIL)
    paths = write_report(s, tmp_path / "out")
    page = paths["report.html"].read_text(encoding="utf-8")
    md = paths["report.md"].read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "alert(\"x\")" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27; | pipe"
    assert f"<title>medxfer study report: {escaped}</title>" in page
    assert f"<h1>Study report: {escaped}</h1>" in page
    assert f"note: {escaped}" in page  # provenance notes
    assert f'<td>{escaped}</td>' in page  # grid values in tables
    assert re.search(r'<tr data-cell="classification/' + re.escape(escaped) + '/imagenet">', page)  # attributes
    assert "&quot;Cats, not CAT scans&quot;" in page  # prose is escaped too
    # markup of the template itself is not escaped
    assert page.count("<table id=") == 7 and "&lt;table" not in page and "<br>" in page  # 6 + the cohort
    # Markdown: pipes and backslashes escaped in the title, list items and table cells; no HTML escaping
    assert md.startswith('# Study report: <script>alert("x")</script> & \'q\' \\| pipe\n')
    assert '- note: <script>alert("x")</script> & \'q\' \\| pipe\n' in md
    assert '| classification | <script>alert("x")</script> & \'q\' \\| pipe | imagenet |' in md
    assert "&lt;" not in md and "&amp;" not in md
