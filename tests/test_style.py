"""The code reads as the style guide asks: short functions, no import cycles, notebooks whose
code fits the page and names modules by their names, parameters papermill can parse."""

import ast
import re
from pathlib import Path

import jupytext
import pytest

from helpers.book import runner as R
from helpers.config import REPO_ROOT

HELPERS = sorted(p for p in (REPO_ROOT / "helpers").rglob("*.py") if p.name != "__init__.py")
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


def module_name(path: Path) -> str:
    """``helpers.analysis.metrics`` for helpers/analysis/metrics.py."""
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)


MODULES = {module_name(p) for p in HELPERS}


def _helpers_imports(tree: ast.AST, within_functions: bool | None = None):
    """(node, imported helpers module) of every import of a helpers module in ``tree``; with
    ``within_functions`` True (False), only those inside (outside) a function body."""
    inside = set()
    for fn in _functions(tree):
        inside.update(id(n) for n in ast.walk(fn) if n is not fn)
    for node in ast.walk(tree):
        if within_functions is not None and (id(node) in inside) != within_functions:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in MODULES:
                yield node, node.module
            elif node.module == "helpers" or f"{node.module}.x".startswith("helpers."):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        yield node, f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    yield node, a.name


def test_helpers_import_absolutely():
    rel = [f"{module_name(p)}:{n.lineno}" for p in HELPERS for n in ast.walk(ast.parse(p.read_text()))
           if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not rel, f"relative imports (use helpers.<package>.<module>): {rel}"


def test_no_import_cycle_among_helpers():
    graph = {module_name(p): {m for _, m in _helpers_imports(ast.parse(p.read_text()))}
             - {module_name(p)} for p in HELPERS}
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


LAZY_HELPERS_IMPORTS: dict[tuple[str, str], str] = {
}
"""(module, helpers module it imports inside a function) -> why the import must be lazy. Every
other import of a helpers module stands at the head of the module that needs it."""


def test_helpers_imports_stand_at_module_heads():
    lazy = sorted({(module_name(p), m) for p in HELPERS
                   for _, m in _helpers_imports(ast.parse(p.read_text()), within_functions=True)}
                  - set(LAZY_HELPERS_IMPORTS))
    assert not lazy, ("helpers modules imported inside a function (move the import to the "
                      f"module's head, or list it in LAZY_HELPERS_IMPORTS with its reason): {lazy}")


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_no_two_module_names_differ_by_a_spelling():
    """localising / localization, run / runs: names two edits apart read as one name."""
    names = sorted({m.rsplit(".", 1)[-1] for m in MODULES}
                   | {p.name for p in (REPO_ROOT / "helpers").iterdir() if p.is_dir()
                      and (p / "__init__.py").is_file()})
    close = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
             if _edit_distance(a, b) <= 2]
    assert not close, f"module or package names within two edits of each other: {close}"


def test_the_architecture_is_the_folder_tree():
    """helpers/ holds the subpackages and only the few modules every floor uses."""
    top = sorted(p.stem for p in (REPO_ROOT / "helpers").glob("*.py") if p.name != "__init__.py")
    assert top == ["config", "storage", "workers"], top


def _code_cells(path: Path):
    return [c for c in jupytext.read(path).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_code_fits_the_page(path):
    long = [line for c in _code_cells(path) for line in c.source.splitlines()
            if len(line) > MAX_CODE_LINE]
    assert not long, f"{path.name}: code lines over {MAX_CODE_LINE} characters: {long}"


MAX_PROSE_WORDS = 2200
"""A chapter sized for one class (about 45 minutes): its markdown, exercises included, in
whitespace-separated words, without display equations and included helper code."""


def prose_words(path: Path) -> int:
    """The words a reader reads in a chapter's markdown cells (see :data:`MAX_PROSE_WORDS`)."""
    text = "\n".join(c.source for c in jupytext.read(path).cells if c.cell_type == "markdown")
    text = re.sub(r"```\{literalinclude\}.*?```", "", text, flags=re.S)
    return len(re.sub(r"\$\$.*?\$\$", "", text, flags=re.S).split())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapters_fit_one_class(path):
    words = prose_words(path)
    assert words <= MAX_PROSE_WORDS, (f"{path.name}: {words} words of prose, more than one "
                                      f"class reads ({MAX_PROSE_WORDS}); split the chapter "
                                      "along a seam, as chapters 1/1b and 6/6b are")


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
