"""The one renderer of the report and the summary: jinja2 templates in ``templates/``.

Autoescape is on, so every string from the tables shows as text (``<script>`` included). One
stylesheet, ``templates/report.css``, goes inline into every page (no external assets). Pages:
``index.html``, ``feature.html``, ``descriptions.html`` (on ``_base.html``) and the summary's
``summary_*.html`` (on ``_summary.html``); fragments: the macros of ``_tables.html``
(the summary's tables, :mod:`circuit_insights.report.tables`) and ``_macros.html``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from circuit_insights.core.io import atomic_path
from circuit_insights.report.values import fixed, general, percent


@cache
def environment() -> jinja2.Environment:
    """The templates of the package, with the number filters ``num`` (2 decimals), ``gen``
    (3 significant digits) and ``pct`` (a share in percent); a missing number shows as a dash."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("circuit_insights.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = fixed
    env.filters["gen"] = general
    env.filters["pct"] = percent
    return env


def render_page(template: str, context: Mapping[str, Any]) -> str:
    """One page: ``template`` rendered with ``context``."""
    return environment().get_template(template).render(**context)


def write_page(path: Path, template: str, context: Mapping[str, Any]) -> Path:
    """Render a page into ``path`` (atomically); returns ``path``."""
    html = render_page(template, context)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path


def fragment(macro: str, *args: Any, template: str = "_tables.html", **kwargs: Any) -> Markup:
    """One macro of ``template`` called with ``args`` / ``kwargs``, e.g.
    ``fragment("table", tables.shares_view(shares))``."""
    module = environment().get_template(template).module
    return Markup(getattr(module, macro)(*args, **kwargs))
