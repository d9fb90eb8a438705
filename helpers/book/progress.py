"""Progress bars that reach the console of a run and never a page.

Inside a Jupyter kernel, ``sys.stderr`` is the notebook: a bar written there lands in the
executed page as hundreds of lines. :func:`bar` writes to the kernel *process's* own standard
error (``sys.__stderr__``), which the runner (:mod:`helpers.book.runner`) inherits and shows on its
console; the runner starts kernels with ``capture_fd_output`` off, so nothing written there is
copied back into the page. Outside a kernel both streams are the terminal. The bars are plain
text (never a notebook widget) and refresh at most twice a second.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable


def console():
    """The stream a progress bar writes to: the process's own stderr (the console)."""
    return sys.__stderr__ or sys.stderr


def bar(iterable: Iterable | None = None, **kwargs: Any):
    """``tqdm`` on the console (:func:`console`); ``disable=True`` turns it off as usual."""
    from tqdm.std import tqdm

    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=console(), **kwargs)
