"""How numbers are shown on the pages: one format for "value [95% CI]", one metric table, and
one way of drawing a table so that it fits the page.

Every chapter prints a metric with its interval as ``0.283 [0.259, 0.304]`` in one cell
(:meth:`helpers.analysis.estimate.Estimate.format`; :func:`fmt_ci` for a bare value), and
reads its metrics against the reference scorers of :mod:`helpers.analysis.baselines` with
:func:`against_floors`. Its tables are drawn by :func:`table_html` (every data frame a
cell shows, once :func:`use_book_tables` ran; :func:`helpers.book.stamp.show_stamp` runs it), and
files it wrote are named relative to the output folder (:func:`output_name`).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from helpers.analysis.baselines import SCORERS
from helpers.analysis.estimate import Estimate, fmt_ci, finite_number as _ok
from helpers.book.artefacts import output_root

NAMES = {"f1_macro": "F1 (macro)", "f1_micro": "F1 (micro)", "exact_match": "exact match",
         "lrap": "LRAP", "coverage_error": "coverage error", "ranking_loss": "ranking loss",
         "auroc_macro": "AUROC (macro)", "auprc_macro": "AUPRC (macro)", "brier": "Brier score",
         "ece": "ECE"}
"""Display name of each metric key."""
LOWER_IS_BETTER = ("coverage_error", "ranking_loss", "brier", "ece")


def run_label(profile: str, model_id: str, quick_run: str | None = None) -> str:
    """How a run is named in a table cell: ``demo · tiny@abc``, with ``· quick run (why)`` for a
    quick run (plain text: table cells render no markup)."""
    label = f"{profile} · {model_id}"
    return f"{label} · quick run ({quick_run})" if quick_run else label


def output_name(path: str | os.PathLike) -> str:
    """A file a run wrote, named as a page may print it: relative to the output folder
    (``demo/tiny/findings-02_zero_shot.json``), never the build machine's absolute path."""

    p = Path(path).resolve()
    try:
        return str(p.relative_to(output_root().resolve()))
    except ValueError:
        return p.name


def beats(result: Mapping[str, Any], floor: float, metric: str) -> bool:
    """Whether a result's 95% CI lies entirely on the better side of ``floor`` for ``metric``."""
    e = Estimate.read(result, metric)
    if not _ok(floor):
        return False
    return e.below(floor) if metric in LOWER_IS_BETTER else e.above(floor)


def best_floor(refs: Mapping[str, Mapping[str, Any]], metric: str) -> tuple[str, float] | None:
    """The strongest image-independent scorer for ``metric`` (name, value); the first in
    :data:`chance.SCORERS` order on a tie. ``None`` if no scorer has the metric."""

    vals = {n: r[metric] for n, r in sorted(refs.items(), key=lambda kv: SCORERS.index(kv[0])
                                            if kv[0] in SCORERS else 99) if _ok(r.get(metric))}
    if not vals:
        return None
    best = (min if metric in LOWER_IS_BETTER else max)(vals, key=vals.get)
    return best, float(vals[best])


def floor_status(result: Mapping[str, Any], refs: Mapping[str, Mapping[str, Any]],
                 metric: str) -> str:
    """``"beats"`` (the whole CI on the better side of the best image-independent scorer),
    ``"within"`` (the point is better but the CI reaches the floor) or ``"at or below"`` (the
    point itself is no better than the floor); ``""`` when there is nothing to compare."""
    fl = best_floor(refs, metric)
    v = result.get(metric)
    if fl is None or not _ok(v):
        return ""
    if beats(result, fl[1], metric):
        return "beats"
    better = v < fl[1] if metric in LOWER_IS_BETTER else v > fl[1]
    return "within" if better else "at or below"


def against_floors(ours: Mapping[str, Mapping[str, Any]], refs: Mapping[str, Mapping[str, Any]],
                   metrics: Sequence[str]) -> pd.DataFrame:
    """Metric table: our settings (value [CI]) beside the best reference scorer, and a verdict.

    ``ours`` and ``refs`` map a column name to a :func:`metrics.evaluate` result. A value of
    ours at or below the best image-independent scorer is marked ``▼``. The last columns name
    the best reference scorer for the metric with its value (every scorer's values are chapter
    2's table) and whether the *first* of ``ours`` beats it with its whole CI (``yes``), only
    with its point value (``no: CI reaches it``), or not at all (``no: at or below``).
    """

    refs = {n: refs[n] for n in sorted(refs, key=lambda n: SCORERS.index(n) if n in SCORERS else 99)}
    rows = {}
    first = next(iter(ours.values()))
    for m in metrics:
        row = {}
        for name, r in ours.items():
            mark = " ▼" if floor_status(r, refs, m) == "at or below" else ""
            row[name] = Estimate.read(r, m).format() + mark
        fl = best_floor(refs, m)
        if fl:
            row["best image-independent"] = f"{fl[0]}: {fmt_ci(fl[1])}"
            row["beats it?"] = {"beats": "yes", "within": "no: CI reaches it",
                                "at or below": "no: at or below"}.get(
                                    floor_status(first, refs, m), "–")
        rows[NAMES.get(m, m)] = row
    return pd.DataFrame(rows).T.rename_axis(index="metric")


def floor_sentence(ours: Mapping[str, Mapping[str, Any]], refs: Mapping[str, Mapping[str, Any]],
                   metrics: Sequence[str]) -> str:
    """The prose that names every result at or below its image-independent floor, computed
    from the numbers (so a rerun with other numbers keeps the page true)."""

    below = []
    for name, r in ours.items():
        for m in metrics:
            if floor_status(r, refs, m) == "at or below":
                fl = best_floor(refs, m)
                below.append(f"{name} on {NAMES.get(m, m)} ({fmt_ci(r[m])} against "
                             f"{fl[0]}'s {fmt_ci(fl[1])})")
    if not below:
        return "no result is at or below its image-independent floor"
    return "at or below an image-independent floor: " + "; ".join(below)


# --------------------------------------------------------------------------------------
# Tables on the page
# --------------------------------------------------------------------------------------
#
# A table is drawn to fit the book's text column (688 px at a 1280 px window): numbers in
# right-aligned columns, each "value [95% CI]" cell breaking only between the value and its
# interval, sentences left-aligned and wrapped, the row labels in a sticky first column (a
# narrow screen scrolls the numbers under them), a two-level row index drawn as group rows,
# and, with ``cards``, one card per row on a narrow screen so that every field (the verdict
# too) is read without scrolling. The look lives in ``_static/book.css`` (``table.book-table``).

_NUMBER = r"[+\-−]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:e[+\-]?\d+)?%?"
_CI_CELL = re.compile(rf"^(?P<v>{_NUMBER})\s+(?P<ci>\[[^\[\]]*\])(?P<rest>.*)$")
_NUMERIC_CELL = re.compile(rf"^(?:{_NUMBER}(?:\s+\[[^\[\]]*\])?(?:\s*[▼▲*])?|–|-|nan|NaN|None|)$")
MAX_ROWS = 400
"""Longer frames are left to pandas' own (truncating) HTML."""


def header(name: Any) -> str:
    """A column name as a header that can wrap: ``area_px`` -> ``area px`` (for a
    :class:`pandas.io.formats.style.Styler`: ``.format_index(header, axis=1)``)."""
    return str(name).replace("_", " ")


def _is_missing(v: Any) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _column_text(col: pd.Series) -> list[str]:
    """The cells of one column as text: pandas' own number format for a numeric column, the
    value itself otherwise, ``–`` where a value is missing."""
    from pandas.io.formats.format import format_array

    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        text = [s.strip() for s in format_array(col.to_numpy(), None)]
        return ["–" if _is_missing(v) else s for v, s in zip(col, text)]
    return ["–" if _is_missing(v) else str(v) for v in col]


def _esc(text: str) -> str:
    """Text as HTML that may wrap after an underscore (``draw_pleural_effusion``)."""
    return html.escape(text).replace("_", "_<wbr>")


def _cell_html(text: str) -> str:
    """A cell's text as HTML; a ``value [low, high]`` cell keeps its interval on one line."""
    m = _CI_CELL.match(text)
    if not m:
        return _esc(text)
    ci = f'<span class="ci">{html.escape(m["ci"])}</span>'
    if len(m["rest"].strip()) <= 2:  # a mark (▼) belongs to the value: it stays with it
        return f'{html.escape(m["v"] + m["rest"])} {ci}'
    return f'{html.escape(m["v"])} {ci}{html.escape(m["rest"])}'


def _label(v: Any) -> str:
    if isinstance(v, tuple):
        return " · ".join(str(x) for x in v if str(x))
    return "" if _is_missing(v) else str(v)


def table_html(df: pd.DataFrame, *, cards: bool = False, groups: bool | None = None,
               row_classes: Sequence[str] | None = None, caption: str | None = None,
               index: bool | None = None) -> str:
    """``df`` as the book draws a table (see the section comment above).

    ``groups``: a two-level row index becomes one group row per first-level value (default:
    whenever the index has two levels). ``row_classes``: one CSS class per row (``paper``
    sets the original study's rows apart). ``index``: show the row labels (default: unless
    the index is pandas' unnamed 0..n-1). ``cards``: a narrow screen shows one card per row.
    """
    idx = df.index
    if index is None:
        index = not (isinstance(idx, pd.RangeIndex) and idx.name is None
                     and idx.start == 0 and idx.step == 1)
    groups = index and idx.nlevels == 2 if groups is None else (groups and idx.nlevels == 2)
    heads = [_label(c) for c in df.columns]
    cols = [_column_text(df.iloc[:, j]) for j in range(df.shape[1])]
    numeric = [bool(c) and all(_NUMERIC_CELL.match(t) for t in c) for c in cols]
    corner = ""
    if index:
        names = [n for n in (idx.names[-1:] if groups else idx.names) if n]
        corner = " · ".join(str(n) for n in names) or (df.columns.name or "")
    classes = ["book-table"] + (["cards"] if cards else [])
    out = [f'<div class="book-table-box"><table class="{" ".join(classes)}">']
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<thead><tr>")
    if index:
        out.append(f'<th class="rowhead" scope="col">{_esc(corner)}</th>')
    out += [f'<th scope="col" class="{"num" if n else "txt"}">{_esc(h)}</th>'
            for h, n in zip(heads, numeric)]
    out.append("</tr></thead><tbody>")
    width = df.shape[1] + bool(index)
    group = object()
    for i in range(len(df)):
        key = idx[i]
        if groups and key[0] != group:
            group = key[0]
            out.append(f'<tr class="group"><th colspan="{width}" scope="rowgroup"><span>'
                       f"{_esc(_label(group))}</span></th></tr>")
        cls = f' class="{html.escape(row_classes[i])}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>")
        if index:
            out.append(f'<th class="rowhead" scope="row">'
                       f"{_esc(_label(key[1] if groups else key))}</th>")
        out += [f'<td class="{"num" if n else "txt"}" data-label="{html.escape(h)}">'
                f"{_cell_html(c[i])}</td>" for h, n, c in zip(heads, numeric, cols)]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


class Table:
    """A table for the page: :func:`table_html` in a notebook and the book, the frame's own
    text elsewhere. ``.data`` is the :class:`pandas.DataFrame` itself."""

    def __init__(self, data: pd.DataFrame, **options: Any):
        self.data, self.options = data, options

    def _repr_html_(self) -> str:
        return table_html(self.data, **self.options)

    def __repr__(self) -> str:
        return self.data.to_string()


def table(df: pd.DataFrame, **options: Any) -> Table:
    """``df`` shown as the book draws tables (options: :func:`table_html`)."""
    return Table(df, **options)


def _frame_html(df: pd.DataFrame) -> str:
    if len(df) > MAX_ROWS or df.columns.nlevels > 2 or df.index.nlevels > 3:
        return df._repr_html_()
    return table_html(df)


def use_book_tables(shell: Any = None) -> None:
    """From now on, a :class:`pandas.DataFrame` a cell shows is drawn by :func:`table_html`
    (IPython's HTML formatter for the type; nothing happens outside IPython)."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
    if shell is None:
        return
    shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, _frame_html)
