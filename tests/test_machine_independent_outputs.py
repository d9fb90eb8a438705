"""No output that nbval compares depends on the machine that ran it.

``test_book_nbval.py`` re-executes every chapter and compares each cell's output with the
stored one after the rules of ``tests/nbval/sanitize.cfg``. A wall-clock figure that survives
those rules (a time in minutes with no unit, in a table column) lands on either side of a
rounding boundary from one run to the next, and on a slower or busier machine the suite fails
(the results page's ``time (min)`` column did exactly that). Here every compared cell of the
executed chapters is scanned, after sanitising, for what depends on the machine:

* a table column whose header names a wall-clock, thread, memory or load quantity;
* a duration whose unit the sanitiser does not know (``12 seconds``, ``3 minutes``);
* a thread count, a load average, a peak-memory figure;
* an absolute path of the build machine (``/root``, ``/home``, ``/work``, ...) or a date.

Cells whose output is machine-dependent by nature carry the ``nbval-ignore-output`` tag and
are skipped, as nbval skips them. The benchmark page is exempt by name (:data:`RECORDED`): its
times, thread counts and load averages are read from the committed
``benchmarks/results.json``, so re-executing it reproduces them on any machine; the test
checks that it measures no time itself.
"""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import pytest

from helpers.book import runner

HERE = Path(__file__).parent
RECORDED = {"08_benchmarks": "renders benchmarks/results.json as recorded; measures nothing"}
IGNORED_TAGS = {"nbval-ignore-output", "nbval-skip"}
COMPARED_MIME = ("text/plain", "text/html")  # what nbval compares (images and LaTeX are skipped)

MACHINE_HEADER = re.compile(
    r"\b(time|minutes?|seconds?|duration|elapsed|wall|threads?|rss|memory|load|date|executed)\b"
    r"|\((s|ms|min|h|MB|GB|GiB|MiB)\)", re.IGNORECASE)
MACHINE_TEXT = {
    "duration with an unsanitised unit":
        re.compile(r"\b\d+(\.\d+)?\s*(seconds?|secs?|minutes?|mins|hours?|hrs?)\b", re.I),
    "thread count": re.compile(r"\b\d+\s+threads?\b|\bthreads?\s*[:=]\s*\d+", re.I),
    "load average": re.compile(r"load average|\bload\s*[:=]\s*\d", re.I),
    "memory figure": re.compile(r"\b\d+(\.\d+)?\s*(MiB|GiB|MB|GB)\b(?!\s*(of|disk))"),
    "build-machine path": re.compile(r"(?<![\w.])/(root|home|work|Users|opt|usr|var)/[^\s'\"<]*"),
    "date": re.compile(r"\b20\d\d-\d\d-\d\d\b"),
}


def sanitize_rules(path: Path = HERE / "nbval" / "sanitize.cfg") -> list[tuple[re.Pattern, str]]:
    """The regex/replace pairs of nbval's sanitize file, in order."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(path)
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def _html_headers(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", html, re.S)]


def compared_texts(nb: dict) -> list[tuple[int, str, str]]:
    """(cell index, mime type, sanitised text) of every output nbval compares."""
    rules = sanitize_rules()
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        if IGNORED_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                if o.get("name") == "stderr":
                    continue  # stripped before the comparison
                texts = {"stream": o.get("text", "")}
            else:
                texts = {m: o.get("data", {}).get(m, "") for m in COMPARED_MIME}
            for mime, t in texts.items():
                t = "".join(t) if isinstance(t, list) else t
                for rx, rep in rules:
                    t = rx.sub(rep, t)
                if t:
                    out.append((i, mime, t))
    return out


def machine_dependent(nb: dict) -> list[str]:
    """Every machine-dependent value left in a compared output, described for the failure."""
    problems = []
    for i, mime, text in compared_texts(nb):
        if mime == "text/html":
            for h in _html_headers(text):
                if MACHINE_HEADER.search(h):
                    problems.append(f"cell {i}: table column {h!r}")
        for what, rx in MACHINE_TEXT.items():
            for m in rx.finditer(re.sub(r"<[^>]+>", " ", text)):
                problems.append(f"cell {i} ({mime}): {what} {m.group(0)!r}")
    return problems


def _nb(cells: list[dict]) -> dict:
    return {"cells": [{"cell_type": "code", "metadata": {"tags": c.get("tags", [])},
                       "outputs": c["outputs"]} for c in cells]}


def _html(table_headers: list[str], row: list[str]) -> dict:
    head = "".join(f"<th>{h}</th>" for h in table_headers)
    body = "".join(f"<td>{v}</td>" for v in row)
    return {"output_type": "execute_result",
            "data": {"text/html": f"<table><tr>{head}</tr><tr>{body}</tr></table>"}}


def test_the_scanner_finds_the_results_page_time_column():
    """The case that failed on a slower machine: a 'time (min)' column in a compared table."""
    bad = _nb([{"outputs": [_html(["setting", "LRAP", "time (min)"], ["lp", "0.7", "0.01"])]}])
    assert machine_dependent(bad) == ["cell 0: table column 'time (min)'"]
    ignored = _nb([{"tags": ["nbval-ignore-output"], "outputs": bad["cells"][0]["outputs"]}])
    assert machine_dependent(ignored) == []


@pytest.mark.parametrize("text, found", [
    ("fitted in 12.3 s\n", False),  # sanitised to DURATION
    ("fitted in 12 seconds\n", True),
    ("ran on 2 threads\n", True),
    ("peak 9.6 GiB\n", True),
    ("wrote /root/work/outputs/demo/zero_shot.json\n", True),
    ("wrote /tmp/pytest-1/outputs/zero_shot.json\n", False),  # sanitised to TMPPATH
    ("executed 2026-12-02 04:13 UTC\n", False),  # the stamp's date, sanitised
    ("as of 2026-12-02\n", True),
    ("macro AUROC 0.612 [0.580, 0.640]\n", False),
])
def test_the_scanner_on_stream_text(text, found):
    nb = _nb([{"outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}])
    assert bool(machine_dependent(nb)) is found, machine_dependent(nb)


def test_stderr_is_not_compared():
    nb = _nb([{"outputs": [{"output_type": "stream", "name": "stderr", "text": "took 3 minutes"}]}])
    assert machine_dependent(nb) == []


@pytest.mark.book
def test_no_compared_output_depends_on_the_machine(built_book):
    problems = []
    for c in runner.toc_chapters():
        if c in RECORDED:
            src = runner.notebook_path(c).read_text()
            assert not re.search(r"perf_counter|time\.time\(|monotonic|getloadavg", src), (
                f"{c} is exempt because it only renders recorded measurements, but it measures")
            continue
        nb = json.loads((built_book / "book" / "chapters" / f"{c}.ipynb").read_text())
        problems += [f"{c}: {p}" for p in machine_dependent(nb)]
    assert not problems, ("outputs that nbval compares depend on the machine (move them to a cell "
                          "tagged nbval-ignore-output, or print them with a unit the sanitiser "
                          "knows):\n" + "\n".join(problems))
