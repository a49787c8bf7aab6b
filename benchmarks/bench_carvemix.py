"""Benchmark CarveMix on a full-size case (one CPU thread), with and without its case cache.

The source is ../shared/data/tumor/TCGA-FG-6692 (four modalities, rescaled to [-1, 1], labels mapped to the
internal convention) and the target the same case mirrored left-right (another case on the same grid);
when the folder is absent it says so and uses two full-size phantoms of ``bench_dtss`` instead
(``--phantom`` uses them in any case: two channels, ~174k-voxel whole tumours). Loading is excluded.

Prints, in one process: per round a fresh ``CarveMix`` (empty cache) mixes once (miss: the source lesion's
signed distance is computed on its box) and then ``--later`` times (hits), interleaved with a ``CarveMix``
without cache (``cache_size=0``) making the same draws, every output pair compared bit for bit; medians of
the first draw, the later draws and the uncached draws, the ratio later / first, the bytes a source case
holds in the cache, the traced peak of a miss and of a hit, the parts of a draw, and the whole-volume
signed distance that every draw computed before the cache (``signed_distance``).

Usage: ``python benchmarks/bench_carvemix.py [--rounds 5] [--later 6] [--phantom]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch start their thread pools

import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch
from bench_dtss import CASE, cache_benchmark_parser, cpu_seconds, load_case, phantom_case, print_conditions, use_phantom

from custom_components.transforms.carvemix import CarveMix, signed_distance, signed_distance_box
from custom_components.transforms.case_cache import label_digest, tight_box


def main() -> int:
    args = cache_benchmark_parser(__doc__).parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    if use_phantom(args):
        src_img, src_lab = phantom_case(seed=0)
        tgt_img, tgt_lab = phantom_case(seed=1)
        name = "phantoms (2 channels)"
    else:
        src_img, src_lab = load_case()
        tgt_img, tgt_lab = np.ascontiguousarray(src_img[:, ::-1]), np.ascontiguousarray(src_lab[:, ::-1])
        name = f"{CASE.name} into its left-right mirror"
    print(f"cases {name}: image {src_img.shape} {src_img.dtype}, source whole tumour {(src_lab > 0).sum()} voxels")
    print_conditions(start, "load / make")
    args_mix = (tgt_img, tgt_lab, src_img, src_lab)

    first, hits, uncached, identical = [], [], [], True
    cached = CarveMix(cache_size=4)
    for r in range(args.rounds):
        cached = CarveMix(cache_size=4).set_random_state(r)
        plain = CarveMix(cache_size=0).set_random_state(r)
        for k in range(1 + args.later):
            out_c: list = []
            out_p: list = []
            t_c = cpu_seconds(lambda: out_c.extend(cached(*args_mix)))  # noqa: B023
            t_p = cpu_seconds(lambda: out_p.extend(plain(*args_mix)))  # noqa: B023
            (first if k == 0 else hits).append(t_c)
            uncached.append(t_p)
            identical &= all(np.array_equal(a, b) for a, b in zip(out_c[:2], out_p[:2], strict=True))
            identical &= out_c[2] == out_p[2]
    inv = cached.source_invariants(src_lab)
    print(f"\nfirst draw (cache miss), median of {args.rounds}: {statistics.median(first):.3f} s")
    print(f"later draws (cache hits), median of {len(hits)}: {statistics.median(hits):.3f} s")
    print(f"ratio later / first: {statistics.median(hits) / statistics.median(first):.2f}")
    print(f"uncached transform (cache_size=0), median of {len(uncached)}: {statistics.median(uncached):.3f} s")
    print(f"outputs with and without cache bit-identical: {'yes' if identical else 'NO'}")
    box_shape = tuple(s.stop - s.start for s in inv.box)
    print(
        f"cache: {len(cached.cache)} source case, {cached.cache.nbytes / 2**20:.2f} MiB held "
        f"(signed distance on a {box_shape} box, |min D| = {inv.depth:.1f} mm)"
    )
    probe = CarveMix(cache_size=4).set_random_state(0)
    for what in ("miss", "hit"):
        tracemalloc.start()
        probe(*args_mix)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"traced peak memory of a {what}: {peak / 2**20:.0f} MiB (outputs included)")

    reps = max(3, args.later)
    mask = src_lab[0] > 0
    scan, distance, paste = [], [], []
    region = inv.distance < inv.depth / 4
    for _ in range(reps):
        scan.append(cpu_seconds(lambda: label_digest(mask[tight_box(mask)], mask.shape, tight_box(mask))))
        distance.append(cpu_seconds(lambda: signed_distance_box(mask)))
        paste.append(
            cpu_seconds(
                lambda: (
                    CarveMix._paste(tgt_img, src_img, inv.box, region),
                    CarveMix._paste(tgt_lab, src_lab, inv.box, region),
                )
            )
        )
    whole = [cpu_seconds(lambda: signed_distance(mask)) for _ in range(2)]
    print("parts of a draw (medians):")
    print(f"  source lesion scan, box and digest (every draw):       {statistics.median(scan):.3f} s")
    print(f"  signed distance on the box (first draw only):          {statistics.median(distance):.3f} s")
    print(f"  copy of the target with the carved voxels (every draw): {statistics.median(paste):.3f} s")
    print(f"  before the cache, every draw: whole-volume signed distance {statistics.median(whole):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
