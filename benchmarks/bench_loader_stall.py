"""Loader stall of any bundle's training, per number of DataLoader workers: iteration, step and wait times.

Runs ``bundles/<bundle>/configs/common.yaml`` + ``train.yaml`` through MONAI's ``ConfigWorkflow`` (``bench_train_throughput.training_workflow``) with the
overrides of a JSON file (for instance one the demo pipeline wrote for a stage:
``demo_output/overrides/tf_gan_train_s0.json``), then ``output_dir`` and every other output folder of
``OUTPUT_KEYS`` (into a temporary folder: nothing outside it is written), ``overwrite``, ``max_epochs`` and
``num_workers`` set by this script, once per ``--num-workers`` value, in this process, one after another. The timing is :class:`bench_train_throughput.IterationTimer`'s (Ignite events on the workflow's
``train#trainer``): step = ``ITERATION_STARTED`` -> ``ITERATION_COMPLETED``, wait = ``GET_BATCH_STARTED`` ->
``GET_BATCH_COMPLETED``, stall fraction = wait / (wait + step) over the steady-state iterations (the first
iteration of every epoch left out; its wait, which includes starting the workers, is ``ep.start s``).
``bench_train_throughput.py`` does the same for dtss_mas_seg's arms on BraTS-size volumes.

Usage: ``python benchmarks/bench_loader_stall.py --bundle tf_gan --overrides demo_output/overrides/tf_gan_train_s0.json
[--num-workers 0 2] [--epochs 3] [--json out.json]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch start their thread pools

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_train_throughput import IterationTimer, training_workflow

REPO = Path(__file__).resolve().parents[1]
# the bundles' output folders besides output_dir; a stage's overrides may name folders of an earlier run
OUTPUT_KEYS = (
    "models_dir",
    "pix2pix_models_dir",
    "train_models_dir",
    "synthesis_dir",
    "refined_dir",
    "eval_dir",
    "prediction_dir",
)


def measure(bundle: str, overrides: dict[str, Any], num_workers: int, epochs: int, out: Path) -> dict[str, Any]:
    """Train ``bundle`` for ``epochs`` epochs with ``num_workers`` workers; its IterationTimer summary."""
    import torch

    settings = {
        **overrides,
        **{key: str(out / key) for key in OUTPUT_KEYS if key in overrides},
        "output_dir": str(out),
        "overwrite": True,
        "max_epochs": epochs,
        "num_workers": num_workers,
    }
    wf = training_workflow(REPO / "bundles" / bundle, settings)
    start = time.perf_counter()
    wf.initialize()
    timer = IterationTimer(lambda: None)
    timer.attach(wf.parser.get_parsed_content("train#trainer"))
    setup = time.perf_counter() - start
    wf.run()
    wf.finalize()
    return {"bundle": bundle, "num_workers": num_workers, "torch_threads": torch.get_num_threads(),
            "setup_s": setup, **timer.summary()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bundle", required=True, choices=sorted(p.name for p in (REPO / "bundles").iterdir()))
    parser.add_argument("--overrides", required=True, help="JSON file of config overrides (data, sizes, device)")
    parser.add_argument("--num-workers", nargs="+", type=int, default=[0, 2], help="DataLoader workers to compare")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    overrides = json.loads(Path(args.overrides).read_text())
    print(f"{args.bundle} training, overrides {args.overrides}, {args.epochs} epochs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    rows = []
    for nw in args.num_workers:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(args.bundle, overrides, nw, args.epochs, Path(tmp)))
    print(f"{'nw':>2} {'iters':>5} {'iter s':>7} {'step s':>7} {'wait s':>7} {'stall':>6} {'ep.start s':>10}")
    for r in rows:
        print(f"{r['num_workers']:>2} {r['steady_iterations']:>5} {r['iteration_s']:>7.3f} {r['step_s']:>7.3f} "
              f"{r['loader_wait_s']:>7.3f} {r['stall_fraction']:>6.1%} {r['epoch_start_wait_s']:>10.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
