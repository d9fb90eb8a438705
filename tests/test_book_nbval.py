"""Re-executing a chapter prints what it printed the first time (nbval).

The smoke build executes every chapter once (``built_book``); here nbval executes each copy
again, in a fresh kernel, and compares every cell's output with the stored one after
sanitising what may legitimately differ (tests/nbval/sanitize.cfg: dates, durations, memory
addresses, temporary paths; a cell whose output says whether a cache was hit carries the
``nbval-ignore-output`` tag). Progress bars and warnings go to stderr, which is not part of a
chapter's result: they are switched off for the re-run and stripped from the reference. A
chapter whose numbers change between two runs with the same inputs fails here.

The re-execution starts from exactly the data and caches the first execution left: both run
with the book's own data and output folders (``book_env``), which no other test writes, so
tests that run between the two executions (another model, another profile, a rebuilt shared
cache) cannot change what it finds, in whatever order pytest runs them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.book import runner

HERE = Path(__file__).parent


def _strip_stderr(src: Path, dst: Path) -> None:
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = [o for o in cell.get("outputs", [])
                               if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    dst.write_text(json.dumps(nb))


@pytest.mark.book
def test_chapters_reproduce_their_outputs_under_nbval(built_book, book_env, tmp_path):
    """One nbval run per chapter, with ``JPY_SESSION_NAME`` naming it as Jupyter does for an
    open notebook: nbval executes cells without the kernel's input history, so the provenance
    box finds the chapter's declared defaults the way it does in a reader's Jupyter session."""
    failures = []
    for c in runner.toc_chapters():
        nb = tmp_path / f"{c}.ipynb"
        _strip_stderr(built_book / "book" / "chapters" / f"{c}.ipynb", nb)
        env = {**os.environ, **book_env, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
               "JPY_SESSION_NAME": str(nb)}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
             "--nbval-current-env", "--nbval-sanitize-with", str(HERE / "nbval" / "sanitize.cfg"),
             "--nbval-cell-timeout", "900", str(nb)],
            capture_output=True, text=True, env=env, cwd=tmp_path)
        if proc.returncode != 0:
            out = proc.stdout if len(proc.stdout) < 8000 else (
                proc.stdout[:4000] + "\n[...]\n" + proc.stdout[-4000:])  # every failing cell's name
            failures.append(f"{c}:\n{out}{proc.stderr[-1000:]}")
    assert not failures, "\n\n".join(failures)
