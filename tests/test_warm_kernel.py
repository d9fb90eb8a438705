"""A chapter's kernel started ahead (the runner's warm kernels): imports done before the
chapter arrives, and nothing else differs from a fresh kernel."""

import json

import nbformat
import pytest

from helpers.book import runner
from helpers.book.artefacts import QUICK_ENV


def test_chapter_imports_reads_every_import_form():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import numpy as np\nimport os.path"),
        nbformat.v4.new_code_cell("from helpers.book import display, stamp\n"
                                  "from .local import x\n%matplotlib inline"),
        nbformat.v4.new_code_cell("def f():\n    import json\n    return json"),
        nbformat.v4.new_markdown_cell("import pandas"),
    ])
    assert runner.chapter_imports(nb) == [
        "numpy", "os.path", "json"]  # the magic cell does not parse: skipped
    nb.cells[1].source = "from helpers.book import display, stamp\nfrom .local import x"
    assert runner.chapter_imports(nb) == [
        "numpy", "os.path", "helpers.book", "helpers.book.display", "helpers.book.stamp",
        "json"]


def test_warm_imports_skips_what_is_not_a_module():
    import sys

    runner.warm_imports(["json", "helpers.config.get_profile", "no_such_package_xyz",
                         "helpers.no_such_module"])
    assert "json" in sys.modules and "no_such_package_xyz" not in sys.modules


def test_every_chapter_warms_its_own_imports():
    for c in runner.toc_chapters():
        mods = runner.warm_modules(c)
        assert set(runner.WARM_ALWAYS) <= set(mods)
        nb = runner.read_notebook(runner.notebook_path(c))
        assert ("open_clip" in mods) == runner.loads_study(nb), c


@pytest.mark.book
def test_a_warm_kernel_runs_the_chapter_as_a_fresh_one(tmp_path):
    src = tmp_path / "99_warm.py"
    src.write_text(
        "# %%\nimport os\nimport sys\n\n"
        "print('imported ahead:', 'sklearn.linear_model' in sys.modules)\n"
        "print('names bound ahead:', sorted(set(globals()) & {'json', 'sklearn', 'helpers'}))\n"
        "print('quick:', os.environ.get(%r, ''))\n"
        "# %%\nimport json\nimport sklearn.linear_model\n" % QUICK_ENV)
    km = runner.start_warm_kernel(str(src), quick="limit=5")
    try:
        out = runner.execute(str(src), {}, tmp_path / "out", progress=False, km=km)
    finally:
        runner.stop_kernel(km)
    cells = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in cells] == [1, 2]  # as in a fresh kernel
    text = json.dumps(cells)
    print(text)
    # the last cell's import ran before the first cell; it bound no name
    assert "imported ahead: True" in text
    assert "names bound ahead: []" in text
    assert "quick: limit=5" in text
    assert not km.has_kernel


def test_the_runner_warms_the_next_chapter_unless_told_not_to():
    assert runner.build_parser().parse_args([]).warm is True
    assert runner.build_parser().parse_args(["--no-warm"]).warm is False
