"""How tables and figures reach a page (issue 24, items 3, 4 and 8).

Tables: :func:`helpers.book.display.table_html` draws a frame to fit the book's column (value and
interval in one cell that breaks only between them, a two-level index as group rows, one card
per row on a narrow screen), and :func:`helpers.book.display.use_book_tables` makes it the HTML of
every :class:`pandas.DataFrame` a cell shows. Figures: after
:func:`helpers.book.stamp.mark_figures`, every matplotlib figure a kernel shows (``display``,
``plt.show()``, myst-nb's ``glue``) carries the profile's mark in its corner, once, and reports
its size and smallest text in the output's metadata, which ``tests/test_browser.py`` reads
from the executed chapters.
"""

import base64
import re

import pandas as pd
import pytest

from helpers.book import display, results, stamp
from helpers.analysis import findings

DEMO_MARK = stamp.PROFILE_MARKS["demo"]


# ----------------------------------------------------------------------------------- tables


def test_an_interval_stays_on_one_line_and_its_value_may_wrap_above_it():
    df = pd.DataFrame({"AUROC (macro)": ["0.609 [0.556, 0.654] ▼", "–"],
                       "n": [3, 4]}, index=pd.Index(["this run", "paper"], name="source"))
    h = display.table_html(df)
    assert ('0.609 ▼ <span class="ci">[0.556, 0.654]</span>'
            in h)
    assert '<th class="rowhead" scope="row">this run</th>' in h
    assert 'class="num" data-label="AUROC (macro)"' in h  # numbers right-aligned
    assert h.count("<tr") == 3


def test_sentences_are_left_aligned_and_escaped():
    df = pd.DataFrame({"verdict": ["holds: a < b & c"], "finding": ["x"]})
    h = display.table_html(df)
    assert 'class="txt" data-label="verdict">holds: a &lt; b &amp; c</td>' in h
    assert "rowhead" not in h  # pandas' unnamed 0..n-1 index is not shown


def test_a_two_level_index_becomes_group_rows():
    df = pd.DataFrame({"v": [1, 2, 3]}, index=pd.MultiIndex.from_tuples(
        [("zero-shot", "paper"), ("zero-shot", "this run"), ("probe", "this run")],
        names=["setting", "source"]))
    h = display.table_html(df, row_classes=["paper", "", ""])
    groups = re.findall(r'<tr class="group"><th colspan="2" scope="rowgroup"><span>(.*?)<', h)
    assert groups == ["zero-shot", "probe"]
    assert '<tr class="paper"><th class="rowhead" scope="row">paper</th>' in h
    assert '<th class="rowhead" scope="col">source</th>' in h


def test_cards_label_every_cell_and_plain_text_is_the_frame():
    df = pd.DataFrame({"finding": ["a"], "verdict": ["holds"]})
    t = display.table(df.set_index("finding"), cards=True)
    assert 'class="book-table cards"' in t._repr_html_()
    assert 'data-label="verdict">holds</td>' in t._repr_html_()
    assert repr(t) == df.set_index("finding").to_string()


def test_missing_values_and_float_columns():
    df = pd.DataFrame({"x": [0.5, None], "s": [None, "b"]})
    h = display.table_html(df)
    assert ">0.5<" in h and h.count(">–<") == 2


def test_every_dataframe_a_cell_shows_is_drawn_by_the_book():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    display.use_book_tables(shell)
    data, _ = shell.display_formatter.format(pd.DataFrame({"a": [1]}, index=["r"]))
    assert 'class="book-table"' in data["text/html"]
    long = pd.DataFrame({"a": range(display.MAX_ROWS + 1)})
    data, _ = shell.display_formatter.format(long)
    assert "book-table" not in data["text/html"]  # left to pandas


def test_the_results_page_sets_the_paper_apart_and_fits_three_tables():
    df = pd.DataFrame([{"profile": "demo", "model_id": "tiny@abc", "setting": "zs",
                        **{m: 0.5 for m in results.COLUMNS},
                        **{f"{m}_lo": 0.4 for m in results.COLUMNS},
                        **{f"{m}_hi": 0.6 for m in results.COLUMNS}}])
    shown = set()
    for name, cols in results.GROUPS.items():
        t = results.results_table(df, None, cols)
        shown |= set(t.columns)
        sources = [s for _, s in t.index]
        ours = f"{results.THIS_RUN}: demo · tiny@abc"
        papers = 0 if name == "beyond" else len(results.SEED_REFERENCE)  # it reports none
        assert sources.count(results.PAPER) == papers and sources.count(ours) == 1, name
        assert not any("`" in s for s in sources)  # no literal markup in cells
        h = results.styled(t)._repr_html_()
        assert h.count('<tr class="paper">') == papers and len(t.columns) <= 4
    assert shown == {results.HEADERS[c] for c in results.COLUMNS}


def test_a_findings_table_puts_the_verdict_beside_the_finding_and_shows_cards():
    df = pd.DataFrame([{"profile": "demo", "model": "tiny@abc", "finding": "f",
                        "estimate": 0.2, "ci95": [0.1, 0.3], "rule": {"above": 0},
                        "control": {"estimate": 0.0, "ci95": [-0.1, 0.1], "powered": True},
                        "difference": {"estimate": 0.2, "ci95": [0.1, 0.3]}, "margin": 0.05,
                        "verdict": "holds", "verdict_holm": "holds after Holm"}])
    table = findings.findings_table(df)
    assert list(table.columns[:4]) == ["run", "finding", "verdict", "after Holm"]
    h = findings.styled(table)._repr_html_()
    assert "cards" in h and 'data-label="verdict">holds</td>' in h
    assert "<span>demo · tiny@abc</span>" in h  # the run heads its group of findings


def test_output_name_is_relative_to_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path))
    f = tmp_path / "demo" / "tiny" / "findings-02_zero_shot.json"
    assert display.output_name(f) == "demo/tiny/findings-02_zero_shot.json"
    assert display.output_name("/elsewhere/x.json") == "x.json"


# ---------------------------------------------------------------------------------- figures


@pytest.fixture
def shell():
    """An IPython shell with the inline backend's figure formatters, as in a kernel."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.pylabtools import select_figure_formats
    from matplotlib.figure import Figure

    sh = InteractiveShell.instance()
    select_figure_formats(sh, {"png"}, bbox_inches="tight")
    yield sh
    sh.display_formatter.formatters["image/png"].pop(Figure, None)


def _png(data) -> bytes:
    return data if isinstance(data, bytes) else base64.b64decode(data)


def test_a_shown_figure_carries_the_mark_once_and_reports_its_text(shell):
    import matplotlib.pyplot as plt

    stamp.mark_figures(DEMO_MARK, shell)
    stamp.mark_figures(DEMO_MARK, shell)  # a second stamp on the page wraps nothing twice
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([0, 1])
    ax.set_title("small", fontsize=7)
    data, md = shell.display_formatter.format(fig)
    data2, _ = shell.display_formatter.format(fig)  # glue, then shown again
    marks = [t for t in fig.texts if t.get_gid() == stamp.MARK_GID]
    assert len(marks) == 1 and marks[0].get_text() == DEMO_MARK
    assert marks[0].get_fontsize() == stamp.MARK_PT  # 600 px wide: shown at full size
    report = md["image/png"]["book_figure"]
    assert report["mark"] == DEMO_MARK and report["min_text_pt"] == 7.0
    assert report["width_px"] == int.from_bytes(_png(data["image/png"])[16:20], "big")
    plt.close(fig)


def test_a_wide_figure_is_reported_as_shown_scaled_down(shell):
    import matplotlib.pyplot as plt

    stamp.mark_figures(DEMO_MARK, shell)
    fig, ax = plt.subplots(figsize=(13.76, 3))  # about twice the column
    ax.plot([0, 1])
    _, md = shell.display_formatter.format(fig)
    report = md["image/png"]["book_figure"]
    assert report["shown_px"] == stamp.COLUMN_PX
    scale = stamp.COLUMN_PX / report["width_px"]  # 10 pt tick labels, shown scaled down
    assert report["min_text_pt"] == pytest.approx(10 * scale, abs=0.06) and scale < 0.7
    mark = next(t for t in fig.texts if t.get_gid() == stamp.MARK_GID)
    assert mark.get_fontsize() == pytest.approx(stamp.MARK_PT * 2, rel=0.01)
    plt.close(fig)


def test_no_mark_for_the_full_profile_and_glue_carries_it(shell, monkeypatch):
    import matplotlib.pyplot as plt
    from myst_nb import glue

    stamp.mark_figures(None, shell)
    fig, _ = plt.subplots()
    _, md = shell.display_formatter.format(fig)
    assert md["image/png"]["book_figure"]["mark"] is None
    stamp.mark_figures(DEMO_MARK, shell)
    shown = []
    monkeypatch.setattr("myst_nb.ext.glue.ipy_display",
                        lambda data, raw, metadata: shown.append((data, metadata)))
    monkeypatch.setattr("IPython.core.formatters.format_display_data",
                        shell.display_formatter.format)
    glue("fig", fig, display=False)
    (data, metadata), = shown
    assert any(k.endswith("image/png") for k in data)
    assert metadata["image/png"]["book_figure"]["mark"] == DEMO_MARK
    plt.close(fig)


def test_the_stamp_heads_a_demo_page_with_its_banner():
    h = stamp.banner_html("demo")
    assert DEMO_MARK in h and 'data-profile="demo"' in h and "not BiomedCLIP results" in h
    assert stamp.banner_html("full") == ""
