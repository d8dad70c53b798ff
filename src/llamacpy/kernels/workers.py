"""A process-wide pool of Python threads for independent jobs made of GIL-free calls (single-threaded sgemm
through numpy, serial nogil numba kernels): the prompt attention runs one job per KV head on it, so its small
sgemms (one BLAS thread each: below linear.BLAS_MT_FLOPS) and softmaxes use every thread instead of one, with
no OpenMP region per head.

A job's result must not depend on which thread runs it or on what runs beside it (the jobs write disjoint
outputs). The pool is dropped in a forked child (its threads do not survive the fork) and rebuilt on demand.

Owns: run_jobs. Must not: hold kernels or call numba parallel (OpenMP) kernels from its threads.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _drop_pool() -> None:
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_pool)


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < n:
            # a smaller pool is not shut down: another caller may be submitting to it; its idle threads stay
            _pool, _pool_size = ThreadPoolExecutor(n, thread_name_prefix="llamacpy-job"), n
        return _pool


def run_jobs(fn, n_jobs: int, n_threads: int) -> None:
    """fn(0) .. fn(n_jobs - 1) on up to n_threads threads (the calling thread takes a share); returns when all
    are done, re-raising the first job's exception."""
    n = min(n_threads, n_jobs)
    if n <= 1:
        for i in range(n_jobs):
            fn(i)
        return
    pool = _get_pool(n - 1)
    # jobs are interleaved over the n threads (the caller is one): i, i + n, ...
    futs = [pool.submit(_run_share, fn, w, n, n_jobs) for w in range(1, n)]
    _run_share(fn, 0, n, n_jobs)
    for f in futs:
        f.result()


def _run_share(fn, w: int, n: int, n_jobs: int) -> None:
    for i in range(w, n_jobs, n):
        fn(i)
