"""Benchmark Deformation Tumor Synthesis on a full-size case (one CPU thread), with and without its case cache.

Loads ../shared/data/tumor/TCGA-FG-6692 (240 x 240 x 155, four modalities), maps its labels to the
internal convention and rescales intensities to [-1, 1] as every bundle does; when the folder is absent it
says so and uses a synthesised full-size phantom instead (``--phantom`` uses the phantom in any case: two
channels and a ~174k-voxel whole tumour, the size of a large BraTS lesion). Loading is excluded.

Prints, in one process:

1. **Cache**: per round a fresh transform (empty cache) draws once (miss: the case's invariants are
   computed) and then ``--later`` times (hits); a transform without cache (``cache_size=0``) makes the same
   draws, interleaved, and every output pair is compared bit for bit. Medians over rounds and draws of the
   first draw, the later draws and the uncached draws, the ratio later / first, the bytes one case holds in
   the cache and the traced peak of a miss and of a hit; then the cost of each part of a draw.
2. **Settings**: median per draw, uncached and cached, for 1 and 4 channels, numpy and torch inputs, the
   default iteration range and the paper's maximum of 10 monomers.

The machine may be shared: times are CPU seconds of this process (one thread), every figure is a median of
several draws, and the cached and uncached draws alternate so that both see the same load.

Usage: ``python benchmarks/bench_dtss.py [--rounds 5] [--later 6] [--runs 5] [--phantom]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch start their thread pools

import argparse
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from custom_components.data.labels import to_internal
from custom_components.transforms.dtss import DeformationTumorSynthesis
from custom_components.transforms.intensity import RescaleBrainIntensity

CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tumor" / "TCGA-FG-6692"
MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def load_case() -> tuple[np.ndarray, np.ndarray]:
    """The real case as a rescaled (4, 240, 240, 155) float32 image and a (1, ...) internal label (C order)."""
    image = np.stack(
        [np.asarray(nib.load(CASE / f"{CASE.name}-{m}.nii.gz").dataobj, dtype=np.float32) for m in MODALITIES]
    )
    label = to_internal(np.asarray(nib.load(CASE / f"{CASE.name}-seg.nii.gz").dataobj), "brats2021")[None]
    return np.asarray(RescaleBrainIntensity()(image)), np.ascontiguousarray(label)


def phantom_case(
    n_channels: int = 2, shape: tuple[int, int, int] = (240, 240, 155), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A full-size phantom: an ellipsoidal brain in [-1, 1] with an irregular three-class glioma of ~174k voxels.

    Args:
        n_channels: image channels.
        shape: the grid (BraTS: 240 x 240 x 155).
        seed: seed of the shape and the texture.
    """
    rng = np.random.default_rng(seed)
    mid = [(s - 1) / 2 for s in shape]
    axes = [np.arange(s, dtype=np.float32) - m for s, m in zip(shape, mid, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    brain = (x / 80.0) ** 2 + (y / 100.0) ** 2 + (z / 68.0) ** 2 <= 1
    # the lesion: an ellipsoid off the centre whose radius varies smoothly with position
    cx, cy, cz = 25.0, -20.0, 8.0
    radius = (((x - cx) / 40.0) ** 2 + ((y - cy) / 36.0) ** 2 + ((z - cz) / 33.5) ** 2) ** 0.5
    wobble = ndimage.zoom(
        rng.uniform(-1, 1, (6, 6, 5)), [s / g for s, g in zip(shape, (6, 6, 5), strict=True)], order=1
    )
    radius = radius * (1 + 0.12 * wobble[: shape[0], : shape[1], : shape[2]].astype(np.float32))
    label = np.zeros(shape, np.uint8)
    label[radius <= 1.0] = 2
    label[radius <= 0.7] = 3
    label[radius <= 0.45] = 1
    label &= np.where(brain, 0xFF, 0).astype(np.uint8)
    offsets = np.array([0.0, -0.2, 0.5, 0.3], dtype=np.float32)
    image = np.empty((n_channels, *shape), np.float32)
    for c in range(n_channels):
        texture = rng.normal(0.0, 0.08, shape).astype(np.float32) + (0.3 if c % 2 else -0.1)
        texture += offsets[label] * (1 + 0.5 * c)
        image[c] = np.where(brain, np.clip(texture, -0.98, 1.0), -1.0)
    return image, label[None]


def cpu_seconds(fn: Callable[[], object]) -> float:
    """CPU seconds of this process spent in ``fn`` (one thread: the work itself, whatever else the machine runs)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def print_conditions(start: float, made: str) -> None:
    """What the figures below depend on: set-up time, threads, the machine's load, the clock used."""
    print(f"{made}: {time.perf_counter() - start:.2f} s (not included below)")
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"load average: {' '.join(f'{v:.1f}' for v in os.getloadavg())} (cores: {os.cpu_count()})")
    print("times: CPU seconds of this process (time.process_time), so other processes' load does not count")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cache_benchmark(
    image: np.ndarray, label: np.ndarray, rounds: int, later: int, iterations: tuple[int, int] = (3, 10)
) -> None:
    """First (miss) vs later (hit) draws of a cached transform, interleaved with an uncached one; components."""
    first, hits, uncached, identical = [], [], [], True
    cached = DeformationTumorSynthesis(iterations_range=iterations, cache_size=4)
    for r in range(rounds):
        cached = DeformationTumorSynthesis(iterations_range=iterations, cache_size=4).set_random_state(r)
        plain = DeformationTumorSynthesis(iterations_range=iterations, cache_size=0).set_random_state(r)
        for k in range(1 + later):
            out_c: list = []
            out_p: list = []
            t_c = cpu_seconds(lambda: out_c.extend(cached(image, label)))  # noqa: B023
            t_p = cpu_seconds(lambda: out_p.extend(plain(image, label)))  # noqa: B023
            (first if k == 0 else hits).append(t_c)
            uncached.append(t_p)
            identical &= all(np.array_equal(a, b) for a, b in zip(out_c, out_p, strict=True))
    nbytes = cached.cache.nbytes
    print(f"  first draw (cache miss), median of {rounds}: {_median(first):.3f} s")
    print(f"  later draws (cache hits), median of {len(hits)}: {_median(hits):.3f} s")
    print(f"  ratio later / first: {_median(hits) / _median(first):.2f}")
    print(f"  uncached transform (cache_size=0), median of {len(uncached)}: {_median(uncached):.3f} s")
    print(f"  outputs with and without cache bit-identical: {'yes' if identical else 'NO'}")
    print(f"  cache: {len(cached.cache)} case, {nbytes / 2**20:.2f} MiB held")
    # traced peak (numpy reports its buffers to tracemalloc) of a miss and of a hit
    probe = DeformationTumorSynthesis(iterations_range=iterations, cache_size=4).set_random_state(0)
    for what in ("miss", "hit"):
        tracemalloc.start()
        probe(image, label)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  traced peak memory of a {what}: {peak / 2**20:.0f} MiB (outputs included)")
    # components of a draw (medians of alternating repetitions)
    reps = max(3, later)
    parts: dict[str, list[float]] = {k: [] for k in ("check", "lookup", "miss", "copy")}
    for _ in range(reps):
        parts["check"].append(cpu_seconds(lambda: DeformationTumorSynthesis._check(image, label)))
        parts["lookup"].append(cpu_seconds(lambda: probe.warm(image, label)))
        empty = DeformationTumorSynthesis(iterations_range=iterations, cache_size=4)
        parts["miss"].append(cpu_seconds(lambda: empty.warm(image, label)))  # noqa: B023
        parts["copy"].append(cpu_seconds(lambda: (image.astype(image.dtype, copy=True), label.copy())))
    check, lookup, miss, copy = (_median(parts[k]) for k in ("check", "lookup", "miss", "copy"))
    print("  parts of a draw (medians):")
    print(f"    label scan, checks and box (every draw):                 {check:.3f} s")
    print(f"    channel range, digests and cache lookup (every draw):    {lookup - check:.3f} s")
    print(f"    case invariants (first draw only):                       {miss - lookup:.3f} s")
    print(f"    output copies of image and label (every draw):           {copy:.3f} s")
    print(f"    the draw itself: monomers, texture, blur, fusion (rest): {_median(hits) - lookup - copy:.3f} s")


def cache_benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a case-cache benchmark (this one's and bench_carvemix's)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh caches (first draws) in the cache benchmark")
    parser.add_argument("--later", type=int, default=6, help="draws after the first one per round")
    parser.add_argument("--phantom", action="store_true", help="use full-size phantoms even if the case exists")
    return parser


def use_phantom(args: argparse.Namespace) -> bool:
    """Whether to benchmark on full-size phantoms: asked for, or the real case is absent (said)."""
    if not args.phantom and not CASE.is_dir():
        print(f"the real case is not at {CASE} (../shared/data is absent): using full-size phantoms instead")
    return args.phantom or not CASE.is_dir()


def main() -> int:
    parser = cache_benchmark_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5, help="timed calls per setting of the settings table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    if use_phantom(args):
        image, label = phantom_case()
        name = "phantom (2 channels)"
    else:
        image, label = load_case()
        name = CASE.name
    print(f"case {name}: image {image.shape} {image.dtype}, whole tumour {(label > 0).sum()} voxels")
    print_conditions(start, "load / make + label map + rescale")

    print(f"\n1. cache, {image.shape[0]} channels, numpy, iterations 3-10:")
    cache_benchmark(image, label, args.rounds, args.later)

    print("\n2. settings (median s per draw; uncached: cache_size=0, cached: draws after the first)")
    print(f"{'setting':<44} {'uncached':>9} {'cached':>7} {'new voxels (median)':>20}")
    last = image.shape[0] - 1
    settings = [
        (f"{image.shape[0]} channels, numpy, iterations 3-10", image, label, (3, 10)),
        ("1 channel (last), numpy, iterations 3-10", image[last:], label, (3, 10)),
        (f"{image.shape[0]} channels, torch, iterations 3-10", torch.as_tensor(image), torch.as_tensor(label), (3, 10)),
        ("1 channel (last), torch, iterations 3-10", torch.as_tensor(image[last:]), torch.as_tensor(label), (3, 10)),
        (f"{image.shape[0]} channels, numpy, iterations 10", image, label, (10, 10)),
    ]
    for setting, img, lab, iterations in settings:
        cached = DeformationTumorSynthesis(iterations_range=iterations, cache_size=4).set_random_state(0)
        plain = DeformationTumorSynthesis(iterations_range=iterations, cache_size=0).set_random_state(0)
        cached(img, lab)  # fills the cache (and warms imports, allocator)
        t_c, t_p, grown = [], [], []
        for _ in range(args.runs):
            out: list = []
            t_c.append(cpu_seconds(lambda: out.extend(cached(img, lab))))  # noqa: B023
            t_p.append(cpu_seconds(lambda: plain(img, lab)))  # noqa: B023
            grown.append(int((np.asarray(out[1]) > 0).sum() - (np.asarray(lab) > 0).sum()))
        print(f"{setting:<44} {_median(t_p):>9.3f} {_median(t_c):>7.3f} {statistics.median(grown):>20.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
