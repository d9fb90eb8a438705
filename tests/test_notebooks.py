"""Chapters are executed with small parameters and the book is built from them (-W)."""

import json
import os
from pathlib import Path

import jupytext

from helpers.book import runner as R

from helpers.config import REPO_ROOT

def test_paired_ipynb_matches_py_source():
    for py in sorted((REPO_ROOT / "notebooks").glob("[0-9]*.py")):
        ipynb = py.with_suffix(".ipynb")
        assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {py}`"
        a, b = jupytext.read(py), jupytext.read(ipynb)
        assert [c.source for c in a.cells] == [c.source for c in b.cells], (
            f"{py.name} and {ipynb.name} differ: run `jupytext --sync {py}`")


def test_every_chapter_executed_without_errors(built_book):
    for c in R.toc_chapters():
        nb = json.loads((built_book / "book" / "chapters" / f"{c}.ipynb").read_text())
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                assert out.get("output_type") != "error", (c, out)


def test_pages_show_the_stamp(built_book):
    for c in R.toc_chapters():
        if "profile" not in R.declared_parameters(R.read_notebook(R.notebook_path(c))):
            continue  # the benchmark page names its machine instead
        html = (built_book / "_build" / "html" / "book" / "chapters" / f"{c}.html").read_text()
        assert "Provenance" in html and "Executed with profile" in html and "demo" in html


def test_chapter_1_numbers_come_from_the_run(built_book):
    html = (built_book / "_build" / "html" / "book" / "chapters" / "01_data.html").read_text()
    assert "3955" in html  # glued from the loader, not typed


def _metrics_without_date(path):
    d = json.loads(path.read_text())
    d["stamp"].pop("date")
    return d


def test_chapter_2_metrics_are_reproducible(built_book, book_env, tmp_path, monkeypatch):
    """Executing chapter 2 twice gives identical metrics JSON apart from the time stamp."""
    from helpers.book.artefacts import Artefacts

    for k, v in book_env.items():  # where the build wrote its metrics
        monkeypatch.setenv(k, v)

    path = Artefacts.of("demo", quick=True).metrics("zs")  # a limited run: quick/
    first = _metrics_without_date(path)
    rc = R.main(["02_zero_shot", "--out", str(tmp_path), "-p", "limit", "40", "-p", "n_boot", "20"])
    assert rc == 0
    second = _metrics_without_date(path)
    assert first == second
