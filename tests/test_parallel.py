"""fork_map: the serial loop's results in its order, on one CPU or several; the demo data it makes are the same
files whatever the CPU count."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from custom_components.data import parallel
from custom_components.data.demo import make_demo_data
from custom_components.data.parallel import fork_map, usable_cpus


def _pid_and_square(i: int) -> tuple[int, int]:
    return os.getpid(), i * i


def test_fork_map_returns_the_serial_results_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1})
    assert usable_cpus() == 2 and usable_cpus(limit=1) == 1
    forked = fork_map(_pid_and_square, 9)
    assert [r for _, r in forked] == [i * i for i in range(9)]
    assert os.getpid() not in {p for p, _ in forked}  # computed in the forked workers
    # a closure over a large array is not pickled: the workers inherit it
    big = np.arange(10**7, dtype=np.float64)
    assert fork_map(lambda i: float(big[i::9].sum()), 9) == [float(big[i::9].sum()) for i in range(9)]
    # fewer calls than min_items, or one CPU: the serial loop in this process
    assert {p for p, _ in fork_map(_pid_and_square, 3, min_items=4)} == {os.getpid()}
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0})
    assert fork_map(_pid_and_square, 9) == [(os.getpid(), i * i) for i in range(9)]
    assert fork_map(_pid_and_square, 0) == []


def test_fork_map_is_not_reentrant(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked worker holds the outer call's function: a fork_map inside it is refused, not run with the wrong
    function."""
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(RuntimeError, match="not re-entrant"):
        fork_map(lambda i: fork_map(_pid_and_square, 4), 2)
    assert parallel._FORKED is None


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_demo_data_are_the_same_files_on_one_cpu_and_on_two(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made = {}
    for cpus in ({0}, {0, 1}):
        monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid, cpus=cpus: cpus)
        out = tmp_path / f"cpus{len(cpus)}"
        make_demo_data(out, n_healthy=2, n_tumour=3, spacing=4.0, seed=1, verbose=False)
        made[len(cpus)] = _digests(out)
    assert len(made[1]) == 2 * 2 + 3 * 6 + 3  # scans and masks; 4 modalities, label, mask; 2 datalists, README
    assert made[1] == made[2]
