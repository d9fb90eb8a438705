"""Progress bars reach the runner's console and never the executed page."""

import json

import pytest

from helpers.book import progress
from helpers.book import runner


def test_bar_writes_to_the_process_stderr(capfd):
    for _ in progress.bar(range(3), desc="counting", mininterval=0):
        pass
    err = capfd.readouterr().err
    assert "counting" in err


@pytest.mark.book
def test_a_chapter_progress_bar_stays_on_the_console(tmp_path, capfd):
    src = tmp_path / "99_progress.py"
    src.write_text("# %%\nfrom helpers.book.progress import bar\n\n"
                   "for _ in bar(range(200), desc='long work', mininterval=0):\n    pass\n"
                   "print('finished')\n")
    out = runner.execute(str(src), {}, tmp_path / "out", progress=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    text = json.dumps(outputs)
    assert "finished" in text and "long work" not in text  # the page: the result only
    assert "long work" in capfd.readouterr().err  # the console: the bar
