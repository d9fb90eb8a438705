"""The provenance stamp shown on every executed page and stored in every metrics JSON."""

from __future__ import annotations

import ast
import base64
import datetime as _dt
import html
import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from helpers.book.display import use_book_tables
from helpers.book.runner import NOTEBOOK_DIR, declared_parameters, read_notebook

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


INJECTED_HEADER = "# Parameters"
"""How the cell papermill injects (the values a run was given) begins."""


def _literal_assignments(source: str) -> dict[str, Any] | None:
    """``{name: value}`` of a cell made only of ``name = literal`` lines (a parameters cell), or
    ``None`` for any other cell (code, an empty cell, a magic)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    out: dict[str, Any] = {}
    for node in body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if not isinstance(target, ast.Name) or node.value is None:
            return None
        try:
            out[target.id] = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return out or None


def _notebook_defaults(shell: Any) -> dict[str, Any] | None:
    """The declared defaults of the chapter open in an interactive front end (Jupyter's
    ``JPY_SESSION_NAME``, VS Code's ``__vsc_ipynb_file__``) when it is one of notebooks/."""
    for where in (os.environ.get("JPY_SESSION_NAME"), shell.user_ns.get("__vsc_ipynb_file__")):
        if not where:
            continue
        src = NOTEBOOK_DIR / f"{Path(str(where)).stem}.py"
        if src.is_file():
            return {k: p.default for k, p in declared_parameters(read_notebook(src)).items()}
    return None


def _shell() -> Any:
    """The running IPython shell, or ``None``."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _same(a: Any, b: Any) -> bool:
    def norm(x: Any) -> Any:
        return [norm(v) for v in x] if isinstance(x, (list, tuple)) else x
    return norm(a) == norm(b)


def declared_defaults(shell: Any = None) -> dict[str, Any] | None:
    """The defaults of the parameters the running notebook declares, or ``None`` outside a
    notebook (no IPython, or no parameters cell run yet).

    Read from the kernel's input history: the parameters cell is the cell of literal
    assignments that papermill's injected cell (``# Parameters``) follows, or, in a notebook run
    without papermill, the first such cell (its values as the notebook file on disk declares
    them, when the front end names one of notebooks/)."""
    shell = shell or _shell()
    if shell is None:
        return None
    cells = [(src.lstrip().startswith(INJECTED_HEADER), _literal_assignments(src))
             for src in shell.history_manager.input_hist_raw]
    cells = [(injected, d) for injected, d in cells if d is not None]
    before = next((i for i, (injected, _) in enumerate(cells) if injected), None)
    if before is not None:
        own = [d for injected, d in cells[:before] if not injected]
        return own[-1] if own else None
    on_disk = _notebook_defaults(shell)
    return on_disk if on_disk is not None else (cells[0][1] if cells else None)


def changed_parameters(shell: Any = None) -> dict[str, Any] | None:
    """Every parameter of the running notebook whose value (in the kernel's globals) differs
    from its declared default, ``{name: value}`` in declaration order (``profile`` left out: the
    stamp names it anyway); ``None`` outside a notebook (:func:`declared_defaults`)."""
    shell = shell or _shell()
    defaults = declared_defaults(shell) if shell is not None else None
    if defaults is None:
        return None
    ns = shell.user_ns
    return {k: ns[k] for k, d in defaults.items()
            if k != "profile" and k in ns and not _same(ns[k], d)}


def make_stamp(profile: str, model_id: str, data_hash: str, parameters: Mapping[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
    """A dict naming the profile, the model, the data/split hash, the date, the versions and
    (``parameters``) every parameter not at its declared default: by default those of the
    notebook this runs in (:func:`changed_parameters`; no entry outside a notebook)."""
    if parameters is None:
        parameters = changed_parameters()
    return {
        "profile": profile,
        "model_id": model_id,
        "data_hash": data_hash,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "packages": package_versions(),
        **({} if parameters is None else {"parameters": dict(parameters)}),
        **extra,
    }


def parameters_text(parameters: Mapping[str, Any] | None) -> str | None:
    """The stamp's parameter line: ``limit = 40, class_weight = 'none'`` (each in backticks), or
    ``all parameters at their defaults``; ``None`` when the stamp does not know them."""
    if parameters is None:
        return None
    if not parameters:
        return "all parameters at their defaults"
    return ", ".join(f"`{k} = {v!r}`" for k, v in parameters.items())


def stamp_markdown(stamp: dict[str, Any]) -> str:
    """The stamp as a MyST admonition for the top of an executed page."""
    pk = ", ".join(f"{k} {v}" for k, v in stamp["packages"].items() if v != "absent")
    kind = "warning" if stamp["profile"] == "demo" else "note"
    note = (" Demo numbers come from synthetic images and a small proxy model: they are "
            "**not** BiomedCLIP results." if stamp["profile"] == "demo" else "")
    extra = "".join(f"\n- **{k}**: `{v}`" for k, v in stamp.items()
                    if k not in ("profile", "model_id", "data_hash", "date", "python", "packages",
                                 "parameters"))
    given = parameters_text(stamp.get("parameters"))
    given = f"\n- **parameters**: {given}" if given else ""
    return (f"**Executed with profile `{stamp['profile']}`**.{note}\n\n"
            f"- **model**: `{stamp['model_id']}`\n- **data/split hash**: `{stamp['data_hash']}`"
            f"{given}{extra}\n- **executed**: {stamp['date']}, Python {stamp['python']}\n"
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
    headed by the profile's banner, listing every parameter of this notebook not at its
    declared default (:func:`changed_parameters`; a page that shows another run's stamp, as the
    results page does, lists its own); from here on the page's figures carry the profile's mark
    in their corner and its tables are drawn to fit the page (:mod:`helpers.book.display`)."""
    from IPython.display import HTML, display


    use_book_tables()
    mark_figures(PROFILE_MARKS.get(stamp["profile"]))
    here = changed_parameters()
    md, kind = stamp_markdown(stamp if here is None else {**stamp, "parameters": here})

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
