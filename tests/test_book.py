"""The book's Sphinx extension (``helpers/book/sphinx_ext.py``), without building the book."""

from helpers.book import sphinx_ext


def test_edit_and_source_buttons_point_at_the_jupytext_sources():
    repo = "https://github.com/iuxray-book/iuxray-book/edit/main/book/chapters/04_fine_tune.ipynb"
    assert sphinx_ext._source_of(repo).endswith("/edit/main/notebooks/04_fine_tune.py")


def test_download_button_keeps_the_executed_notebook_of_the_site():
    local = "../../_sources/book/chapters/04_fine_tune.ipynb"
    assert sphinx_ext._source_of(local) == local


def test_nested_button_groups_are_rewritten():
    buttons = [{"buttons": [{"url": "https://x.org/blob/main/book/chapters/01_data.ipynb"},
                            {"url": "_sources/book/chapters/01_data.ipynb"}]}]
    sphinx_ext._point_buttons_at_sources(buttons)
    urls = [b["url"] for b in buttons[0]["buttons"]]
    assert urls == ["https://x.org/blob/main/notebooks/01_data.py", "_sources/book/chapters/01_data.ipynb"]
