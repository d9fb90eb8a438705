"""What ``make bench`` records about the book, on small fakes (no chapter is run): each chapter's
time and load from the runner's record, its three costliest cells from papermill's per-cell
durations, the imports a ``load_study`` call triggers, and the previous run kept beside the new."""

import json

import pytest

from helpers.bench import timing as B
from helpers.bench import book_costs as BB
from helpers.bench import report as R
from helpers.book import runner as RUN


def _notebook(path, durations, end="2026-12-02T05:01:30.5+00:00", headings=None):
    cells, headings = [], headings or {}
    for i, d in enumerate(durations, 1):
        if i in headings:
            cells.append({"cell_type": "markdown", "metadata": {}, "source": f"## {headings[i]}\ntext"})
        meta = {"papermill": {"duration": d}} if d is not None else {}
        cells.append({"cell_type": "code", "metadata": meta, "outputs": [], "execution_count": i,
                      "source": f"# cell {i}\nimport os\nglue('x', 1)\nwork_{i} = run({i})\n"})
    nb = {"cells": cells, "metadata": {"papermill": {"end_time": end}}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_top_cells_are_the_longest_with_position_section_and_first_statement(tmp_path):
    nb = _notebook(tmp_path / "a.ipynb", [0.5, 12.0, None, 3.0, 7.5], headings={2: "Fitting", 5: "Control"})
    got = BB.top_cells(nb)
    assert [(c["cell"], c["seconds"]) for c in got["cells"]] == [(2, 12.0), (5, 7.5), (4, 3.0)]
    assert [c["section"] for c in got["cells"]] == ["Fitting", "Control", "Fitting"]
    assert got["cells"][0]["code"] == "work_2 = run(2)"  # imports, glue and comments passed over
    assert got["cells_s"] == pytest.approx(23.0)


def test_cell_label_falls_back_and_shortens():
    assert BB.cell_label("# only a comment\n") == "(comment only)"
    assert BB.cell_label("import numpy as np\n") == "import numpy as np"
    assert BB.cell_label("x = " + "1" * 100, width=20) == "x = " + "1" * 15 + "…"


def test_chapter_costs_join_the_runners_record_and_the_executed_notebooks(tmp_path):
    ex = tmp_path / "chapters"
    ex.mkdir()
    _notebook(ex / "01_data.ipynb", [1.0, 30.0, 2.0, 4.0])
    _notebook(ex / "02_zero_shot.ipynb", [5.0], end="2026-12-01T09:00:00+00:00")  # another run
    times = tmp_path / "run_times.json"
    for c, s in (("01_data", 40.0), ("02_zero_shot", 90.0)):
        RUN.record_time(times, c, s, {"profile": "demo"}, load=(1.2, 2.5))
    rec = json.loads(times.read_text())
    rec["01_data"]["date"] = "2026-12-02 05:02 UTC"
    times.write_text(json.dumps(rec))
    got = BB.chapter_costs(times=times, executed=ex)
    assert got["chapters_s"] == {"01_data": 40.0, "02_zero_shot": 90.0} and got["total_s"] == 130.0
    assert not got["complete"] and not got["smoke_params"]
    one = got["chapters"]["01_data"]
    assert one["load_avg_1min_start"] == 1.2 and one["load_avg_1min_end"] == 2.5
    assert [c["cell"] for c in one["top_cells"]] == [2, 4, 3] and one["cells_from_this_run"]
    assert not got["chapters"]["02_zero_shot"]["cells_from_this_run"]
    assert BB.chapter_costs(times=tmp_path / "none.json", executed=ex) is None


def test_the_runner_records_the_load_when_given():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "t.json"
        RUN.record_time(f, "01_data", 1.0, {})
        RUN.record_time(f, "02_zero_shot", 2.0, {}, load=(0.5, 1.5))
        t = json.loads(f.read_text())
    assert "load_avg_1min_start" not in t["01_data"]
    assert (t["02_zero_shot"]["load_avg_1min_start"], t["02_zero_shot"]["load_avg_1min_end"]) == (0.5, 1.5)


def test_imports_of_the_call_are_read_after_the_mark():
    err = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:      1000 |    2000000 | torch",
        BB.CALL_MARK,
        "import time:       500 |     300000 |   open_clip.model",  # nested: not top level
        "import time:       200 |     900000 | open_clip",
        "import time:       100 |      50000 | helpers.phantoms.rendering",
        "some other line"])
    got = BB.call_imports(err)
    assert [t["module"] for t in got["top"]] == ["open_clip", "helpers.phantoms.rendering"]
    assert got["total_s"] == pytest.approx(0.95)
    assert BB.call_imports("no mark at all") == {"total_s": 0, "top": []}


def _entry(key, date, book_s, probe=True):
    e = {"machine": {"key": key, "device": "cpu", "date": date}, "book": {
        "chapters_s": {"01_data": book_s}, "total_s": book_s, "complete": False, "smoke_params": False,
        "chapters": {"01_data": {"seconds": book_s, "load_avg_1min_start": 1.0, "load_avg_1min_end": 1.1,
                                 "top_cells": [{"cell": 3, "seconds": book_s / 2, "code": "x = f()",
                                                "section": "Method"}],
                                 "cells_from_this_run": True}}},
         "load_study": {"repeats": 3, "call_s_median": book_s / 100, "call_s_min": 0.5, "call_s_max": 0.9,
                        "import_s_median": 2.0, "first_s": 3.0, "load_avg_1min": [1.0, 1.2],
                        "model_loaded": False, "imports_during_call": {"total_s": 0.1, "top": [
                            {"module": "helpers.data.iuxray", "seconds": 0.05}]}}}
    if probe:
        e["probe_fit"] = {}
    return e


def test_a_new_run_keeps_the_previous_one_beside_it():
    key = "cpu: X (2 cores)"
    old = {"devices": {key: {**_entry(key, "then", 80.0), "previous": {"very": "old"},
                             "full_profile_run": {"label": "kept"}},
                       "cuda: Y": {"kept": True}}}
    new = _entry(key, "now", 60.0)
    devices = B.merge_entry(old, new)
    assert devices["cuda: Y"] == {"kept": True} and devices[key] is new
    assert new["previous"]["machine"]["date"] == "then" and "previous" not in new["previous"]
    assert new["full_profile_run"] == {"label": "kept"}
    first = _entry(key, "first", 70.0)
    assert "previous" not in B.merge_entry({"devices": {key: {"full_profile_run": {}}}}, first)[key]


def test_the_page_tables_show_this_run_beside_the_previous():
    key = "cpu: X (2 cores)"
    new = _entry(key, "now", 60.0)
    new["previous"] = _entry(key, "then", 80.0)
    devices = {key: new, "cuda: Y": {"machine": {"key": "cuda: Y"}}}
    ch = R.book_chapters(devices)
    assert ch.loc[(key, "01_data"), "seconds"] == 60.0 and ch.loc[(key, "01_data"), "previous run (s)"] == 80.0
    assert ch.loc[(key, "total"), "seconds"] == 60.0 and ch.loc[(key, "01_data"), "load at end"] == 1.1
    cells = R.costliest_cells(devices)
    row = cells.loc[(key, "01_data", 1)]
    assert (row["seconds"], row["previous run: seconds"], row["section"]) == (30.0, 40.0, "Method")
    ls = R.load_study_times(devices)
    assert list(ls.index) == [(key, "this run"), (key, "previous run")]
    assert ls.loc[(key, "this run"), "call s (median)"] == 0.6
    assert ls.loc[(key, "this run"), "slowest import"] == "helpers.data.iuxray (0.05 s)"
    assert ls.loc[(key, "this run"), "load average"] == 1.2
    assert R.book_chapters({}).empty and R.costliest_cells({}).empty and R.load_study_times({}).empty
