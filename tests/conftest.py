import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def write_tgz(path: Path, members: dict[str, bytes]) -> Path:
    """A gzipped tar holding the given members (name -> bytes)."""
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


REPORT_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>{mesh}</major></MeSH>
<parentImage id="CXR{n}_IM-0001-1001"></parentImage>
</eCitation>"""


@pytest.fixture
def tiny_archive(tmp_path):
    """An archive with two good reports and one malformed XML."""
    members = {
        "ecgen-radiology/1.xml": REPORT_XML.format(n=1, findings="Heart size normal.",
                                                   impression="No acute disease.", mesh="normal").encode(),
        "ecgen-radiology/2.xml": REPORT_XML.format(n=2, findings="Cardiomegaly.",
                                                   impression="", mesh="Cardiomegaly").encode(),
        "ecgen-radiology/3.xml": b"<eCitation><uId id='CXR3'/>",  # truncated
    }
    return write_tgz(tmp_path / "reports.tgz", members)


@pytest.fixture(scope="session")
def data_env(tmp_path_factory):
    """Private IUXRAY_DATA_DIR and IUXRAY_OUTPUT_DIR for the session: tests never touch the user's caches."""
    d = tmp_path_factory.mktemp("data")
    o = tmp_path_factory.mktemp("outputs")
    old = {k: os.environ.get(k) for k in ("IUXRAY_DATA_DIR", "IUXRAY_OUTPUT_DIR")}
    os.environ["IUXRAY_DATA_DIR"] = str(d)
    os.environ["IUXRAY_OUTPUT_DIR"] = str(o)
    yield d
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def private_outputs(tmp_path_factory, data_env):
    """A fresh IUXRAY_OUTPUT_DIR for one test module: what it writes (another model, another
    profile) never reaches the session's outputs, which the book tests (nbval) re-execute
    against. The data caches stay shared."""
    old = os.environ["IUXRAY_OUTPUT_DIR"]
    os.environ["IUXRAY_OUTPUT_DIR"] = str(tmp_path_factory.mktemp("private-outputs"))
    yield Path(os.environ["IUXRAY_OUTPUT_DIR"])
    os.environ["IUXRAY_OUTPUT_DIR"] = old


@pytest.fixture(scope="session")
def label_table(data_env):
    from helpers.data.iuxray import build_label_table

    return build_label_table()


# Small parameters per chapter for the smoke runs (name -> value as on the command line).
SMOKE = {
    "n_examples": "1",
    "limit": "40",
    "n_boot": "20",
    "epochs": "1",
    "max_steps_per_epoch": "2",
    "n_seeds": "1",
}


@pytest.fixture(scope="session")
def book_env(tmp_path_factory, data_env):
    """The book's own ``IUXRAY_DATA_DIR`` and ``IUXRAY_OUTPUT_DIR`` (variable -> folder).

    ``built_book`` executes the chapters with them; a test that executes a chapter again against
    what the build left (nbval, the reproducibility of chapter 2) sets them too. No other test
    writes there, so such a test finds the build's caches and outputs whatever ran in between:
    no test depends on the order in which pytest runs them."""
    root = tmp_path_factory.mktemp("book-state")
    env = {"IUXRAY_DATA_DIR": root / "data", "IUXRAY_OUTPUT_DIR": root / "outputs"}
    for d in env.values():
        d.mkdir()
    return {k: str(v) for k, v in env.items()}


@pytest.fixture(scope="session")
def built_book(tmp_path_factory, book_env):
    """Copy the book sources, execute every chapter with SMOKE parameters (in ``book_env``),
    build with -W."""
    from helpers.book import runner as R
    from helpers.config import REPO_ROOT

    root = tmp_path_factory.mktemp("book")
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / f, root / f)
    shutil.copytree(REPO_ROOT / "book", root / "book", ignore=shutil.ignore_patterns("chapters"))
    shutil.copytree(REPO_ROOT / "_static", root / "_static")
    # chapters show the helpers' code beside their equations ({literalinclude} ../../helpers/...)
    shutil.copytree(REPO_ROOT / "helpers", root / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    chapters = R.toc_chapters()
    decl = set()
    for c in chapters:
        decl |= set(R.declared_parameters(R.read_notebook(R.notebook_path(c))))
    args = [x for k, v in SMOKE.items() if k in decl for x in ("-p", k, v)]
    before = {k: os.environ.get(k) for k in book_env}
    os.environ.update(book_env)
    try:
        rc = R.main([*chapters, "--out", str(root / "book" / "chapters"), *args])
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert rc == 0
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root), "-W", "--keep-going"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root




BOOK_FIXTURES = {"built_book", "book_env", "site"}
"""Fixtures that execute the chapters: a test that uses one is in the ``book`` tier, whatever
its own markers say, so ``pytest -m "not book"`` never builds the book."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BOOK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.book)
