"""One process pool with a progress bar, for the embarrassingly parallel loops of the book
(rendering phantoms, decoding images).

Workers die with the process that made them. A chapter's pool lives inside the Jupyter kernel;
when the runner is killed (``SIGKILL`` of its process group, a closed terminal), the kernel
exits, but forked pool workers would live on (they hold their own ends of the task pipe and
wait for ever, a few hundred MB each). Every worker of :func:`pool` therefore asks the kernel
to kill it when its parent dies (``prctl(PR_SET_PDEATHSIG)`` on Linux, when the pool is made by
the main thread) and, everywhere, watches its parent from a daemon thread and exits within
:data:`PARENT_POLL_S` seconds of its death.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence, TypeVar
from helpers.book.progress import bar as tqdm

T = TypeVar("T")
R = TypeVar("R")

PARENT_POLL_S = 0.5
"""How often (seconds) a worker checks that the process that made it is still alive."""


def _watch_parent(parent: int, use_prctl: bool) -> None:
    """Pool initializer: exit this worker when ``parent`` (the pool's process) dies."""
    if use_prctl and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:  # re-parented: the pool's process is gone
                os._exit(1)
            threading.Event().wait(PARENT_POLL_S)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


@contextlib.contextmanager
def pool(workers: int) -> Iterator:
    """A ``multiprocessing`` pool (``fork`` where available) whose workers exit when this process
    dies, however it dies (see the module docstring); closed and joined on leaving the block."""
    import multiprocessing as mp

    ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
    # PR_SET_PDEATHSIG fires when the *thread* that forked dies: only safe from the main thread
    main = threading.current_thread() is threading.main_thread()
    with ctx.Pool(workers, initializer=_watch_parent, initargs=(os.getpid(), main)) as p:
        yield p


def process_map(fn: Callable[[T], R], jobs: Sequence[T], workers: int | None = None,
                progress: bool = True, desc: str = "", chunksize: int = 16,
                min_jobs: int = 16) -> list[R]:
    """``[fn(j) for j in jobs]`` over a process pool (order kept), with a progress bar on the
    console (:func:`helpers.book.progress.bar`, never in a page).

    ``workers`` defaults to every core; fewer than ``min_jobs`` jobs (or one worker) run in this
    process, where a pool would cost more than it saves. ``fn`` must be a module-level function.
    The pool's workers die with this process (:func:`pool`).
    """

    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < min_jobs:
        return [fn(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    with pool(workers) as p:
        return list(tqdm(p.imap(fn, jobs, chunksize=chunksize), total=len(jobs), desc=desc,
                         disable=not progress))
