"""Benchmark TF-GAN with the default network widths on this machine.

Prints
- seconds per training iteration (D step + G step with hinge, class-wise perceptual and both adversarial terms)
  at a 64^3 patch, batch 1, with the default generator (16..320), discriminator (32..320) and a default-width
  dtss_mas_seg DynUNet encoder (16..256, first three levels);
- seconds to refine one 240x240x155 volume with the bundle's sliding window (128^3 windows, overlap 0.5,
  Gaussian blending);
- peak resident memory of the process after each part (``resource.getrusage``, includes PyTorch's allocations).

Usage: ``python benchmarks/bench_tf_gan.py [--iterations 3] [--patch 64] [--skip-refine]``. Synthetic tensors,
random weights: it measures compute and memory, not quality. Runs on CUDA with AMP when available.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
from ignite.engine import Events
from monai.inferers import SlidingWindowInferer
from torch.utils.data import DataLoader

from custom_components.engines.gan_trainer import TFGANTrainer
from custom_components.losses.classwise_perceptual import ClasswisePerceptualLoss
from custom_components.losses.hinge_l1 import HingeL1Loss
from custom_components.networks.frozen_encoder import FrozenEncoder
from custom_components.networks.segmentation import build_segmentation_network
from custom_components.networks.tf_gan import DualHeadDiscriminator, TFGANGenerator, condition_channels


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _case(shape: tuple[int, int, int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(1, *shape)
    c = [s // 2 for s in shape]
    r = [max(s // 6, 2) for s in shape]
    sl = tuple(slice(ci - ri, ci + ri) for ci, ri in zip(c, r, strict=True))
    label[(slice(None), *sl)] = 2
    inner = tuple(slice(ci - ri // 2, ci + ri // 2) for ci, ri in zip(c, r, strict=True))
    label[(slice(None), *inner)] = 3
    core = tuple(slice(ci - ri // 4, ci + ri // 4) for ci, ri in zip(c, r, strict=True))
    label[(slice(None), *core)] = 1
    return {"image": torch.rand(1, *shape, generator=g) * 2 - 1, "label": label, "roi": (label > 0).float()}


def bench_training(device: torch.device, patch: int, iterations: int) -> float:
    """Mean seconds per training iteration (after one warm-up iteration)."""
    torch.manual_seed(0)
    g = TFGANGenerator(1, 1, 3, residual=True).to(device)
    d = DualHeadDiscriminator(4).to(device)
    encoder = FrozenEncoder(build_segmentation_network("dynunet", 1, 4), levels=3).to(device)
    shape = (patch, patch, patch)
    coarse = DataLoader([_case(shape, 0)], batch_size=1)
    real = DataLoader([{k: v for k, v in _case(shape, 1).items() if k != "roi"}], batch_size=1)
    trainer = TFGANTrainer(
        device=device,
        max_epochs=1,
        epoch_length=iterations + 1,
        train_data_loader=coarse,
        real_data_loader=real,
        g_network=g,
        g_optimizer=torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999)),
        d_network=d,
        d_optimizer=torch.optim.Adam(d.parameters(), 1e-4, betas=(0.5, 0.999)),
        hinge_loss=HingeL1Loss(),
        perceptual_loss=ClasswisePerceptualLoss(encoder),
        amp=device.type == "cuda",
        decollate=False,
    )
    times: list[float] = []

    @trainer.on(Events.ITERATION_STARTED)
    def _start(engine: TFGANTrainer) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        engine.state.t0 = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(engine: TFGANTrainer) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - engine.state.t0)

    trainer.run()
    return sum(times[1:]) / max(len(times) - 1, 1)


def bench_refinement(device: torch.device, shape: tuple[int, int, int] = (240, 240, 155)) -> float:
    """Seconds to refine one volume of ``shape`` with the bundle's sliding-window settings."""
    torch.manual_seed(0)
    g = TFGANGenerator(1, 1, 3, residual=True).to(device).eval()
    case = _case(shape, 2)
    x = torch.cat([case["image"][None], condition_channels(case["label"][None])], 1).to(device)
    inferer = SlidingWindowInferer(
        roi_size=(128, 128, 128), sw_batch_size=1, overlap=0.5, mode="gaussian", padding_mode="replicate"
    )
    amp = torch.autocast("cuda") if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    start = time.perf_counter()
    with torch.no_grad(), amp:
        out = inferer(x, g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert out.shape == (1, 1, *shape)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed training iterations (after one warm-up)")
    parser.add_argument("--patch", type=int, default=64, help="training patch side")
    parser.add_argument("--skip-refine", action="store_true", help="skip the 240x240x155 refinement timing")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    sec = bench_training(device, args.patch, args.iterations)
    print(
        f"training: {sec:.2f} s/iteration at {args.patch}^3, batch 1, default widths; peak RSS {peak_rss_mib():.0f} MiB"
    )
    if device.type == "cuda":
        print(f"  peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if not args.skip_refine:
        sec = bench_refinement(device)
        print(
            f"refinement: {sec:.1f} s per 240x240x155 volume (128^3 windows, overlap 0.5, gaussian); peak RSS {peak_rss_mib():.0f} MiB"
        )


if __name__ == "__main__":
    main()
