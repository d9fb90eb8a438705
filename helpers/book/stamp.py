"""The provenance stamp shown on every executed page and stored in every metrics JSON."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import platform
import re
from importlib import metadata
from typing import Any
from helpers.book.display import use_book_tables

PACKAGES = ("torch", "open_clip_torch", "timm", "transformers", "numpy", "pandas",
            "scikit-learn", "spacy", "negspacy", "torchxrayvision")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"absent"`` when not installed)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


def make_stamp(profile: str, model_id: str, data_hash: str, **extra: Any) -> dict[str, Any]:
    """A dict naming the profile, the model, the data/split hash, the date and the versions."""
    return {
        "profile": profile,
        "model_id": model_id,
        "data_hash": data_hash,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "packages": package_versions(),
        **extra,
    }


def stamp_markdown(stamp: dict[str, Any]) -> str:
    """The stamp as a MyST admonition for the top of an executed page."""
    pk = ", ".join(f"{k} {v}" for k, v in stamp["packages"].items() if v != "absent")
    kind = "warning" if stamp["profile"] == "demo" else "note"
    note = (" Demo numbers come from synthetic images and a small proxy model: they are "
            "**not** BiomedCLIP results." if stamp["profile"] == "demo" else "")
    extra = "".join(f"\n- **{k}**: `{v}`" for k, v in stamp.items()
                    if k not in ("profile", "model_id", "data_hash", "date", "python", "packages"))
    return (f"**Executed with profile `{stamp['profile']}`**.{note}\n\n"
            f"- **model**: `{stamp['model_id']}`\n- **data/split hash**: `{stamp['data_hash']}`"
            f"{extra}\n- **executed**: {stamp['date']}, Python {stamp['python']}\n"
            f"- **packages**: {pk}\n"), kind


PROFILE_MARKS = {"demo": "demo: real reports, synthetic images, small model"}
"""The line that marks a profile's pages and figures where people skim (first screen, every
figure's corner): ``demo`` numbers are never BiomedCLIP results. ``full`` needs no mark."""
COLUMN_PX = 688
"""Width (px) of the book's text column at a 1280 px window: wider figures are shown scaled
down to it."""
MARK_PT = 9.0
"""Size (pt, as shown on the page) of a figure's profile mark."""
MARK_GID = "book-profile-mark"


def mark_figure(fig: Any, text: str) -> None:
    """Write ``text`` once in the bottom-right corner of a matplotlib figure, just below what it
    draws (the inline backend's tight bounding box takes it in), at :data:`MARK_PT` as shown
    on the page (a figure wider than :data:`COLUMN_PX` px is shown scaled down)."""
    from matplotlib.transforms import offset_copy

    if any(t.get_gid() == MARK_GID for t in fig.texts):
        return
    scale = min(1.0, COLUMN_PX / max(fig.get_figwidth() * fig.dpi, 1.0))
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches: what the figure draws
    fig.text(drawn.x1 / fig.get_figwidth(), drawn.y0 / fig.get_figheight(), text, ha="right",
             va="top", fontsize=MARK_PT / scale, color="#555555", gid=MARK_GID,
             transform=offset_copy(fig.transFigure, fig=fig, y=-3, units="points"))


def _drawn_texts(artist: Any):
    """The visible, non-empty texts of a matplotlib artist tree (an axis switched off with
    ``set_axis_off`` draws no tick labels)."""
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.text import Text

    if not artist.get_visible():
        return
    if isinstance(artist, Text) and artist.get_text().strip():
        yield artist
    for child in artist.get_children():
        if isinstance(artist, Axes) and not artist.axison and isinstance(child, Axis):
            continue
        yield from _drawn_texts(child)


def figure_report(fig: Any, png: bytes) -> dict[str, Any]:
    """How a figure rendered as ``png`` reads on the page: its width in px, the width it is
    shown at (at most :data:`COLUMN_PX`), its smallest visible text in pt as shown and the
    profile mark in its corner (``None`` without one)."""
    width = int.from_bytes(png[16:20], "big") if png[:8] == b"\x89PNG\r\n\x1a\n" else 0
    scale = min(1.0, COLUMN_PX / width) if width else 1.0
    sizes = [t.get_fontsize() for t in _drawn_texts(fig)]
    marks = [t.get_text() for t in fig.texts if t.get_gid() == MARK_GID]
    return {"width_px": width, "shown_px": round(width * scale),
            "min_text_pt": round(min(sizes) * scale, 1) if sizes else None,
            "mark": marks[0] if marks else None}


def mark_figures(text: str | None, shell: Any = None) -> None:
    """From now on, every matplotlib figure a cell shows (``plt.show()``, ``display``, myst-nb's
    ``glue``) carries ``text`` in its corner (:func:`mark_figure`; ``None``: no mark) and its
    :func:`figure_report` in the output's metadata (``book_figure``), which the tests read:
    IPython's PNG formatter for :class:`matplotlib.figure.Figure` is wrapped. Nothing happens
    outside IPython."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
    if shell is None:
        return
    import matplotlib
    from matplotlib.figure import Figure

    if matplotlib.get_backend(auto_select=False) in ("inline",
                                                     "module://matplotlib_inline.backend_inline"):
        # the inline backend selects IPython's figure formatters once, when it is first
        # imported (pyplot imports it at the first figure): import it now, so they are ours
        import matplotlib_inline.backend_inline  # noqa: F401
    formatter = shell.display_formatter.formatters["image/png"]
    try:
        base = formatter.lookup_by_type(Figure)
    except KeyError:
        base = None
    base = getattr(base, "unmarked", base)
    if base is None:
        from IPython.core.pylabtools import print_figure

        def base(fig):
            return print_figure(fig, "png", bbox_inches="tight")

    def marked(fig):
        if text:
            mark_figure(fig, text)
        out = base(fig)
        data, md = out if isinstance(out, tuple) else (out, {})
        if not data:
            return out
        png = data if isinstance(data, bytes) else base64.b64decode(data)
        return data, {**(md or {}), "book_figure": figure_report(fig, png)}

    marked.unmarked = base
    formatter.for_type(Figure, marked)


def banner_html(profile: str) -> str:
    """The one-line profile mark for the top of a page (``""`` for a profile that needs none);
    the book's ``_static/profile-banner.js`` moves it under the page title."""
    text = PROFILE_MARKS.get(profile)
    if not text:
        return ""
    return (f'<div class="profile-banner" data-profile="{html.escape(profile)}"><b>'
            f"{html.escape(text)}</b> · this page's numbers are not BiomedCLIP results "
            f'(<a href="../demo_profile.html">what the demo stands for</a>)</div>')


def show_stamp(stamp: dict[str, Any]) -> None:
    """Display the stamp in a notebook as a coloured box (HTML, so it renders in the book),
    headed by the profile's banner; from here on the page's figures carry the profile's mark
    in their corner and its tables are drawn to fit the page (:mod:`helpers.book.display`)."""
    from IPython.display import HTML, display


    use_book_tables()
    mark_figures(PROFILE_MARKS.get(stamp["profile"]))
    md, kind = stamp_markdown(stamp)

    items = [line[2:] for line in md.splitlines() if line.startswith("- ")]
    head = md.split("\n\n")[0]

    def fmt(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    lis = "".join(f"<li>{fmt(i)}</li>" for i in items)
    cls = "admonition warning" if kind == "warning" else "admonition note"
    display(HTML(f"{banner_html(stamp['profile'])}"
                 f'<div class="{cls} stamp" data-profile="{html.escape(stamp["profile"])}">'
                 f'<p class="admonition-title">Provenance</p>'
                 f"<p>{fmt(head)}</p><ul>{lis}</ul></div>"))
