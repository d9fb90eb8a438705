"""The provenance box lists every parameter of its notebook that is not at its declared default.

The stamp reads the kernel's input history: the parameters cell (the cell of literal
assignments that papermill's injected ``# Parameters`` cell follows) gives the declared
defaults, the kernel's globals the values. No chapter passes its parameters by hand.
"""

import json
from types import SimpleNamespace

from helpers.book import runner as R
from helpers.book import stamp as ST

DECLARED = ('profile = "demo"  # demo or full\nlimit = 0  # quick runs\n'
            'class_weight = "balanced"  # or "none"\nsplit_fractions = [0.7, 0.1, 0.2]\n')


def _shell(*cells: str) -> SimpleNamespace:
    """A stand-in for IPython's shell that ran ``cells`` in order."""
    ns: dict = {}
    for c in cells:
        exec(c, ns)
    return SimpleNamespace(history_manager=SimpleNamespace(input_hist_raw=["", *cells]), user_ns=ns)


def test_given_values_are_listed_and_defaults_are_not():
    injected = '# Parameters\nprofile = "full"\nlimit = 40\nsplit_fractions = [0.7, 0.1, 0.2]\n'
    shell = _shell("import math", DECLARED, injected, "x = [1, 2]")
    assert ST.declared_defaults(shell)["limit"] == 0
    # profile is named by the stamp anyway; a list given equal to its default is not listed
    assert ST.changed_parameters(shell) == {"limit": 40}


def test_a_run_at_the_defaults_says_so():
    shell = _shell(DECLARED, "y = 1")
    assert ST.changed_parameters(shell) == {}
    md, _ = ST.stamp_markdown(ST.make_stamp("demo", "m", "h", parameters={}))
    assert "- **parameters**: all parameters at their defaults" in md


def test_outside_a_notebook_the_stamp_says_nothing_about_parameters():
    assert ST.changed_parameters(_shell("import os")) is None
    stamp = ST.make_stamp("demo", "m", "h")  # no IPython in pytest
    assert "parameters" not in stamp and "parameters" not in ST.stamp_markdown(stamp)[0]


def test_an_edited_parameters_cell_is_read_against_the_chapter_on_disk(monkeypatch):
    """Run in Jupyter without papermill: the front end names the notebook, whose file on disk
    holds the declared defaults, so a value typed into the parameters cell is listed."""
    monkeypatch.setenv("JPY_SESSION_NAME", "/somewhere/notebooks/03_linear_probe.ipynb")
    decl = R.declared_parameters(R.read_notebook(R.notebook_path("03_linear_probe")))
    cell = "\n".join(f"{k} = {(40 if k == 'limit' else p.default)!r}" for k, p in decl.items())
    assert ST.changed_parameters(_shell(cell)) == {"limit": 40}


def test_the_box_lists_each_given_value():
    md, _ = ST.stamp_markdown(ST.make_stamp("demo", "m", "h",
                                            parameters={"limit": 40, "class_weight": "none"}))
    assert "- **parameters**: `limit = 40`, `class_weight = 'none'`" in md


NOTEBOOK = ("# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n"
            "#     name: python3\n# ---\n\n# %% tags=[\"parameters\"]\n" + DECLARED +
            "\n# %%\nfrom helpers.book.stamp import make_stamp, show_stamp\n\n"
            "stamp = make_stamp(profile, \"m\", \"h\")\nshow_stamp(stamp)\n"
            "print(\"parameters:\", stamp[\"parameters\"])\n")


def _box(executed) -> str:
    nb = json.loads(executed.read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            html = "".join(out.get("data", {}).get("text/html", ""))
            if "Provenance" in html:
                return html
    raise AssertionError("no provenance box in the executed notebook")


def test_a_run_with_given_parameters_shows_them_in_its_box(tmp_path, data_env):
    """Through the runner and a real kernel: ``-p limit 40 -p class_weight none``."""
    nb = tmp_path / "98_stamped.py"
    nb.write_text(NOTEBOOK)
    out = tmp_path / "out"
    assert R.main([str(nb), "--out", str(out), "-p", "limit", "40", "-p", "class_weight", "none"]) == 0
    box = _box(out / "98_stamped.ipynb")
    assert "<code>limit = 40</code>" in box
    assert "<code>class_weight = &#x27;none&#x27;</code>" in box
    assert "split_fractions" not in box and "profile =" not in box
    assert R.main([str(nb), "--out", str(out)]) == 0
    assert "all parameters at their defaults" in _box(out / "98_stamped.ipynb")


def test_every_chapter_page_lists_the_smoke_parameters(built_book):
    """The book's smoke run gives ``limit 40`` (and other small values) to the chapters that
    declare them: their boxes say so; a page given nothing says all are at their defaults."""
    for c in R.toc_chapters():
        decl = R.declared_parameters(R.read_notebook(R.notebook_path(c)))
        if "profile" not in decl:
            continue
        box = _box(built_book / "book" / "chapters" / f"{c}.ipynb")
        if "limit" in decl:
            assert "<code>limit = 40</code>" in box, c
        elif c == "07_results":
            assert "all parameters at their defaults" in box
