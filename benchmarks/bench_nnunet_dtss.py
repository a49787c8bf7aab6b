"""Benchmark nnU-Net iterations with and without DTSS (and with MAS) on a BraTS-size case (CPU).

The case is ../shared/data/tumor/TCGA-FG-6692 (``bench_dtss.load_case``; a full-size phantom of ``bench_dtss`` when
the folder is absent), made into what nnU-Net's preprocessing gives: cropped to the brain, each channel z-scored in
the brain and 0 outside, the segmentation in the nnU-Net export's values with -1 outside the brain.

One iteration is what the trainers add to nnU-Net's loop, timed in one process: loading a batch of ``--batch``
samples (with DTSS: each sample synthesised with probability ``--prob``, the DTSS trainer's draw, cache warm as after
the first epoch) and one training step of nnU-Net's default 3d_fullres U-Net (``PlainConvUNet`` as nnU-Net plans it
for a 128^3 patch, here at ``--patch``: the CPU cannot train 128^3 in reasonable time) with nnU-Net's region loss
(DC + BCE, deep supervision) or, for MAS, the per-sample weighted loss (``SampleWeightedLoss``). nnU-Net's spatial
augmentation is left out (it runs in its background workers; it is the same with or without DTSS). Prints the
median seconds per iteration of: baseline, DTSS, DTSS + MAS, and the fraction of the DTSS iteration spent in synthesis.

Usage: ``python benchmarks/bench_nnunet_dtss.py [--iterations 3] [--patch 64] [--batch 2] [--prob 0.5]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch start their thread pools

import argparse
import statistics
import time

import numpy as np
import torch
from bench_dtss import CASE, load_case, phantom_case

from custom_components.export.nnunet import REGIONS_CLASS_ORDER, internal_to_nnunet
from custom_components.handlers.mas import MASStatistics
from custom_components.nnunet import PreprocessedDTSS


def preprocessed_case() -> tuple[np.ndarray, np.ndarray, str]:
    """The case as nnU-Net's preprocessed arrays (cropped to the brain, z-scored, -1 outside) and where it came from."""
    if CASE.is_dir():
        image, label = load_case()
        made = f"{CASE.name} (real)"
    else:
        image, label = phantom_case(n_channels=4)
        made = "phantom (../shared/data absent)"
    brain = (image > image.reshape(image.shape[0], -1).min(1)[:, None, None, None]).any(0)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(brain))
    image, label, brain = image[(slice(None), *box)], label[(slice(None), *box)], brain[box]
    data = np.zeros_like(image)
    for c in range(image.shape[0]):
        v = image[c][brain]
        data[c][brain] = (v - v.mean()) / max(float(v.std()), 1e-8)
    seg = internal_to_nnunet(label).astype(np.int8)
    seg[0][~brain] = -1
    return data, seg, made


def regions(seg: torch.Tensor) -> torch.Tensor:
    """nnU-Net's region target (whole tumour, tumour core, enhancing) of export values ``(B, 1, *spatial)``."""
    s = seg[:, 0].clamp_min(0)
    return torch.stack([s > 0, (s == 2) | (s == 3), s == 3], 1).float()


def build(patch: int, mas: bool) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """nnU-Net's default 3d_fullres U-Net and loss for ``patch``^3 (6 stages at 128^3), with MAS weighting or not."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from custom_components.nnunet.trainers import SampleWeightedLoss

    stages = max(2, min(6, int(np.log2(patch)) - 1))
    net = PlainConvUNet(
        4, stages, [min(32 * 2**i, 320) for i in range(stages)], torch.nn.Conv3d, 3, [1] + [2] * (stages - 1),
        [2] * stages, 3, [2] * (stages - 1), True, torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True},
        None, None, torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=True,
    )  # fmt: skip
    weights = np.array([1 / 2**i for i in range(stages - 1)])
    weights[-1] = 0
    dc_bce = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                             dice_class=MemoryEfficientSoftDiceLoss)  # fmt: skip
    loss: torch.nn.Module = DeepSupervisionWrapper(dc_bce, weights / weights.sum())
    if mas:
        stats = MASStatistics()
        stats.update({"a": 0.6, "b": 0.8})
        loss = SampleWeightedLoss(loss, stats, 1.0, REGIONS_CLASS_ORDER)
    opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    return net, loss, opt


def iteration(data, seg, dtss, patch, batch, net, loss, opt, mas) -> tuple[float, float]:  # noqa: ANN001
    """One iteration: batch loading (crop around the tumour; DTSS first when given) and one step; (total, synthesis)."""
    start = time.perf_counter()
    synth, images, segs, flags = 0.0, [], [], []
    centre = np.argwhere(seg[0] > 0).mean(0).astype(int)
    for _ in range(batch):
        d, s, applied = data, seg, False
        if dtss is not None:
            t0 = time.perf_counter()
            d, s, applied = dtss(data, seg, int(np.random.randint(2**31 - 1)))
            synth += time.perf_counter() - t0
        lo = [
            int(np.clip(c - patch // 2 + np.random.randint(-8, 9), 0, n - patch))
            for c, n in zip(centre, s.shape[1:], strict=True)
        ]
        box = (slice(None), *(slice(b, b + patch) for b in lo))
        images.append(torch.from_numpy(np.ascontiguousarray(d[box])))
        segs.append(torch.from_numpy(np.ascontiguousarray(s[box]).astype(np.int16)))
        flags.append(applied)
    x, y = torch.stack(images), regions(torch.stack(segs))
    targets = [y] + [torch.nn.functional.interpolate(y, scale_factor=0.5**i, mode="nearest") for i in range(1, 6)]
    opt.zero_grad(set_to_none=True)
    out = net(x)
    targets = targets[: len(out)]
    if mas:
        with loss.batch(torch.tensor(flags)):
            value = loss(out, targets)
    else:
        value = loss(out, targets)
    value.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    opt.step()
    return time.perf_counter() - start, synth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per variant (after one warm-up)")
    parser.add_argument("--patch", type=int, default=64, help="patch edge in voxels (nnU-Net plans 128 for BraTS)")
    parser.add_argument("--batch", type=int, default=2, help="samples per batch (nnU-Net's BraTS plan: 2)")
    parser.add_argument("--prob", type=float, default=0.5, help="DTSS probability per sample (the trainer's default)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    data, seg, made = preprocessed_case()
    print(f"case: {made}, preprocessed shape {data.shape}, tumour voxels {int((seg > 0).sum())}")
    print(
        f"patch {args.patch}^3, batch {args.batch}, DTSS probability {args.prob}, {torch.get_num_threads()} thread(s)"
    )
    dtss = PreprocessedDTSS.from_bundle(prob=args.prob)
    dtss_always = PreprocessedDTSS.from_bundle(prob=1.0)
    t0 = time.perf_counter()
    dtss_always(data, seg, 0)  # cold: the case's invariants enter the cache
    print(f"DTSS on the case, cold cache: {time.perf_counter() - t0:.3f} s")
    warm = []
    for seed in range(1, 4):
        t0 = time.perf_counter()
        dtss_always(data, seg, seed)
        warm.append(time.perf_counter() - t0)
    print(f"DTSS on the case, warm cache (median of 3): {statistics.median(warm):.3f} s")
    for name, synthesis, mas in (("baseline", None, False), ("DTSS", dtss, False), ("DTSS+MAS", dtss, True)):
        np.random.seed(0)
        torch.manual_seed(0)
        net, loss, opt = build(args.patch, mas)
        iteration(data, seg, synthesis, args.patch, args.batch, net, loss, opt, mas)  # warm-up
        runs = [
            iteration(data, seg, synthesis, args.patch, args.batch, net, loss, opt, mas) for _ in range(args.iterations)
        ]
        total = statistics.median(r[0] for r in runs)
        share = sum(r[1] for r in runs) / sum(r[0] for r in runs)
        print(f"{name:9s} iteration {total:.3f} s (median of {args.iterations}); synthesis {share:.1%} of it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
