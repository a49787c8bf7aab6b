"""What a pipeline stage costs before its work starts: exec'd (a fresh interpreter imports torch and MONAI) against
forked by the runner's stage server (:mod:`custom_components.pipeline.stage_server`, the imports done once).

Runs ``--stages`` stages of ``python -m monai.bundle run`` on a one-line config whose only work is to touch a file,
through the pipeline runner, once exec'd (an extra environment variable makes the runner exec them) and once forked, and
prints each stage's wall time (the runner's progress lines). The first forked stage also waits for the server's
own imports, which a real pipeline overlaps with its in-process data stages.

Usage::

    python benchmarks/bench_stage_start.py [--stages 5]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from custom_components.pipeline.runner import Stage, run_stages


def stage_times(work: Path, n: int, how: str) -> list[float]:
    """Wall time (s) of each of ``n`` one-line bundle stages run by the runner, ``how`` = "exec" or "fork"."""
    stages = []
    for i in range(n):
        marker = work / how / f"s{i}.done"
        config = work / how / f"s{i}.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({"run": [f"$__import__('pathlib').Path({str(marker)!r}).touch()"]}))
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(config)])]
        stages.append(Stage(f"s{i}", command=command, outputs=[marker]))
    lines: list[str] = []
    env = {"BENCH_STAGE_BY_EXEC": "1"} if how == "exec" else None
    run_stages(stages, work / how, log=lines.append, env=env)
    return [float(m.group(1)) for line in lines if (m := re.search(r"done in ([0-9.]+) s", line))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=5, help="stages per way (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_stage_start_") as tmp:
        for how in ("exec", "fork"):
            start = time.perf_counter()
            times = stage_times(Path(tmp), args.stages, how)
            total = time.perf_counter() - start
            later = times[1:] or times
            print(
                f"{how:>4}: stages {', '.join(f'{t:.1f}' for t in times)} s; after the first, mean "
                f"{sum(later) / len(later):.2f} s; {total:.1f} s in all"
            )


if __name__ == "__main__":
    main()
