"""Execute the book's chapters with papermill: ``python -m helpers.book.runner``.

Examples::

    python -m helpers.book.runner                         # every chapter in _toc.yml order, demo profile
    python -m helpers.book.runner 01_data -p uncertain_policy negative
    python -m helpers.book.runner --profile full          # the real study (see "Reproducing the paper")
    python -m helpers.book.runner --list-params           # every chapter's parameters and defaults

Chapters are the jupytext sources ``notebooks/NN_name.py``; executed copies are written to
``book/chapters/NN_name.ipynb`` (where the book reads them), atomically: a chapter that
fails leaves ``NN_name.failed.ipynb`` beside it and the previous good copy in place.

Every ``-p name value`` is checked before anything runs: the name must be a parameter
that a selected chapter declares in its ``parameters`` cell, the value must parse as the type
of that parameter's default (int, float, bool, str, list; floats finite) and satisfy the
parameter's choices or range (:mod:`helpers.book.params`, shown by ``--list-params``). A parameter is
given to each selected chapter that declares it; a data parameter (``uncertain_policy``,
``split_seed``, ...) is refused when a selected chapter loads the study without declaring it,
since that chapter would silently use the default. Path parameters are passed on as absolute
paths (relative ones are read from the current folder).

A parameter given twice is refused, and so is one that the profile would ignore (``image_dir``
or ``annotations`` on ``demo``, ``style`` on ``full``: :data:`helpers.book.params.PROFILE_IMAGES`).

Before the first chapter runs, every folder the run writes is checked (a read-only one is named
at once, not after minutes of work) and locked: the executed-notebook folder (``--out``) and
each (profile, model) output folder (:mod:`helpers.book.artefacts`), one lock per folder
(:func:`helpers.storage.folder_lock`). A second run that would write a folder the first one holds is
refused with a message naming the holder. A quick run (``limit`` > 0, or ``n_boot`` below
:data:`helpers.book.artefacts.FULL_N_BOOT`) writes to the pair's ``quick/`` folder, never over a full
run's results; the runner tells the chapter's kernel why it is quick
(:data:`helpers.book.artefacts.QUICK_ENV`).

Warnings raised inside a chapter appear in its page (the cell's stderr) and, after the chapter,
on the runner's console (one line each, naming the chapter).

A chapter that fails stops the run with one message naming it and its ``.failed.ipynb`` copy.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from helpers.book.params import ParameterError  # re-exported: a bad name, type, choice or range
from helpers.book import params as P
from helpers.book.artefacts import Artefacts, QUICK_ENV, quick_reason
from helpers.config import PROFILES, REPO_ROOT, data_dir, get_profile, output_dir
from helpers.storage import (
    FolderLockedError,
    FolderNotWritableError,
    atomic_write_json,
    check_writable,
    folder_lock,
    read_json_cache,
)

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
EXECUTED_DIR = REPO_ROOT / "book" / "chapters"
KERNEL_NAME = "iuxray-book"




@dataclass(frozen=True)
class Param:
    """One declared notebook parameter: its name, default value and a comment, if any."""

    name: str
    default: Any
    comment: str

    @property
    def type_name(self) -> str:
        d = self.default
        if isinstance(d, (list, tuple)) and len({type(x) for x in d}) == 1:
            return f"list of {type(d[0]).__name__}"
        return type(d).__name__ if d is not None else "any"


def toc_chapters(toc: Path = REPO_ROOT / "_toc.yml") -> list[str]:
    """Chapter names (``NN_name``) in the order of ``_toc.yml`` entries under book/chapters/."""
    import yaml

    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "file" and isinstance(v, str) and v.startswith("book/chapters/"):
                    names.append(Path(v).stem)
                else:
                    walk(v)
        elif isinstance(node, list):
            for x in node:
                walk(x)

    walk(yaml.safe_load(toc.read_text()))
    return names


def notebook_path(name: str) -> Path:
    """The jupytext source of a chapter given as ``01_data``, ``01_data.py`` or a path."""
    p = Path(name)
    if p.suffix in (".py", ".ipynb") and p.exists():
        return p.with_suffix(".py") if p.with_suffix(".py").exists() else p
    cand = NOTEBOOK_DIR / f"{p.stem}.py"
    if not cand.exists():
        valid = ", ".join(sorted(x.stem for x in NOTEBOOK_DIR.glob("[0-9]*.py")))
        raise FileNotFoundError(f"no chapter {name!r} (looked for {cand}); chapters: {valid}")
    return cand


def read_notebook(path: Path):
    """The chapter as an nbformat notebook (jupytext reads the py:percent source)."""
    import jupytext

    return jupytext.read(path)


def declared_parameters(nb) -> dict[str, Param]:
    """Parameters declared in the cell tagged ``parameters``: name -> :class:`Param`.

    Each parameter is a top-level assignment of a literal (``name = 3  # comment``).
    """
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            src = cell.source
            lines = src.splitlines()
            out: dict[str, Param] = {}
            for node in ast.parse(src).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                    if isinstance(target, ast.Name) and node.value is not None:
                        line = lines[node.end_lineno - 1]
                        comment = line.split("#", 1)[1].strip() if "#" in line else ""
                        out[target.id] = Param(target.id, ast.literal_eval(node.value), comment)
            return out
    return {}


def coerce(param: Param, raw: str) -> Any:
    """Parse the command-line string ``raw`` as the type of ``param``'s default.

    Lists are read as JSON, a Python literal or comma-separated text; their elements take the
    type of the default's elements. Raises :class:`ParameterError` naming the parameter, the
    value and the expected type.
    """
    d = param.default

    def fail() -> ParameterError:
        return ParameterError(f"parameter {param.name!r}: value {raw!r} is not a valid "
                              f"{param.type_name} (default: {d!r})")

    if isinstance(d, (list, tuple)):
        try:
            v = json.loads(raw)
        except json.JSONDecodeError:
            try:
                v = ast.literal_eval(raw)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                v = [x.strip() for x in raw.split(",") if x.strip()]
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        kinds = {type(x) for x in d}
        if len(kinds) == 1:
            elem = Param(param.name, next(iter(d)), param.comment)
            try:
                return [coerce(elem, x if isinstance(x, str) else json.dumps(x)) for x in v]
            except ParameterError:
                raise fail() from None
        return v
    try:
        return _coerce_scalar(d, raw)
    except ValueError:
        raise fail() from None


def _coerce_scalar(d: Any, raw: str) -> Any:
    if isinstance(d, bool):
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(raw)
    if isinstance(d, int):
        return int(raw)
    if isinstance(d, float):
        return float(raw)
    if isinstance(d, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def loads_study(nb) -> bool:
    """Whether a chapter's code calls ``load_study(`` (so it reads the shared data)."""
    return any(c.cell_type == "code" and "load_study(" in c.source for c in nb.cells)


def resolve_parameters(chapters: Sequence[str], raw: Sequence[tuple[str, str]],
                       profile: str) -> dict[str, dict[str, Any]]:
    """Check every ``(name, value)`` against the chapters' declarations and :mod:`helpers.book.params`.

    Returns chapter -> parameters to inject (``profile`` included). Raises
    :class:`ParameterError` (unknown name, with the valid ones listed; a name given twice; wrong
    type; a value out of its choices or range; a data parameter that a selected chapter would
    ignore; a parameter the profile ignores) or ``ValueError`` (unknown profile) before anything
    executes.
    """

    prof = get_profile(profile)
    given: dict[str, list[str]] = {}
    for name, value in raw:
        given.setdefault(name, []).append(value)
    twice = {n: v for n, v in given.items() if len(v) > 1}
    if twice:
        n, v = next(iter(twice.items()))
        raise ParameterError(f"parameter {n!r} is given {len(v)} times ({', '.join(map(repr, v))}); give it "
                             f"once (repeating it does not add a value)")
    for name in given:
        need = P.PROFILE_IMAGES.get(name)
        if need is not None and prof.images != need:
            users = [p for p, pr in PROFILES.items() if pr.images == need]
            raise ParameterError(
                f"parameter {name!r} is read only by the {', '.join(users)} profile ({need} images); the "
                f"{profile} profile uses {prof.images} and would silently ignore it; run with --profile "
                f"{users[0]}, or leave it out")
    nbs = {c: read_notebook(notebook_path(c)) for c in chapters}
    decl = {c: declared_parameters(nb) for c, nb in nbs.items()}
    out: dict[str, dict[str, Any]] = {c: {} for c in chapters}
    for c in chapters:
        if "profile" in decl[c]:
            out[c]["profile"] = profile
    for name, value in raw:
        if name == "profile":
            raise ParameterError("give the profile with --profile, not -p profile")
        owners = [c for c in chapters if name in decl[c]]
        if not owners:
            valid = sorted({p for d in decl.values() for p in d} - {"profile"})
            raise ParameterError(
                f"parameter {name!r} is not declared by {', '.join(chapters)}; "
                f"valid parameters: {', '.join(valid) or '(none)'}")
        if name in P.DATA_PARAMETERS:
            ignoring = [c for c in chapters if name not in decl[c] and loads_study(nbs[c])]
            if ignoring:
                raise ParameterError(
                    f"parameter {name!r} changes the data every chapter reads, but {', '.join(ignoring)} "
                    f"load the study without declaring it and would silently use its default; "
                    f"run only {', '.join(owners)} with it, or leave it out")
        for c in owners:
            p = decl[c][name]
            out[c][name] = P.check(name, coerce(p, value), p.default)
    return out


@dataclass(frozen=True)
class OutputPlan:
    """What a run writes, known before it starts: the folders to check and lock (folder ->
    which chapters write it) and why each chapter's run is quick (``''``: a full run)."""

    folders: dict[Path, list[str]]
    quick: dict[str, str]


def plan_outputs(chapters: Sequence[str], params: dict[str, dict[str, Any]], profile: str,
                 out_dir: Path = EXECUTED_DIR) -> OutputPlan:
    """The folders the run writes: ``out_dir`` (executed notebooks) and the (profile, model) output
    folder of every chapter that loads the study (its ``quick/`` folder for a quick run)."""

    folders: dict[Path, list[str]] = {Path(out_dir): list(chapters)}
    quick: dict[str, str] = {}
    for c in chapters:
        p = params[c]
        quick[c] = quick_reason(p.get("limit", 0), p.get("n_boot"))
        if loads_study(read_notebook(notebook_path(c))):
            folder = Artefacts.of(profile, p.get("model") or None, quick=bool(quick[c])).dir
            folders.setdefault(folder, []).append(c)
    return OutputPlan(folders, quick)


def hold_outputs(plan: OutputPlan, profile: str, stack: contextlib.ExitStack) -> None:
    """Check every folder the run writes (and the data folder) before any work, and lock each
    output folder for the run. Raises :class:`helpers.storage.FolderNotWritableError` or
    :class:`helpers.storage.FolderLockedError`, naming the folder (and the lock's holder)."""

    check_writable(data_dir(), "data folder", "move caches with IUXRAY_DATA_DIR=DIR")
    check_writable(output_dir(profile), "output folder", "move outputs with IUXRAY_OUTPUT_DIR=DIR")
    for folder, chapters in plan.folders.items():
        check_writable(folder, "output folder", "move outputs with IUXRAY_OUTPUT_DIR=DIR (or --out DIR)")
        stack.enter_context(folder_lock(folder, f"{', '.join(chapters)} (profile {profile})"))


UPSTREAM: dict[str, tuple[str, ...]] = {
    "03_linear_probe": ("02_zero_shot",),
    "04_fine_tune": ("02_zero_shot", "03_linear_probe"),
    "05_embeddings": ("04_fine_tune",),
    "06_grad_cam": ("02_zero_shot", "03_linear_probe", "04_fine_tune"),
    "06b_sanity": ("02_zero_shot", "03_linear_probe", "04_fine_tune", "06_grad_cam"),
}
"""The chapters whose outputs a chapter reads (test scores, probes, fine-tuned runs)."""
MATCHING = ("uncertain_policy", "split_seed", "split_fractions", "views", "reports_path",
            "image_dir", "limit", "model", "style", "on_error",
            "max_pairs", "annotations", "k_folds", "control_epochs", "control_images")
"""Parameters an upstream chapter must have run with for its outputs to be read: the data,
and (compared only between chapters that both declare them) chapter 6's pairs, probe folds
and positive control, which its sanity page (06b) reads per pair."""
MANIFEST = "chapter_parameters.json"
"""In each output folder: the parameters every chapter last ran with there (written by the
runner after a chapter succeeds)."""


class UpstreamError(ValueError):
    """A chapter would read outputs that an earlier chapter made with other data parameters (or
    never made); the message gives the exact command that runs both."""


def _resolved(chapter: str, given: dict[str, Any]) -> dict[str, Any]:
    """A chapter's :data:`MATCHING` parameters: given values over its declared defaults."""
    decl = declared_parameters(read_notebook(notebook_path(chapter)))
    return {k: given.get(k, decl[k].default) for k in MATCHING if k in decl}


def _pair_folder(chapter: str, params: dict[str, Any], plan: OutputPlan, profile: str) -> Path:

    return Artefacts.of(profile, params.get("model") or None, quick=bool(plan.quick[chapter])).dir


def check_upstream(chapters: Sequence[str], params: dict[str, dict[str, Any]], plan: OutputPlan,
                   profile: str, raw: Sequence[tuple[str, str]]) -> None:
    """Refuse, before anything runs, a chapter whose upstream chapters (:data:`UPSTREAM`) are
    not in this run and did not last run with the same data parameters in the folder it reads.

    Raises :class:`UpstreamError` naming what differs and the command that runs them together.
    """

    missing: list[str] = []
    why: list[str] = []
    for i, c in enumerate(chapters):
        ups = [u for u in UPSTREAM.get(Path(c).stem, ()) if u not in chapters[:i]]
        if not ups:
            continue
        folder = _pair_folder(c, params[c], plan, profile)
        done = read_json_cache(folder / MANIFEST) or {}
        want = _resolved(c, params[c])
        for u in ups:
            if u in missing:
                continue
            have = done.get(u, _recorded_params(folder, u))
            diff = {k: v for k, v in want.items() if have is not None and k in have
                    and have[k] != v}
            if have is None:
                why.append(f"{u} has not run in {folder}")
            elif diff:
                why.append(f"{u} ran there with " + ", ".join(f"{k}={have[k]!r}" for k in diff)
                           + " (this run: " + ", ".join(f"{k}={v!r}" for k, v in diff.items())
                           + ")")
            else:
                continue
            missing.append(u)
    if missing:
        order = [c for c in toc_chapters() if c in set(missing) | set(chapters)]
        order += [c for c in chapters if c not in order]
        cmd = " ".join(["python -m helpers.book.runner", *order, f"--profile {profile}"]
                       + [f"-p {n} {v}" for n, v in raw])
        raise UpstreamError(f"{'; '.join(why)}; the chapters it reads must run with the same "
                            f"data first: {cmd}")


UPSTREAM_FILES = {"02_zero_shot": "zero_shot.json", "03_linear_probe": "linear_probe.json",
                  "04_fine_tune": "fine_tune.json"}
"""The metrics file each upstream chapter writes (outputs made before the runner kept
:data:`MANIFEST` are checked on the parameters that file recorded)."""


def _recorded_params(folder: Path, chapter: str) -> dict[str, Any] | None:
    """The parameters an upstream chapter's metrics file recorded, or ``None`` (never ran)."""

    name = UPSTREAM_FILES.get(chapter)
    rec = read_json_cache(folder / name) if name else None
    if rec is None:
        return None
    p = dict(rec.get("params", {}))
    p.setdefault("model", "")
    return {k: v for k, v in p.items() if k in MATCHING and k != "model"}


def record_parameters(chapter: str, params: dict[str, Any], plan: OutputPlan, profile: str) -> None:
    """Note in the chapter's output folder the data parameters it ran with (:data:`MANIFEST`)."""

    if not loads_study(read_notebook(notebook_path(chapter))):
        return
    path = _pair_folder(chapter, params, plan, profile) / MANIFEST
    done = read_json_cache(path) or {}
    done[Path(chapter).stem] = _resolved(chapter, params)
    atomic_write_json(path, done)


@contextlib.contextmanager
def _quick_env(reason: str):
    """Tell the chapter's kernel (launched with this process's environment) why its run is quick."""

    old = os.environ.pop(QUICK_ENV, None)
    if reason:
        os.environ[QUICK_ENV] = reason
    try:
        yield
    finally:
        os.environ.pop(QUICK_ENV, None)
        if old is not None:
            os.environ[QUICK_ENV] = old


_WARNING_RE = re.compile(r"(?:^|:\s)(?P<kind>[A-Z]\w*Warning): (?P<msg>.+)$")


def chapter_warnings(path: Path) -> list[str]:
    """The warnings (``Kind: message``, each once, in order) that an executed notebook's cells wrote
    to stderr, as Python's ``warnings`` formats them."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    out: list[str] = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                text = o.get("text", "")
                for line in (text if isinstance(text, str) else "".join(text)).splitlines():
                    m = _WARNING_RE.search(line)
                    if m:
                        out.append(f"{m['kind']}: {m['msg'].strip()}")
    return list(dict.fromkeys(out))


KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False"]
"""How the runner starts a chapter's kernel: what is written to the kernel process's own stderr
(progress bars, :mod:`helpers.book.progress`) reaches this console and is not copied into the page."""


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Register a Jupyter kernel for this Python (``sys.prefix``) if none of that name exists."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=name, display_name="Python (iuxray-book)", prefix=sys.prefix)
    return name


WARM_ALWAYS = ("IPython.display", "matplotlib.pyplot", "myst_nb")
"""Modules every chapter's kernel imports ahead (its page display and figures)."""
WARM_MODEL = ("open_clip",)
"""Modules imported ahead for a chapter that loads the study (its model loads on first use)."""


def chapter_imports(nb) -> list[str]:
    """The modules a chapter's code imports, in order: ``import a.b`` gives ``a.b``; ``from a
    import b`` gives ``a`` and ``a.b`` (``b`` may be a submodule). Cells that do not parse as
    Python (magics) are skipped."""
    mods: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                mods += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return list(dict.fromkeys(mods))


def warm_imports(modules: Sequence[str]) -> None:
    """Import ``modules`` (run in a kernel before its chapter arrives); one that does not
    import (a name that is not a module, a missing package) is skipped: the chapter's own
    import then says what is wrong, in its page."""
    import importlib
    import importlib.util

    for m in modules:
        try:
            parent = m.rpartition(".")[0]
            if parent and m not in sys.modules and importlib.util.find_spec(m) is None:
                continue
            importlib.import_module(m)
        except Exception:  # noqa: BLE001 - the chapter's own import reports it
            continue


def warm_modules(chapter: str) -> list[str]:
    """What :func:`start_warm_kernel` imports ahead for ``chapter``: its own imports, the
    display modules, and open_clip when it loads the study."""
    nb = read_notebook(notebook_path(chapter))
    return list(dict.fromkeys([*WARM_ALWAYS, *chapter_imports(nb),
                               *(WARM_MODEL if loads_study(nb) else ())]))


def start_warm_kernel(chapter: str, quick: str = "", kernel: str | None = None) -> Any:
    """Start ``chapter``'s kernel now and let it import what the chapter imports
    (:func:`warm_modules`) before the chapter is sent to it, so the imports run while the
    previous chapter executes. Imports only: the chapter's namespace is empty, its cells run
    exactly as they would in a fresh kernel (execution counts from 1), and its environment
    carries ``quick`` (:data:`QUICK_ENV`). Returns the kernel manager; the caller shuts it down
    (:func:`stop_kernel`)."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    env = {k: v for k, v in os.environ.items() if k != QUICK_ENV}
    if quick:
        env[QUICK_ENV] = quick
    line = (f"__import__('helpers.book.runner', fromlist=['warm_imports'])"
            f".warm_imports({warm_modules(chapter)!r})")
    km = AsyncKernelManager(kernel_name=kernel or ensure_kernel())
    run_sync(km.start_kernel)(extra_arguments=[*KERNEL_ARGUMENTS, f"--IPKernelApp.exec_lines={line}"],
                              cwd=str(REPO_ROOT), env=env)
    return km


def wait_until_idle(km: Any, timeout: float = 600) -> None:
    """Block until a kernel of :func:`start_warm_kernel` has finished its imports and answers
    requests, with a client of its own, so the chapter's client meets an idle kernel with no
    replies of earlier requests queued, as it would meet a fresh one."""
    from jupyter_client.blocking import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_info(km.get_connection_info())
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=timeout)
    finally:
        kc.stop_channels()


def stop_kernel(km: Any) -> None:
    """Shut a kernel of :func:`start_warm_kernel` down (and reap its process); ``None``: nothing."""
    if km is None:
        return
    from jupyter_core.utils import run_sync

    with contextlib.suppress(Exception):
        run_sync(km.shutdown_kernel)(now=False)


def execute(chapter: str, parameters: dict[str, Any], out_dir: Path = EXECUTED_DIR,
            kernel: str | None = None, progress: bool = True, km: Any = None) -> Path:
    """Execute one chapter with papermill; write ``out_dir/<chapter>.ipynb`` atomically.

    ``km``: a kernel already started for it (:func:`start_warm_kernel`; the caller shuts it
    down); ``None``: papermill starts and stops one."""
    import nbformat
    import papermill as pm

    src = notebook_path(chapter)
    nb = read_notebook(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{src.stem}.ipynb"
    tmp_in = out_dir / f".{src.stem}.input.ipynb"
    tmp_out = out_dir / f".{src.stem}.running.ipynb"
    nbformat.write(nb, tmp_in)
    if km is not None:
        wait_until_idle(km)
    try:
        pm.execute_notebook(str(tmp_in), str(tmp_out), parameters=parameters,
                            kernel_name=kernel or ensure_kernel(), progress_bar=progress,
                            cwd=str(REPO_ROOT), log_output=False,
                            extra_arguments=KERNEL_ARGUMENTS, km=km)
    except BaseException:
        if tmp_out.exists():
            os.replace(tmp_out, out_dir / f"{src.stem}.failed.ipynb")
        raise
    finally:
        tmp_in.unlink(missing_ok=True)
    _fold_injected_parameters(tmp_out)
    os.replace(tmp_out, final)
    (out_dir / f"{src.stem}.failed.ipynb").unlink(missing_ok=True)
    return final


def _fold_injected_parameters(path: Path) -> None:
    """Fold the cell papermill injects (the values this copy ran with) behind a toggle, so a
    page opens with the chapter's own parameter cell and its comments."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
    nbformat.write(nb, path)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout in ``--help``."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m helpers.book.runner`` (every option's help states its default)."""
    ap = argparse.ArgumentParser(prog="python -m helpers.book.runner", description=__doc__, formatter_class=_Help)
    ap.add_argument("chapters", nargs="*",
                    help="chapters to execute, e.g. 01_data or notebooks/01_data.py (default: every chapter "
                         "of _toc.yml, in order)")
    ap.add_argument("--profile", default="demo",
                    help=f"which inputs the chapters use: {', '.join(PROFILES)} (default: demo)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="set a chapter parameter; repeatable; checked before anything runs "
                         "(default: none, each chapter's own defaults; see --list-params)")
    ap.add_argument("--out", type=Path, default=EXECUTED_DIR,
                    help="folder for the executed notebooks (default: book/chapters)")
    ap.add_argument("--kernel", default=None,
                    help=f"Jupyter kernel to execute with (default: {KERNEL_NAME}, registered for this "
                         f"Python on first use)")
    ap.add_argument("--no-warm", dest="warm", action="store_false",
                    help="do not start the next chapter's kernel (and its imports) while a chapter "
                         "runs (default: warm, which hides about 10 s of imports per chapter on a "
                         "machine with a spare core)")
    ap.add_argument("--list-params", action="store_true",
                    help="print the chapters' parameters, defaults, types and valid values, then exit "
                         "(default: off)")
    return ap


def list_params(chapters: Sequence[str]) -> None:
    """Print each chapter's parameters: default, type, valid values, comment."""

    for c in chapters:
        print(c)
        for p in declared_parameters(read_notebook(notebook_path(c))).values():
            valid = "" if p.name == "profile" else P.describe(p.name)
            if p.name == "profile":
                valid = f"one of {', '.join(PROFILES)}; set with --profile"
            print(f"  {p.name} = {p.default!r}  ({p.type_name}{'; ' + valid if valid else ''})  {p.comment}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        chapters = [_chapter_name(c) for c in args.chapters] or toc_chapters()
        if args.list_params:
            list_params(chapters)
            return 0
        params = resolve_parameters(chapters, [tuple(x) for x in args.parameter], args.profile)
        plan = plan_outputs(chapters, params, args.profile, args.out)
        check_upstream(chapters, params, plan, args.profile, [tuple(x) for x in args.parameter])
    except (ParameterError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    with contextlib.ExitStack() as held:
        try:
            hold_outputs(plan, args.profile, held)
        except (FolderLockedError, FolderNotWritableError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return _run_chapters(chapters, params, plan, args)


def _run_chapters(chapters: Sequence[str], params: dict[str, dict[str, Any]], plan: OutputPlan,
                  args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    times_file = output_dir(args.profile) / "run_times.json"
    kernel = args.kernel or ensure_kernel()
    warm = None  # the next chapter's kernel, importing while this one runs
    try:
        for i, c in enumerate(tqdm(chapters, desc=f"chapters ({args.profile})", unit="chapter")):
            t0, load0, cpu0 = time.perf_counter(), os.getloadavg()[0], _children_cpu_s()
            shown = {k: v for k, v in params[c].items() if k != "profile"}
            tqdm.write(f"{c}: profile {args.profile}, " + (", ".join(
                f"{k}={v!r}" for k, v in shown.items()) or "every other parameter at its default"),
                file=sys.stderr)
            km, warm = warm or start_warm_kernel(c, plan.quick[c], kernel), None
            if args.warm and i + 1 < len(chapters):
                nxt = chapters[i + 1]
                warm = start_warm_kernel(nxt, plan.quick[nxt], kernel)
            try:
                with _quick_env(plan.quick[c]):
                    path = execute(c, params[c], args.out, kernel, km=km)
            except KeyboardInterrupt:
                print(f"\ninterrupted during {c}; its previous executed copy (if any) is unchanged",
                      file=sys.stderr)
                return 130
            except Exception as e:  # noqa: BLE001 - one message per failed chapter, not a traceback
                print(f"error: {_failure_message(c, e, args.out)}", file=sys.stderr)
                return 1
            finally:
                stop_kernel(km)
            dt = time.perf_counter() - t0
            for w in chapter_warnings(path):
                tqdm.write(f"{Path(c).stem}: warning: {w}", file=sys.stderr)
            quick = f" (quick run: {plan.quick[c]})" if plan.quick[c] else ""
            where = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
            tqdm.write(f"{c}: {dt:.1f} s -> {where}{quick}")
            record_time(times_file, c, dt, params[c], load=(load0, os.getloadavg()[0]),
                        cpu_s=_children_cpu_s() - cpu0)
            record_parameters(c, params[c], plan, args.profile)
    finally:
        stop_kernel(warm)
    return 0


def _chapter_name(name: str) -> str:
    """``01_data`` for a chapter of notebooks/ (however it was given); the path for any other file."""
    p = notebook_path(name)
    return p.stem if p.resolve().parent == NOTEBOOK_DIR.resolve() else str(p)


def _failure_message(chapter: str, e: Exception, out_dir: Path) -> str:
    """One line: which chapter failed, the error raised inside it, where the failed copy is."""
    failed = out_dir / f"{notebook_path(chapter).stem}.failed.ipynb"
    what = f"{e.ename}: {e.evalue}" if hasattr(e, "ename") else f"{type(e).__name__}: {e}"
    where = f"; the executed cells are in {failed}" if failed.exists() else ""
    return f"chapter {chapter} failed: {what.strip()}{where}"


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children and their own children:
    a chapter's kernel and the workers it forked, once the kernel has exited."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def record_time(path: Path, chapter: str, seconds: float, params: dict[str, Any],
                load: tuple[float, float] | None = None, cpu_s: float | None = None) -> None:
    """Add one chapter's execution time to ``run_times.json`` (the benchmark page reads it), with
    ``load``: the machine's 1-minute load average when the chapter started and when it ended, and
    ``cpu_s``: the CPU seconds its kernel used (over every core; ``cpu_s / seconds`` is the number
    of cores it kept busy on average).

    An unreadable ``run_times.json`` is replaced (a warning names it)."""
    import datetime as dt


    old = read_json_cache(path) or {}
    old[chapter] = {"seconds": seconds, "params": params, "cores": os.cpu_count(),
                    "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if load is not None:
        old[chapter].update(load_avg_1min_start=load[0], load_avg_1min_end=load[1])
    if cpu_s is not None:
        old[chapter]["cpu_s"] = round(cpu_s, 2)
    atomic_write_json(path, old)


if __name__ == "__main__":
    raise SystemExit(main())
