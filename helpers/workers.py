"""One process pool with a progress bar, for the embarrassingly parallel loops of the book
(rendering phantoms, decoding images)."""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_map(fn: Callable[[T], R], jobs: Sequence[T], workers: int | None = None,
                progress: bool = True, desc: str = "", chunksize: int = 16,
                min_jobs: int = 16) -> list[R]:
    """``[fn(j) for j in jobs]`` over a process pool (order kept), with a tqdm bar.

    ``workers`` defaults to every core; fewer than ``min_jobs`` jobs (or one worker) run in this
    process, where a pool would cost more than it saves. ``fn`` must be a module-level function.
    """
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < min_jobs:
        return [fn(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    import multiprocessing as mp

    ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
    with ctx.Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), total=len(jobs), desc=desc,
                         disable=not progress))
