"""Benchmark Deformation Tumor Synthesis on the real case (one CPU thread).

Loads ../shared/data/tumor/TCGA-FG-6692 (skips with a message when absent), maps its labels to
the internal convention, rescales intensities to [-1, 1] as every bundle does, then times
``DeformationTumorSynthesis`` per case (loading excluded) for 1 and 4 channels, numpy and torch
inputs, with the default iteration range and with the paper's maximum of 10 monomers.

Usage: ``python benchmarks/bench_dtss.py [--runs 10]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch start their thread pools

import argparse
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from custom_components.data.labels import to_internal
from custom_components.transforms.dtss import DeformationTumorSynthesis
from custom_components.transforms.intensity import RescaleBrainIntensity

CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tumor" / "TCGA-FG-6692"
MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def load_case() -> tuple[np.ndarray, np.ndarray]:
    """The real case as a rescaled (4, 240, 240, 155) float32 image and a (1, ...) internal label."""
    image = np.stack(
        [np.asarray(nib.load(CASE / f"{CASE.name}-{m}.nii.gz").dataobj, dtype=np.float32) for m in MODALITIES]
    )
    label = to_internal(np.asarray(nib.load(CASE / f"{CASE.name}-seg.nii.gz").dataobj), "brats2021")[None]
    return np.asarray(RescaleBrainIntensity()(image)), label


def time_case(dtss: DeformationTumorSynthesis, image, label, runs: int) -> tuple[list[float], list[int]]:
    """Seconds per call over ``runs`` calls (a new random draw each), and the number of new voxels."""
    dtss.set_random_state(0)
    dtss(image, label)  # warm-up (imports, allocator)
    times, grown = [], []
    for _ in range(runs):
        start = time.perf_counter()
        _, out_label = dtss(image, label)
        times.append(time.perf_counter() - start)
        grown.append(int((np.asarray(out_label) > 0).sum() - (np.asarray(label) > 0).sum()))
    return times, grown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed calls per setting (median reported)")
    args = parser.parse_args()
    if not CASE.is_dir():
        print(f"SKIPPED: the real case is not at {CASE} (../shared/data is absent on this machine)")
        return 0
    torch.set_num_threads(1)
    start = time.perf_counter()
    image, label = load_case()
    print(f"case {CASE.name}: image {image.shape} {image.dtype}, whole tumour {(label > 0).sum()} voxels")
    print(f"load + label map + rescale: {time.perf_counter() - start:.2f} s (not included below)")
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{'setting':<44} {'median s':>9} {'min s':>7} {'max s':>7} {'new voxels (median)':>20}")
    settings = [
        ("4 channels, numpy, iterations 3-10", image, label, (3, 10)),
        ("1 channel (FLAIR), numpy, iterations 3-10", image[3:], label, (3, 10)),
        ("4 channels, torch, iterations 3-10", torch.as_tensor(image), torch.as_tensor(label), (3, 10)),
        ("1 channel (FLAIR), torch, iterations 3-10", torch.as_tensor(image[3:]), torch.as_tensor(label), (3, 10)),
        ("4 channels, numpy, iterations 10", image, label, (10, 10)),
    ]
    for name, img, lab, iterations in settings:
        times, grown = time_case(DeformationTumorSynthesis(iterations_range=iterations), img, lab, args.runs)
        print(
            f"{name:<44} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f} "
            f"{statistics.median(grown):>20.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
