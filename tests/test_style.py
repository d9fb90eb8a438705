"""The code reads as the style guide asks: short functions, no import cycles, notebooks whose
code fits the page and names modules by their names, parameters papermill can parse."""

import ast
from pathlib import Path

import jupytext
import pytest

from helpers import run as R
from helpers.config import REPO_ROOT

HELPERS = sorted((REPO_ROOT / "helpers").glob("*.py"))
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.py"))
MAX_FUNCTION_LINES = 80
MAX_CODE_LINE = 88


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_helpers_is_longer_than_80_lines():
    long = [f"{p.name}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for p in HELPERS for fn in _functions(ast.parse(p.read_text()))
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _imported_helpers(path: Path) -> set[str]:
    """Every helpers module that ``path`` imports, at module level or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                out.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                out.update(a.name for a in node.names)
            elif node.module == "helpers":
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("helpers."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("helpers."))
    return out - {path.stem}


def test_no_import_cycle_among_helpers():
    names = {p.stem for p in HELPERS}
    graph = {p.stem: _imported_helpers(p) & names for p in HELPERS}
    cycles = []

    def visit(node, stack):
        for nxt in graph[node]:
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for n in sorted(graph):
        if n not in done:
            visit(n, [n])
    assert not cycles, f"import cycles among helpers: {sorted(set(cycles))}"


def _code_cells(path: Path):
    return [c for c in jupytext.read(path).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_code_fits_the_page(path):
    long = [line for c in _code_cells(path) for line in c.source.splitlines()
            if len(line) > MAX_CODE_LINE]
    assert not long, f"{path.name}: code lines over {MAX_CODE_LINE} characters: {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_import_modules_by_their_names(path):
    aliased = []
    for c in _code_cells(path):
        try:
            tree = ast.parse(c.source)
        except SyntaxError:
            continue  # cell magics
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = getattr(node, "module", None) or ""
                for a in node.names:
                    full = f"{mod}.{a.name}" if mod else a.name
                    if full.startswith("helpers") and a.asname and a.asname != a.name:
                        aliased.append(f"{full} as {a.asname}")
    assert not aliased, f"{path.name} renames helpers modules: {aliased}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_parses_every_declared_parameter(path):
    """papermill reads the parameters cell with its own regex; a '=' in a comment makes it skip
    the line, warn 'Unable to parse line' and call the parameter unknown when it is passed."""
    from papermill.inspection import _infer_parameters

    nb = jupytext.read(path)
    for c in nb.cells:
        c.metadata.setdefault("tags", [])
    seen = {p.name for p in _infer_parameters(nb)}
    assert set(R.declared_parameters(nb)) <= seen


def _shown_helpers():
    """(notebook, helpers file, object) of every ``literalinclude`` with ``:pyobject:``."""
    import re

    for nb in NOTEBOOKS:
        text = nb.read_text()
        for m in re.finditer(r"literalinclude\}\s+\.\./\.\./(helpers/\S+\.py)\s*\n#?\s*:pyobject:\s*(\S+)",
                             text):
            yield nb.name, m.group(1), m.group(2)


def _object_source(path: Path, dotted: str) -> list[str]:
    lines = path.read_text().splitlines()
    nodes = ast.parse(path.read_text()).body
    node = None
    for part in dotted.split("."):
        node = next(n for n in nodes if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                    and n.name == part)
        nodes = node.body
    return lines[node.lineno - 1:node.end_lineno]


@pytest.mark.parametrize("nb, path, obj", list(_shown_helpers()))
def test_helpers_shown_in_pages_fit_the_page(nb, path, obj):
    """Code a page includes from helpers scrolls sideways above 88 columns, like its cells."""
    long = [ln for ln in _object_source(REPO_ROOT / path, obj) if len(ln) > MAX_CODE_LINE]
    assert not long, f"{nb} shows {path}:{obj} with lines over {MAX_CODE_LINE} characters: {long}"
