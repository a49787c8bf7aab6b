"""Benchmark MassEffect on the real case (one CPU thread).

Loads ../shared/data/tumor/TCGA-FG-6692 (240 x 240 x 155, 1 mm, four modalities; skips with a message
when absent), rescales intensities to [-1, 1] as every bundle does and times ``MassEffectd`` per case
(field + warping the four-channel image, the label and the brain mask; loading excluded) at the default
5 mm peak displacement, with the whole tumour as the inserted one. Also prints the peak displacement,
the smallest Jacobian determinant of the field and the Dice of the displaced brain mask to the input's.

Usage: ``python benchmarks/bench_mass_effect.py [--runs 10]``
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
from custom_components.transforms import MassEffect, MassEffectd
from custom_components.transforms.intensity import RescaleBrainIntensity

CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tumor" / "TCGA-FG-6692"
MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed calls (median reported)")
    args = parser.parse_args()
    if not CASE.is_dir():
        print(f"skipped: real MRI not found at {CASE}")
        return 0
    torch.set_num_threads(1)
    raw = np.stack(
        [np.asarray(nib.load(CASE / f"{CASE.name}-{m}.nii.gz").dataobj, dtype=np.float32) for m in MODALITIES]
    )
    brain = (raw != 0).any(0)[None].astype(np.uint8)
    image = np.asarray(RescaleBrainIntensity()(raw))
    label = to_internal(np.asarray(nib.load(CASE / f"{CASE.name}-seg.nii.gz").dataobj), "brats2021")[None]
    data = {"image": image, "label": label, "brain_mask": brain}
    t = MassEffectd(keys=("image", "label", "brain_mask"), mode=("bilinear", "nearest", "nearest"))
    t.set_random_state(0)
    t(data)  # warm-up
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        out = t(data)
        times.append(time.perf_counter() - start)
    field = MassEffect().field(image, label, brain)
    ddf = field.full()
    grads = np.stack([np.stack(np.gradient(ddf[i]), 0) for i in range(3)]) + np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(grads, (0, 1), (-2, -1)))
    moved = out["brain_mask"][0] > 0
    dice = 2 * (moved & (brain[0] > 0)).sum() / (moved.sum() + brain[0].sum())
    print(f"MassEffectd on {CASE.name} {image.shape} (4 channels + label + brain mask), 1 thread:")
    print(
        f"  median {statistics.median(times):.3f} s per case (min {min(times):.3f}, max {max(times):.3f}, {args.runs} runs)"
    )
    print(
        f"  box {tuple(s.stop - s.start for s in field.box)} voxels, peak displacement {np.sqrt((ddf**2).sum(0)).max():.2f} mm"
    )
    print(f"  Jacobian determinant min {det.min():.3f} max {det.max():.3f}; brain outline Dice {dice:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
