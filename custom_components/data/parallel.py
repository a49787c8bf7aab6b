"""Independent, deterministic pieces of work on every CPU this process may use, in processes forked from it.

:func:`fork_map` serves the demo data (one phantom case per call), the C2ST's cross-validations and FRD's
radiomic features (one case per call). Each call must depend only on its index and on state the parent holds
before the fork (the function itself is not pickled: a closure over large arrays costs nothing to hand over), and
must not run torch's OpenMP regions (a forked OpenMP runtime can hang); NumPy, SciPy, scikit-learn, SimpleITK and
file writes are fine. The results are those of the serial loop, whatever the CPU count.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# the function the forked workers run (set for the duration of one fork_map; the workers inherit it by the fork)
_FORKED: Callable[[int], object] | None = None


def usable_cpus(limit: int = 8) -> int:
    """The CPUs this process may run on (its affinity, else the machine's count), at most ``limit``."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n, limit))


def _call_forked(index: int) -> object:
    assert _FORKED is not None
    return _FORKED(index)


def fork_map(fn: Callable[[int], T], n: int, min_items: int = 2) -> list[T]:
    """``[fn(0), ..., fn(n - 1)]``, computed in :func:`usable_cpus` processes forked from this one when there are
    two or more and at least ``min_items`` calls; serially otherwise.

    Args:
        fn: the work of one index; only its result is pickled back.
        n: the number of indices.
        min_items: fewer calls than this run serially (a pool costs about a tenth of a second to start).
    """
    global _FORKED
    workers = min(usable_cpus(), n)
    if workers < 2 or n < min_items:
        return [fn(i) for i in range(n)]
    if _FORKED is not None:
        raise RuntimeError("fork_map is not re-entrant")
    _FORKED = fn
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_call_forked, range(n), chunksize=max(1, n // (4 * workers))))  # type: ignore[arg-type]
    finally:
        _FORKED = None
