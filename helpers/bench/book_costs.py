"""What the demo book costs, for ``make bench``: each chapter's time, its three costliest cells,
the machine's load, and how long a chapter waits for ``load_study``.

* Chapter times and load come from the runner's record, ``outputs/<profile>/run_times.json``
  (:func:`helpers.book.runner.record_time`: seconds, parameters, date, and the 1-minute load average when
  the chapter started and ended).
* The costliest cells come from the executed notebooks (``book/chapters/*.ipynb``), where
  papermill stores each cell's wall time in ``metadata.papermill.duration``. A notebook is
  matched to its timed run by papermill's end time, and marked when it is from another run.
* ``load_study`` is timed in fresh processes (:func:`load_study_time`), as a chapter's kernel
  meets it: once to warm the caches, then ``repeats`` times, and once more under
  ``python -X importtime`` to name the imports the call itself triggers.

Nothing here runs a chapter: the book is timed by the runner when it runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers.book.runner import EXECUTED_DIR, toc_chapters
from helpers.config import REPO_ROOT, output_dir

TOP_CELLS = 3
"""How many of each chapter's costliest cells are recorded."""
CALL_MARK = "--- load_study call starts ---"
"""Written to stderr between the import of :mod:`helpers.book.study` and the call, so the imports that
``python -X importtime`` lists after it are the ones the call triggered."""

_SCRIPT = """
import json, os, sys, time
t0 = time.perf_counter()
from helpers.book.study import load_study
t1 = time.perf_counter()
print({mark!r}, file=sys.stderr, flush=True)
load = os.getloadavg()[0]
study = load_study({profile!r}, limit={limit!r})
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "call_s": t2 - t1, "load_avg_1min": load,
                  "model_loaded": study.loader.loaded}}))
"""


_NOT_WORK = ("import ", "from ", "glue(", "@", "%")
"""First lines that do not say what a cell does: imports, glue calls, decorators, magics."""


def cell_label(source: str, width: int = 70) -> str:
    """What a cell does, in one line: its first statement that is not a comment, an import, a
    ``glue`` call, a decorator or a magic (else its first line of code), at most ``width``."""
    lines = [ln.strip() for ln in source.splitlines()]
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    work = [ln for ln in code if not ln.startswith(_NOT_WORK)]
    s = (work or code or ["(comment only)"])[0]
    return s if len(s) <= width else s[:width - 1] + "…"


def _heading(source: str) -> str | None:
    """The last heading of a markdown cell (its text, without the ``#``), if it has one."""
    heads = [ln.lstrip("#").strip() for ln in source.splitlines() if ln.startswith("#")]
    return heads[-1] if heads else None


def top_cells(notebook: Path, n: int = TOP_CELLS) -> dict[str, Any]:
    """The ``n`` code cells of an executed notebook with the longest papermill duration:
    ``{"cells": [{"cell", "seconds", "code", "section"}], "cells_s", "end_time"}`` (``cell``:
    position among the notebook's code cells, from 1; ``section``: the heading above it;
    ``cells_s``: the sum over every cell)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    timed, section, i = [], None, 0
    for c in nb.get("cells", []):
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        if c.get("cell_type") == "markdown":
            section = _heading(src) or section
            continue
        if c.get("cell_type") != "code":
            continue
        i += 1
        d = c.get("metadata", {}).get("papermill", {}).get("duration")
        if isinstance(d, (int, float)):
            timed.append({"cell": i, "seconds": float(d), "code": cell_label(src), "section": section})
    top = sorted(timed, key=lambda x: -x["seconds"])[:n]
    return {"cells": top, "cells_s": sum(x["seconds"] for x in timed),
            "end_time": nb.get("metadata", {}).get("papermill", {}).get("end_time")}


def _same_run(end_time: str | None, date: str | None) -> bool:
    """Whether papermill's end time (ISO) and the runner's record (``%Y-%m-%d %H:%M UTC``, written
    just after the chapter ended) name the same run: within two minutes of each other."""
    if not end_time or not date:
        return False
    try:
        end = dt.datetime.fromisoformat(end_time.replace("Z", "+00:00"))
        rec = dt.datetime.strptime(date, "%Y-%m-%d %H:%M UTC").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return False
    return abs((rec - end).total_seconds()) <= 120


def chapter_costs(profile: str = "demo", executed: Path | None = None,
                  times: Path | None = None) -> dict | None:
    """Each book chapter's time, load and costliest cells, from ``times`` (default the profile's
    ``run_times.json``) and the executed notebooks in ``executed`` (default ``book/chapters``);
    ``None`` when nothing was timed. Keeps the keys the benchmark file always had
    (``chapters_s``, ``total_s``, ``complete``, ``smoke_params``) and adds ``chapters``."""

    f = times or output_dir(profile) / "run_times.json"
    if not f.is_file():
        return None
    t = json.loads(f.read_text())
    folder = executed or EXECUTED_DIR
    chapters = [c for c in toc_chapters() if c in t]
    detail = {}
    for c in chapters:
        rec = t[c]
        d = {"seconds": rec["seconds"], "date": rec.get("date"),
             "load_avg_1min_start": rec.get("load_avg_1min_start"),
             "load_avg_1min_end": rec.get("load_avg_1min_end"),
             "quick": bool(rec.get("params", {}).get("limit"))}
        nb = folder / f"{c}.ipynb"
        if nb.is_file():
            cells = top_cells(nb)
            d.update(top_cells=cells["cells"], cells_s=cells["cells_s"],
                     cells_from_this_run=_same_run(cells["end_time"], rec.get("date")))
        detail[c] = d
    return {"chapters_s": {c: detail[c]["seconds"] for c in chapters},
            "total_s": sum(detail[c]["seconds"] for c in chapters),
            "complete": len(chapters) == len(toc_chapters()),
            "smoke_params": any(d["quick"] for d in detail.values()), "chapters": detail}


def _one_process(profile: str, limit: int | None, importtime: bool = False) -> tuple[dict, str]:
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + [
        "-c", _SCRIPT.format(mark=CALL_MARK, profile=profile, limit=limit)]
    p = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ.copy())
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"timing load_study({profile!r}) failed (exit {p.returncode}):\n{tail}")
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def call_imports(stderr: str, n: int = 5) -> dict[str, Any]:
    """From ``python -X importtime`` output: the imports after :data:`CALL_MARK` (those the call
    triggered), as their total and the ``n`` top-level ones with the largest cumulative time."""
    lines = stderr.split(CALL_MARK, 1)[1].splitlines() if CALL_MARK in stderr else []
    top = []
    for ln in lines:
        if not ln.startswith("import time:") or "|" not in ln:
            continue
        _, cum, name = ln.split("|", 2)
        if not name.startswith(" ") or name.startswith("  "):  # nested imports start with 2+ spaces
            continue
        if cum.strip().isdigit():
            top.append((name.strip(), int(cum) / 1e6))
    top.sort(key=lambda x: -x[1])
    return {"total_s": sum(s for _, s in top), "top": [{"module": m, "seconds": s} for m, s in top[:n]]}


def load_study_time(profile: str = "demo", repeats: int = 5, limit: int | None = None) -> dict:
    """``load_study(profile)`` warm, each time in a fresh process as a chapter's kernel meets it:
    a first run (which builds any cache that is missing; its time is kept as ``first_s``), then
    ``repeats`` timed runs, then one under ``-X importtime``. Records the import of
    :mod:`helpers.book.study` (torch included) and the call separately, with the load average."""
    first, _ = _one_process(profile, limit)
    runs = [_one_process(profile, limit)[0] for _ in range(repeats)]
    traced, stderr = _one_process(profile, limit, importtime=True)
    calls = [r["call_s"] for r in runs]
    return {"profile": profile, "limit": limit, "repeats": repeats, "first_s": first["call_s"],
            "call_s_median": statistics.median(calls), "call_s_min": min(calls),
            "call_s_max": max(calls), "import_s_median": statistics.median(r["import_s"] for r in runs),
            "load_avg_1min": [r["load_avg_1min"] for r in runs],
            "model_loaded": any(r["model_loaded"] for r in runs),
            "imports_during_call": call_imports(stderr)}
