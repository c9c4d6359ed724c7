"""Render a report :class:`~.document.Document` as HTML and as Markdown, from the Jinja2 templates in ``templates/``.

Both templates walk the same ordered sections, so the formats cannot drift apart. The HTML page is
self-contained (inline CSS, figures as ``data:`` URIs) and autoescaped: every value is escaped
with :func:`html.escape` unless a template marks it safe. Markdown escapes ``|`` and ``\\`` in
table cells and plain text (``md`` filter); methods paragraphs are written as they are.
"""
from __future__ import annotations

import html
from functools import lru_cache
from typing import Any

import jinja2
from markupsafe import Markup

from .document import Document

HTML_TEMPLATE = "report.html.j2"
MARKDOWN_TEMPLATE = "report.md.j2"


def _html_value(value: Any) -> Any:
    """Escape a value as :func:`html.escape` does (quotes included); markup made by the template stays as it is."""
    return value if hasattr(value, "__html__") else Markup(html.escape(str(value)))


def md_escape(text: Any) -> str:
    """Markdown-safe text for a table cell or list item: ``\\`` and ``|`` escaped, newlines as spaces."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


@lru_cache(maxsize=None)
def _environment(markup: str) -> jinja2.Environment:
    options: dict[str, Any] = dict(loader=jinja2.PackageLoader(__package__, "templates"), trim_blocks=True,
                                   lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    if markup == "html":
        return jinja2.Environment(autoescape=True, finalize=_html_value, **options)
    env = jinja2.Environment(autoescape=False, **options)
    env.filters["md"] = md_escape
    return env


def render_html(document: Document, figure_dir: str = "figures") -> str:
    """The report as one self-contained HTML page (figures embedded as PNG); each figure's caption links its vector
    files as ``<figure_dir>/<stem>.svg`` / ``.pdf``."""
    return _environment("html").get_template(HTML_TEMPLATE).render(doc=document, figure_dir=figure_dir)


def render_markdown(document: Document, figure_dir: str = "figures") -> str:
    """The report as Markdown; figures are shown as ``<figure_dir>/<stem>.png`` with links to their vector files
    (``.svg``, ``.pdf``). Ends with one newline."""
    text = _environment("markdown").get_template(MARKDOWN_TEMPLATE).render(doc=document, figure_dir=figure_dir)
    return text.rstrip("\n") + "\n"
