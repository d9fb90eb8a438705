"""Sphinx extension for the book: local MathJax, and two fixes for a clean browser console.

The book is read offline too (and checked in a headless browser with no network), so the
equations must render without reaching cdn.jsdelivr.net. MathJax 2.7 ships inside the pinned
PyPI package ``jupyter-server-mathjax``; at build time its files are copied once into
``_build/.mathjax/mathjax`` and published as ``_static/mathjax/``, and ``mathjax_path`` points
there, configured for the STIX-Web fonts the package ships.

It also removes scripts that Jupyter Book 1.0.4's stack adds to every page twice (sphinx-thebe's
``const THEBE_JS_URL = ...``, whose second copy is a SyntaxError in the console) and gives the
pydata theme a valid default colour mode (its empty default logs an error on first visit), and
points the "edit" and "source" buttons of executed chapters at their jupytext sources
(``notebooks/NN_name.py``), not at the executed copies the book renders.
The headless-browser test (``tests/test_browser.py``) checks the result. Enabled in
``_config.yml`` (``sphinx.extra_extensions``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

CONFIG = "TeX-AMS-MML_HTMLorMML-full"


def _mathjax_source() -> Path:
    import jupyter_server_mathjax

    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (src / "MathJax.js").is_file():
        raise FileNotFoundError(f"MathJax.js not found in {src}: reinstall jupyter-server-mathjax (make setup)")
    return src


def _builder_inited(app: Any) -> None:
    if app.builder.format != "html":
        return
    staging = Path(app.outdir).parent / ".mathjax"
    target = staging / "mathjax"
    if not (target / "MathJax.js").is_file():
        tmp = staging / "mathjax.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(_mathjax_source(), tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    app.config.html_static_path = [*app.config.html_static_path, str(staging)]


def _config_inited(app: Any, config: Any) -> None:
    config.mathjax_path = f"mathjax/MathJax.js?config={CONFIG}"
    config.mathjax3_config = None  # a MathJax 3 configuration would confuse MathJax 2
    config.myst_update_mathjax = False
    # No font request may fail in the console: MathJax 2's blank test font points at about:blank
    # (blocked by Chrome), and the NativeMML styles (used by the hidden assistive MathML, e.g. for
    # \mathbb) point at TeX fonts that jupyter-server-mathjax does not ship. Use local() instead.
    fonts = [("Caligraphic", False), ("Caligraphic", True), ("AMS", False), ("Script", False),
             ("Fraktur", False), ("Fraktur", True)]
    local = {f"@font-face /*{i}*/": {"font-family": f"MathJax_{name}-WEB", "src": f"local('MathJax_{name}')",
                                     **({"font-weight": "bold"} if bold else {})}
             for i, (name, bold) in enumerate(fonts, 1)}
    blank = {"@font-face": {"font-family": "MathJax_Blank", "src": "local('MathJax_Blank')"}}
    config.mathjax2_config = {"HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web",
                                            "imageFont": None, "styles": blank},
                              "NativeMML": {"styles": local},
                              "SVG": {"font": "STIX-Web"}}


def _page_context(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    seen, unique = set(), []
    for js in context.get("script_files", []):
        # the same inline script is registered once with filename None and once with "": one key
        key = (getattr(js, "filename", str(js)) or "",
               tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    if "script_files" in context:
        context["script_files"][:] = unique
    if not context.get("default_mode"):
        context["default_mode"] = "auto"
    _point_buttons_at_sources(context.get("header_buttons", []))


def _source_of(url: str) -> str:
    """An executed chapter's repository URL -> its jupytext source: ``book/chapters/NN.ipynb`` ->
    ``notebooks/NN.py`` (the executed copies are build products; the sources are what to edit).

    Only repository links (``http...``) change: the download button's relative
    ``_sources/book/chapters/NN.ipynb`` is a file of the site (the executed notebook) and stays."""
    if not url.startswith(("http://", "https://")):
        return url
    return re.sub(r"book/chapters/([0-9]\w*)\.ipynb", r"notebooks/\1.py", url)


def _point_buttons_at_sources(buttons: list) -> None:
    """Rewrite the edit / source links of the header buttons (nested groups included)."""
    for b in buttons:
        if isinstance(b, dict):
            if isinstance(b.get("url"), str):
                b["url"] = _source_of(b["url"])
            _point_buttons_at_sources(b.get("buttons", []))


def setup(app: Any) -> dict[str, Any]:
    """Point ``mathjax_path`` at the local copy and publish it with the site."""
    app.connect("config-inited", _config_inited)
    app.connect("builder-inited", _builder_inited)
    app.connect("html-page-context", _page_context, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
